"""Config -> model: resolve the towers, find the builder `model.arch` names, build, check the contract.

    model.arch = "dlrm" | "dcn"            the built-in families (dmt/models/dlrm.py, dcn.py)
    model.arch = "mypkg.models:MyModel"    any importable callable MyModel(inputs: ModelInputs)
                                           that returns a dmt.MultiTowerModel

Every builder gets the same `ModelInputs`: the data's features and dense width, and the towers and
compression ratios the config asks for (its own options in `model.options`). What it returns is
checked against the contract before anything trains (`check_model`): one line says what does
not fit.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dmt.config import ModelConfig
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel, check_towers
from dmt.models.dcn import DCN
from dmt.models.dlrm import DLRM
from dmt.modules.tower import TowerOptions
from dmt.specs import FeatureSpec


@dataclass(frozen=True)
class ModelInputs:
    """What a model builder is given.

    features: the data source's sparse features (the tables they read, rows, pooling factors).
    num_dense: width of the dense input [B, num_dense].
    towers: the towers the config names (model.towers, towers_file or num_towers), or None.
    compression_ratios: one per tower (model.compression_ratio or tower_compression_ratios).
    config: the whole [model] section; a user's own settings are in `config.options`.
    """

    features: list[FeatureSpec]
    num_dense: int
    towers: list[list[str]] | None
    compression_ratios: list[float]
    config: ModelConfig


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
    try:
        return check_towers([list(t) for t in towers], feature_names)
    except ValueError as e:
        raise UserError(str(e)) from None


def has_towers(cfg: ModelConfig) -> bool:
    return bool(cfg.towers or cfg.towers_file or cfg.num_towers > 0)


def compression_ratios(cfg: ModelConfig, num_towers: int) -> list[float]:
    if cfg.tower_compression_ratios:
        if len(cfg.tower_compression_ratios) != num_towers:
            raise UserError(
                f"model.tower_compression_ratios has {len(cfg.tower_compression_ratios)} values for {num_towers} towers"
            )
        return list(cfg.tower_compression_ratios)
    return [cfg.compression_ratio] * num_towers


def dlrm(inputs: ModelInputs) -> DLRM:
    """The DLRM family from the config (flat when no towers are configured)."""
    cfg = inputs.config
    if cfg.embedding_dims and set(cfg.embedding_dims.values()) != {cfg.embedding_dim}:
        raise UserError(
            f"DLRM's dot interaction needs one embedding width; model.embedding_dims {cfg.embedding_dims} "
            f"differ from model.embedding_dim={cfg.embedding_dim} (use arch 'dcn', or one width)"
        )
    return DLRM(**_shared_arguments(inputs), top_mlp=cfg.top_mlp)


def dcn(inputs: ModelInputs) -> DCN:
    """The DCNv2 family from the config (flat when no towers are configured)."""
    cfg = inputs.config
    return DCN(
        **_shared_arguments(inputs),
        deep_mlp=cfg.deep_mlp,
        cross_layers=cfg.cross_layers,
        cross_rank=cfg.cross_rank,
        structure=cfg.structure,
        dims=cfg.embedding_dims or None,
    )


def _shared_arguments(inputs: ModelInputs) -> dict:
    """The constructor arguments both families take. The flat model (no towers configured) has an
    identity Tower Module whatever model.tower_module says."""
    cfg = inputs.config
    return {
        "features": inputs.features,
        "num_dense": inputs.num_dense,
        "towers": inputs.towers,
        "dim": cfg.embedding_dim,
        "pooling": cfg.pooling,
        "bottom_mlp": cfg.bottom_mlp,
        "tower_module": cfg.tower_module if inputs.towers is not None else "identity",
        "compression_ratios": inputs.compression_ratios,
        "tower_options": tower_options(cfg),
    }


def tower_options(cfg: ModelConfig) -> TowerOptions:
    """The config's Tower Module settings (model.tower_*)."""
    return TowerOptions(
        hidden=cfg.tower_hidden,
        cross_layers=cfg.tower_cross_layers,
        mlp=tuple(cfg.tower_mlp),
        attention_layers=cfg.tower_attention_layers,
        norm=cfg.tower_norm,
        projection_init=cfg.tower_projection_init,
        cross_rank=cfg.tower_cross_rank,
        dots=cfg.tower_dots,
    )


