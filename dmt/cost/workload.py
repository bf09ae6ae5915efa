"""What the cost model needs to know about a config: features, towers and the dense modules' sizes.

Nothing here allocates real tensors: the model is built on torch's "meta" device, so a config with
hundreds of features and billions of embedding rows still loads in well under a second. The
synthetic source's feature list is rebuilt from its structural seed alone (the generator's tables
and teacher are never drawn); `tests/test_cost.py` checks it equals `SyntheticSource.features`.

    ModelShape   towers, Tower Module output widths (floats per sample), parameter counts and
                 forward FLOPs per sample of every dense part
    Workload     features + shape + embedding dim + per-rank batch + what the wire carries (widths,
                 id deduplication): the input of traffic.py
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmt.config import Config, DataConfig, ModelConfig
from dmt.cost.ids import IdStatistics, MeasuredIds, ZipfIds
from dmt.models.build import build_model, resolve_towers
from dmt.specs import FeatureSpec


@dataclass(frozen=True)
class ModelShape:
    """The dense side of one model variant, per sample.

    towers: feature names per tower (the flat model: one tower of every feature).
    tower_widths: floats per sample each Tower Module outputs (what SPTT step 6 ships).
    tower_params / head_params: parameter counts (float32) of each Tower Module and of the rest
        of the dense model (bottom MLP, interaction, top MLP or cross/deep nets).
    tower_flops / head_flops: forward FLOPs per sample (multiply-add = 2 FLOPs).
    flat: one tower with an identity Tower Module (the baseline model).
    """

    towers: tuple[tuple[str, ...], ...]
    tower_widths: tuple[int, ...]
    tower_params: tuple[int, ...]
    head_params: int
    tower_flops: tuple[float, ...]
    head_flops: float
    flat: bool


@dataclass(frozen=True)
class Workload:
    """Everything per-step traffic depends on (besides the placement)."""

    features: tuple[FeatureSpec, ...]
    shape: ModelShape
    dim: int
    batch_size: int  # per rank
    weighted: bool = False  # per-id float32 weights travel with the ids
    row_bytes: int = 4  # bytes per float of pooled rows and their gradients on the wire (fp32 4, bf16 / fp16 2)
    allreduce_param_bytes: int = 4  # bytes per dense parameter in the gradient all-reduce
    ids: IdStatistics | None = None  # dedup_ids: what deduplicated id messages hold (dmt/cost/ids.py); None: plain
    dims: Mapping[str, int] | None = None  # per-table widths overriding `dim` (model.embedding_dims)

    def width(self, feature: FeatureSpec) -> int:
        """The pooled width of `feature`: its table's."""
        return (self.dims or {}).get(feature.table, self.dim)

    @property
    def widths(self) -> dict[str, int]:
        """feature name -> pooled width."""
        return {f.name: self.width(f) for f in self.features}


def wire_widths(dist_cfg) -> dict:
    """The Workload fields a [dist] section sets: row and all-reduce widths (ids: see `id_statistics`)."""
    from dmt.distributed.wire import wire_dtype

    return {
        "row_bytes": wire_dtype(dist_cfg.comm_precision).itemsize,
        "allreduce_param_bytes": wire_dtype(dist_cfg.allreduce_precision).itemsize,
    }


def id_statistics(data: DataConfig) -> IdStatistics:
    """What deduplicated id messages of this data hold: computed for synthetic data, else counted
    on the source's first training samples."""
    if data.source == "synthetic":
        return ZipfIds(data.synthetic.zipf_exponent, data.synthetic.max_pooling)
    from dmt.data import make_source

    return MeasuredIds(make_source(data))


def feature_specs(data: DataConfig) -> tuple[list[FeatureSpec], int]:
    """-> (features, num_dense) of the configured source, cheaply for synthetic data."""
    if data.source == "synthetic":
        from dmt.data.synthetic import synthetic_features

        return synthetic_features(data), data.num_dense
    from dmt.data import make_source

    source = make_source(data)
    return list(source.features), source.num_dense


def _forward_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return float(counter.get_total_flops())


