"""Tower Partitioner benchmark: DMT-DLRM trained with TP, sequential and random towers.

Same synthetic data for every run (data.seed fixed); each training seed s trains one model per
method with train.seed = s; random towers use partition seed s. The model-free interaction matrix
is computed once and every method's towers are cut from it (K = 4, cost = ids per sample, TP
tolerance 0.05). Every cut sends the same cross-host floats: those of the config's uniform
compression ratio, spent in whole embeddings by tower size (`equal_budget`), since a DLRM Tower
Module sends whole embeddings and an uneven cut cannot take the uniform ratio itself. Writes
results.json and results.md here: per method mean / std of AUC, the
partition's ARI against the planted groups and its imbalance, and paired t-tests (over seeds)
of TP against each baseline.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.partition.run [--steps 1500] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.common import provenance, provenance_lines
from dmt.config import load_config
from dmt.data import make_source
from dmt.partition import adjusted_rand_index, partition
from dmt.partition.budget import propose_ratios
from dmt.partition.heatmap import draw_heatmap
from dmt.partition.interaction import data_interactions
from dmt.train.loop import train

HERE = Path(__file__).parent
CONFIG = "dmt/configs/synthetic_dmt_dlrm.toml"
TRAINED = ("tp", "sequential", "random")
PARTITION_ONLY = ("greedy",)


def make_towers(source, matrix: np.ndarray, method: str, seed: int, embedding_dim: int, out: Path) -> dict:
    result = partition(source.features, 4, method, matrix, cost="ids", embedding_dim=embedding_dim, seed=seed)
    payload = {**result.to_json(), "source": "data"}
    payload["adjusted_rand_index"] = adjusted_rand_index(result.towers, source.planted_groups)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return payload


def equal_budget(towers: list[list[str]], dim: int, ratio: float) -> dict:
    """Per-tower ratios for a DLRM Tower Module (whole d-wide embeddings) that spend the cross-host
    floats of uniform `ratio` by tower size alone (mix 1: no interaction term, which would favour
    one cut). -> dmt.partition.budget.propose_ratios's proposal"""
    names = [f for tower in towers for f in tower]
    return propose_ratios(towers, names, np.zeros((len(names), len(names))), dim, ratio, dim, mix=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1")
    parser.add_argument("--runs", default="runs/bench_partition", help="directory for the training runs")
    args = parser.parse_args()
    runs = Path(args.runs)
    started = provenance()  # the commit and tree this run starts from
    t0 = time.perf_counter()

    base = load_config(CONFIG)
    source = make_source(base.data)
    matrix = data_interactions(source)
    dim = base.model.embedding_dim
    optimal = source.optimal_metrics()["optimal_auc"]

    rows = []
    for method in PARTITION_ONLY:
        p = make_towers(source, matrix, method, 0, dim, runs / f"towers_{method}.json")
        rows.append({"method": method, "seed": None, "auc": None, **_partition_stats(p)})
    for seed in range(args.seeds):
        for method in TRAINED:
            towers_file = runs / f"towers_{method}_s{seed}.json"
            p = make_towers(source, matrix, method, seed, dim, towers_file)
            if method == "tp" and seed == 0:
                picture = HERE / "tp_heatmap.png"
                draw_heatmap(np.asarray(p["interaction"]), p["features"], p["towers"], picture, "TP towers (data)")
            budget = equal_budget(p["towers"], dim, base.model.compression_ratio)
            ratios = ", ".join(repr(r) for r in budget["compression_ratios"])
            cfg = load_config(
                CONFIG,
                [
                    f"model.towers_file={json.dumps(str(towers_file))}",
                    f"model.tower_compression_ratios=[{ratios}]",
                    f"train.seed={seed}",
                    f"train.steps={args.steps}",
                    "train.progress=false",
                    "dist.mode=flat",
                ],
            )
            start = time.perf_counter()
            summary = train(cfg, runs / f"{method}_s{seed}")
            row = {
                "method": method,
                "seed": seed,
                "auc": summary["auc"],
                "logloss": summary["logloss"],
                "train_s": time.perf_counter() - start,
                "tower_widths": budget["tower_widths"],
                **_partition_stats(p),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {
        **started,
        "config": CONFIG,
        "compression_ratio": base.model.compression_ratio,
        "budget_floats": len(source.features) * dim / base.model.compression_ratio,
        "steps": args.steps,
        "seeds": list(range(args.seeds)),
        "optimal_auc": optimal,
        "summary": _summarise(rows),
        "tests": _tests(rows),
        "runs": rows,
        "wall_s": time.perf_counter() - t0,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    (HERE / "results.md").write_text(_markdown(result))
    print(_markdown(result))


def _partition_stats(p: dict) -> dict:
    return {
        "ari": p["adjusted_rand_index"],
        "imbalance": p["imbalance"],
        "within_interaction": p["within_interaction"],
        "towers": p["towers"],
    }


def _summarise(rows: list[dict]) -> dict:
    out = {}
    for method in (*TRAINED, *PARTITION_ONLY):
        mine = [r for r in rows if r["method"] == method]
        aucs = [r["auc"] for r in mine if r["auc"] is not None]
        out[method] = {
            "runs": len(aucs),
            "auc_mean": float(np.mean(aucs)) if aucs else None,
            "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "ari_mean": float(np.mean([r["ari"] for r in mine])),
            "imbalance_mean": float(np.mean([r["imbalance"] for r in mine])),
            "within_interaction_mean": float(np.mean([r["within_interaction"] for r in mine])),
        }
    return out


def _tests(rows: list[dict]) -> dict:
    """Paired t-tests over seeds of TP's AUC against each trained baseline."""
    tp = {r["seed"]: r["auc"] for r in rows if r["method"] == "tp"}
    out = {}
    for other in TRAINED[1:]:
        theirs = {r["seed"]: r["auc"] for r in rows if r["method"] == other}
        seeds = sorted(set(tp) & set(theirs))
        a, b = np.array([tp[s] for s in seeds]), np.array([theirs[s] for s in seeds])
        test = stats.ttest_rel(a, b)
        out[f"tp_vs_{other}"] = {
            "mean_difference": float((a - b).mean()),
            "std_difference": float((a - b).std(ddof=1)),
            "t": float(test.statistic),
            "p_two_sided": float(test.pvalue),
            "p_one_sided": float(stats.ttest_rel(a, b, alternative="greater").pvalue),
            "pairs": len(seeds),
        }
    return out


def _markdown(result: dict) -> str:
    lines = [
        "# Tower Partitioner: DMT-DLRM AUC with TP, sequential and random towers",
        "",
        *provenance_lines(result, f"; total wall time {result['wall_s'] / 60:.1f} min"),
        "",
        f"Config `{result['config']}` (K = 4 towers), one process, "
        f"{result['steps']} steps per run, training seeds {result['seeds']}; Bayes-optimal AUC "
        f"{result['optimal_auc']:.4f}. Towers from the model-free interaction source, cost = ids per sample. "
        f"Every cut sends {result['budget_floats']:g} cross-host floats per sample, the config's uniform ratio "
        f"{result['compression_ratio']:g}, in whole embeddings by tower size (per-run widths below).",
        "",
        "| method | runs | AUC mean | AUC std | ARI vs planted | imbalance (ids) | within-tower interaction |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in result["summary"].items():
        auc = f"{s['auc_mean']:.4f}" if s["auc_mean"] is not None else "(not trained)"
        std = f"{s['auc_std']:.4f}" if s["auc_std"] is not None else "-"
        lines.append(
            f"| {method} | {s['runs']} | {auc} | {std} | {s['ari_mean']:.3f} | {s['imbalance_mean']:.3f} "
            f"| {s['within_interaction_mean']:.3f} |"
        )
    lines += ["", "Paired t-tests over seeds (TP AUC minus baseline AUC):", ""]
    lines += ["| comparison | mean diff | std diff | t | p (two-sided) | p (one-sided) |", "|---|---|---|---|---|---|"]
    for name, t in result["tests"].items():
        lines.append(
            f"| {name} | {t['mean_difference']:+.4f} | {t['std_difference']:.4f} | {t['t']:.2f} "
            f"| {t['p_two_sided']:.2e} | {t['p_one_sided']:.2e} |"
        )
    lines += ["", "Per run:", "", "| method | seed | AUC | ARI | imbalance | tower widths (floats) |"]
    lines.append("|---|---|---|---|---|---|")
    for r in result["runs"]:
        if r["auc"] is not None:
            widths = "+".join(map(str, r["tower_widths"]))
            lines.append(
                f"| {r['method']} | {r['seed']} | {r['auc']:.4f} | {r['ari']:.3f} | {r['imbalance']:.3f} | {widths} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