BUILT_IN: dict[str, Callable[[ModelInputs], MultiTowerModel]] = {"dlrm": dlrm, "dcn": dcn}


def model_builder(arch: str) -> Callable[[ModelInputs], MultiTowerModel]:
    """A built-in family by name, or "package.module:attribute" imported."""
    if arch in BUILT_IN:
        return BUILT_IN[arch]
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise UserError(f"model.arch must be one of {sorted(BUILT_IN)} or 'package.module:Name', got {arch!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"model.arch {arch!r}: cannot import {module_name} ({e})") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise UserError(f"model.arch {arch!r}: {module_name} has no callable {attr}")
    return builder


def build_model(cfg: ModelConfig, features: list[FeatureSpec], num_dense: int) -> MultiTowerModel:
    """Build on the current torch seed; two calls after the same torch.manual_seed are equal.
    Inside `dmt.deferred_tables()` the tables are left to be created where they live. With
    model.embedding_backend = "fbgemm" the tables are FBGEMM's (dmt/modules/fused.py), with the
    same initial values."""
    names = [f.name for f in features]
    towers = resolve_towers(cfg, names) if has_towers(cfg) else None
    inputs = ModelInputs(list(features), num_dense, towers, compression_ratios(cfg, len(towers)) if towers else [], cfg)
    builder = model_builder(cfg.arch)
    try:
        model = builder(inputs)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"model.arch {cfg.arch!r} could not build the model: {e}") from None
    if cfg.embedding_backend == "fbgemm":
        from dmt.modules.fused import FusedEmbeddingBagCollection

        model.embeddings = FusedEmbeddingBagCollection.like(model.embeddings)
    check_model(model, features, num_dense, cfg.arch)
    return model


def check_model(model: object, features: list[FeatureSpec], num_dense: int, arch: str = "the model") -> None:
    """The contract dmt relies on, checked without tables: a MultiTowerModel over exactly the data's
    features; Tower Modules that keep samples apart (no batch norm) and output their declared
    widths; a head that maps [2, num_dense] and the tower outputs to [2] logits."""
    where = f"model.arch {arch!r}"
    if not isinstance(model, MultiTowerModel):
        raise UserError(f"{where} built a {type(model).__name__}, not a dmt.MultiTowerModel (see docs/library.md)")
    want = {(f.name, f.table, f.num_embeddings) for f in features}
    got = {(f.name, f.table, f.num_embeddings) for f in model.embeddings.features}
    if want != got:
        raise UserError(
            f"{where}: its embeddings read {sorted(got - want)[:3]} but the data has {sorted(want - got)[:3]}"
            " (features, tables and rows must be the data's)"
        )
    for t, tm in enumerate(model.tower_modules):
        norms = [type(m).__name__ for m in tm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            raise UserError(f"{where}: Tower Module {t} uses {norms[0]}, which mixes samples; use LayerNorm")
    param = next(iter(model.dense_parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = []
            for t, tm in enumerate(model.tower_modules):
                y = tm(torch.zeros(2, model.tower_in_widths[t], device=device))
                if tuple(y.shape) != (2, model.tower_widths[t]):
                    raise ValueError(f"Tower Module {t} returned {list(y.shape)}, not [2, {model.tower_widths[t]}]")
                outputs.append(y)
            logits = model.head(torch.zeros(2, num_dense, device=device), outputs)
            if tuple(logits.shape) != (2,):
                raise ValueError(f"the head returned {list(logits.shape)} for 2 samples, not [2] logits")
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is a contract violation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{where} does not fit the contract: {first}") from None
    finally:
        model.train(was_training)
