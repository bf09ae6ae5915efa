"""`dmt partition`: config (+ checkpoint) -> interaction matrix -> towers -> JSON + heatmap PNG.

The JSON is a towers file that `dmt train --set model.towers_file=PATH` reads directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dmt.config import Config
from dmt.data import make_source
from dmt.data.base import DataSource
from dmt.errors import UserError
from dmt.partition.budget import check_budget, propose_ratios
from dmt.partition.heatmap import draw_heatmap
from dmt.partition.interaction import data_interactions, dcn_interactions, dlrm_interactions, sample_batch
from dmt.partition.partition import PartitionResult, adjusted_rand_index, check_options, partition

SOURCES = ("dlrm", "dcn", "data")
DATA_SAMPLES = 200_000  # model-free source
MODEL_SAMPLES = 16_384  # DLRM source: pooled embeddings of this many samples


def checkpoint_interactions(
    source: DataSource, checkpoint: str, kind: str | None, samples: int | None
) -> tuple[np.ndarray, str]:
    """Interactions from a flat model checkpoint -> ([F, F] in source feature order, family)."""
    from dmt.models.build import build_model
    from dmt.train.checkpoint import load_file, model_weights

    ckpt_cfg, state = load_file(checkpoint)
    family = ckpt_cfg.model.arch
    if kind is not None and kind != family:
        raise UserError(f"--source {kind} does not match the checkpoint's model family '{family}'")
    m = ckpt_cfg.model
    if m.towers or m.towers_file or m.num_towers > 0:
        raise UserError(f"--checkpoint {checkpoint} holds a multi-tower model; the {family} source needs a flat one")
    model = build_model(m, source.features, source.num_dense)
    weights = model_weights(state)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {checkpoint} does not fit the data of --config: {first}") from None
    names = [f.name for f in source.features]
    if family == "dlrm":
        batch = sample_batch(source, samples or MODEL_SAMPLES)
        return dlrm_interactions(model, batch), family
    return dcn_interactions(model, names), family


def interaction_matrix(
    source: DataSource, kind: str | None, checkpoint: str | None, samples: int | None
) -> tuple[np.ndarray, str]:
    """-> ([F, F] raw interactions, the source used). Default: the checkpoint's family, else data."""
    check_source(kind, checkpoint)
    if kind == "data" or checkpoint is None:
        return data_interactions(source, samples or DATA_SAMPLES), "data"
    return checkpoint_interactions(source, checkpoint, kind, samples)


def check_source(kind: str | None, checkpoint: str | None) -> None:
    if kind is not None and kind not in SOURCES:
        raise UserError(f"unknown interaction source '{kind}'; allowed: {', '.join(SOURCES)}")
    if kind in ("dlrm", "dcn") and checkpoint is None:
        raise UserError(f"--source {kind} needs --checkpoint DIR (a flat {kind} run of `dmt train`)")


def run_partition(
    cfg: Config,
    towers: int,
    out: str | Path,
    method: str = "tp",
    source_kind: str | None = None,
    checkpoint: str | None = None,
    cost: str = "ids",
    tolerance: float = 0.05,
    seed: int = 0,
    samples: int | None = None,
    budget_ratio: float | None = None,
    budget_mix: float = 0.5,
) -> dict:
    """Partition the config's features; write the JSON at `out` and the heatmap at `out`.png. -> JSON dict.

    budget_ratio: also propose per-tower compression ratios that spend the cross-host bytes of this
    uniform ratio (dmt/partition/budget.py) for the config's model family; the JSON gains "budget"."""
    out_path = Path(out)
    if out_path.suffix.lower() == ".png":
        raise UserError(f"--out {out} must be the JSON path; the heatmap goes beside it with suffix .png")
    if samples is not None and samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    check_options(towers, method, tolerance, cost)
    check_source(source_kind, checkpoint)
    check_budget(budget_ratio, budget_mix)
    start = time.perf_counter()
    source = make_source(cfg.data)
    matrix, used = interaction_matrix(source, source_kind, checkpoint, samples)
    result: PartitionResult = partition(
        source.features,
        towers,
        method=method,
        interaction=matrix,
        cost=cost,
        embedding_dim=cfg.model.embedding_dim,
        tolerance=tolerance,
        seed=seed,
    )
    payload = result.to_json()
    payload["source"] = used
    payload["checkpoint"] = str(checkpoint) if checkpoint else None
    groups = getattr(source, "planted_groups", None)
    payload["adjusted_rand_index"] = adjusted_rand_index(result.towers, groups) if groups else None
    picture = out_path.with_suffix(".png")
    title = f"{method} towers from {used} interactions (imbalance {result.imbalance:.3f})"
    assert result.interaction is not None
    draw_heatmap(result.interaction, result.feature_names, result.towers, picture, title)
    payload["heatmap"] = str(picture)
    if budget_ratio is not None:
        dim = cfg.model.embedding_dim
        granule = dim if cfg.model.arch == "dlrm" else 1
        assert result.interaction is not None
        proposal = propose_ratios(
            result.towers, result.feature_names, result.interaction, dim, budget_ratio, granule, budget_mix
        )
        payload["budget"] = {"family": cfg.model.arch, **proposal}
    payload["seconds"] = time.perf_counter() - start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=2))
    return payload


def print_partition(payload: dict) -> None:
    for t, (tower, cost) in enumerate(zip(payload["towers"], payload["cost_per_tower"], strict=True)):
        print(f"tower {t}: {len(tower):>3} features  cost {cost:>10.4g}  {' '.join(tower)}")
    line = (
        f"{payload['method']} ({payload['source']} interactions, cost {payload['cost']}): "
        f"imbalance {payload['imbalance']:.4f}"
    )
    if payload.get("within_interaction") is not None:
        line += f", within-tower interaction {payload['within_interaction']:.3f}"
    if payload.get("adjusted_rand_index") is not None:
        line += f", ARI vs planted groups {payload['adjusted_rand_index']:.3f}"
    print(line)
    print(f"wrote {payload['heatmap']}")
    b = payload.get("budget")
    if b:
        ratios = ", ".join(repr(r) for r in b["compression_ratios"])
        print(
            f"budget of uniform ratio {b['budget_ratio']:g} ({b['budget_floats']:g} floats per sample, {b['family']}): "
            f"widths {b['tower_widths']}, model.tower_compression_ratios = [{ratios}]"
        )
