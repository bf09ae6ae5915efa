"""Config -> model: resolve the towers, pick the family, build it."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from dmt.config import ModelConfig
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel
from dmt.models.dcn import DCN
from dmt.models.dlrm import DLRM
from dmt.specs import FeatureSpec


def read_towers_file(path: str) -> list[list[str]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model.towers_file not found: {p}")
    try:
        towers = json.loads(p.read_text())["towers"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"model.towers_file {p} must be JSON with a 'towers' list of lists ({e})") from None
    if not isinstance(towers, list) or not all(isinstance(t, list) for t in towers):
        raise UserError(f"model.towers_file {p}: 'towers' must be a list of lists of feature names")
    return towers


def resolve_towers(cfg: ModelConfig, feature_names: list[str]) -> list[list[str]]:
    """The towers of the model: explicit list, file, equal chunks of the feature order, or one
    tower of everything (the flat model). Every feature must be in exactly one tower."""
    sources = sum([bool(cfg.towers), bool(cfg.towers_file), cfg.num_towers > 0])
    if sources > 1:
        raise UserError("set only one of model.towers, model.towers_file and model.num_towers")
    if cfg.towers:
        towers = cfg.towers
    elif cfg.towers_file:
        towers = read_towers_file(cfg.towers_file)
    elif cfg.num_towers > 0:
        if cfg.num_towers > len(feature_names):
            raise UserError(f"model.num_towers={cfg.num_towers} exceeds the {len(feature_names)} features")
        size, extra = divmod(len(feature_names), cfg.num_towers)
        towers, start = [], 0
        for t in range(cfg.num_towers):
            stop = start + size + (t < extra)
            towers.append(feature_names[start:stop])
            start = stop
    else:
        return [list(feature_names)]
    seen: list[str] = [f for t in towers for f in t]
    unknown = sorted(set(seen) - set(feature_names))
    if unknown:
        raise UserError(f"towers name unknown features {unknown}; features are {feature_names}")
    dup = sorted({f for f in seen if seen.count(f) > 1})
    if dup:
        raise UserError(f"features {dup} appear in more than one tower")
    missing = [f for f in feature_names if f not in seen]
    if missing:
        raise UserError(f"features {missing} are in no tower")
    if any(not t for t in towers):
        raise UserError("a tower is empty")
    return [list(t) for t in towers]


def compression_ratios(cfg: ModelConfig, num_towers: int) -> list[float]:
    if cfg.tower_compression_ratios:
        if len(cfg.tower_compression_ratios) != num_towers:
            raise UserError(
                f"model.tower_compression_ratios has {len(cfg.tower_compression_ratios)} values for {num_towers} towers"
            )
        return list(cfg.tower_compression_ratios)
    return [cfg.compression_ratio] * num_towers


def build_model(
    cfg: ModelConfig, features: list[FeatureSpec], num_dense: int, tables: Collection[str] | None = None
) -> MultiTowerModel:
    """Build on the current torch seed; two calls after the same torch.manual_seed are equal.
    tables: the embedding tables to create (default all)."""
    names = [f.name for f in features]
    towers = resolve_towers(cfg, names)
    flat = not (cfg.towers or cfg.towers_file or cfg.num_towers > 0)
    tower_module = "identity" if flat else cfg.tower_module
    ratios = compression_ratios(cfg, len(towers))
    if cfg.arch == "dlrm":
        return DLRM(
            features,
            num_dense,
            towers,
            dim=cfg.embedding_dim,
            pooling=cfg.pooling,
            bottom_mlp=cfg.bottom_mlp,
            top_mlp=cfg.top_mlp,
            tower_module=tower_module,
            compression_ratios=ratios,
            tower_hidden=cfg.tower_hidden,
            tables=tables,
        )
    return DCN(
        features,
        num_dense,
        towers,
        dim=cfg.embedding_dim,
        pooling=cfg.pooling,
        bottom_mlp=cfg.bottom_mlp,
        deep_mlp=cfg.deep_mlp,
        cross_layers=cfg.cross_layers,
        cross_rank=cfg.cross_rank,
        structure=cfg.structure,
        tower_module=tower_module,
        compression_ratios=ratios,
        tower_cross_layers=cfg.tower_cross_layers,
        tables=tables,
    )