def model_shape(cfg: ModelConfig, features: list[FeatureSpec], num_dense: int) -> ModelShape:
    """Build the model on the meta device and read its widths, parameter counts and FLOPs.

    The embedding tables do not shape the dense side, so the build reads every feature from one
    one-row table (hundreds of meta tables would cost seconds); equal Tower Modules (same class,
    input and output width) are measured once.
    """
    stand_in = [FeatureSpec(f.name, "_", 1, f.pooling_factor) for f in features]
    with torch.device("meta"):
        model = build_model(cfg, stand_in, num_dense)
        tower_params = [0] * len(model.towers)
        head_params = 0
        for name, p in model.named_parameters():
            if name.startswith("embeddings."):
                continue
            if name.startswith("tower_modules."):
                tower_params[int(name.split(".")[1])] += p.numel()
            else:
                head_params += p.numel()
        measured: dict[tuple, float] = {}
        tower_flops = []
        for tm in model.tower_modules:
            key = (type(tm).__name__, tm.in_features, tm.out_features)
            if key not in measured:
                measured[key] = _forward_flops(tm, torch.empty(1, tm.in_features))
            tower_flops.append(measured[key])
        outputs = [torch.empty(1, tm.out_features) for tm in model.tower_modules]
        head_flops = _forward_flops(_HeadOnly(model), torch.empty(1, num_dense), *outputs)
    return ModelShape(
        towers=tuple(tuple(t) for t in model.towers),
        tower_widths=tuple(tm.out_features for tm in model.tower_modules),
        tower_params=tuple(tower_params),
        head_params=head_params,
        tower_flops=tuple(tower_flops),
        head_flops=head_flops,
        flat=model.is_flat,
    )


class _HeadOnly(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, *outputs: torch.Tensor) -> torch.Tensor:
        return self.model.head(dense, list(outputs))


def has_towers(cfg: ModelConfig) -> bool:
    return bool(cfg.towers or cfg.towers_file or cfg.num_towers > 0)


def flat_model_config(cfg: ModelConfig) -> ModelConfig:
    """The baseline: every feature in one identity tower."""
    return dataclasses.replace(cfg, towers=[], towers_file="", num_towers=0, tower_compression_ratios=[])


def tower_model_config(
    cfg: ModelConfig, towers: list[list[str]], compress: bool, ratio: float | tuple[float, ...] | None = None
) -> ModelConfig:
    """The config's model with explicit towers. `compress=False`: identity Tower Modules (SPTT, CR 1);
    `ratio`: one compression ratio for every tower (or a tuple, one per tower) instead of the
    config's. The config's per-tower ratios are kept only when they match the number of towers."""
    if isinstance(ratio, tuple):
        return dataclasses.replace(
            cfg, towers=towers, towers_file="", num_towers=0, tower_compression_ratios=list(ratio)
        )
    if compress:
        per_tower = cfg.tower_compression_ratios if len(cfg.tower_compression_ratios) == len(towers) else []
        if ratio is not None:
            per_tower = []
        cr = cfg.compression_ratio if ratio is None else ratio
        return dataclasses.replace(
            cfg, towers=towers, towers_file="", num_towers=0, compression_ratio=cr, tower_compression_ratios=per_tower
        )
    return dataclasses.replace(
        cfg,
        towers=towers,
        towers_file="",
        num_towers=0,
        tower_module="identity",
        compression_ratio=1.0,
        tower_compression_ratios=[],
    )


def equal_towers(names: list[str], count: int) -> list[list[str]]:
    """The feature order cut into `count` contiguous chunks (as model.num_towers does)."""
    cfg = ModelConfig(num_towers=count)
    return resolve_towers(cfg, names)


def config_towers(cfg: Config, names: list[str]) -> list[list[str]] | None:
    """The towers the config names (towers, towers_file or num_towers), else None."""
    return resolve_towers(cfg.model, names) if has_towers(cfg.model) else None


def shape_of(model) -> ModelShape:
    """The ModelShape of a built MultiTowerModel (on any device, tables held or deferred), without
    FLOPs (zeros: what the memory model needs is widths and parameter counts)."""
    tower_params = [sum(p.numel() for p in tm.parameters()) for tm in model.tower_modules]
    return ModelShape(
        towers=tuple(tuple(t) for t in model.towers),
        tower_widths=tuple(model.tower_widths),
        tower_params=tuple(tower_params),
        head_params=sum(p.numel() for p in model.head.parameters()),
        tower_flops=tuple(0.0 for _ in model.towers),
        head_flops=0.0,
        flat=model.is_flat,
    )


def workload_of(model, batch_size: int, weighted: bool = False) -> Workload:
    """The Workload of a built MultiTowerModel at `batch_size` samples per rank."""
    specs = model.embeddings.specs
    return Workload(
        tuple(model.embeddings.features),
        shape_of(model),
        next(iter(specs.values())).embedding_dim,
        batch_size,
        weighted,
        dims={t: spec.embedding_dim for t, spec in specs.items()},
    )
