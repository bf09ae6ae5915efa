"""Training quality of the four synthetic configs on one process: AUC against the Bayes-optimal
AUC of the synthetic teacher, and wall time (issue: each under 3 minutes, AUC >= optimal - 0.02).

    .venv/bin/python -m benchmarks.quality.run
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import provenance, provenance_lines

CONFIGS = ["synthetic_dlrm", "synthetic_dcn", "synthetic_dmt_dlrm", "synthetic_dmt_dcn"]
HERE = Path(__file__).parent


def main() -> None:
    rows = []
    for name in CONFIGS:
        out = Path("runs/bench_quality") / name
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dmt",
                "train",
                "--config",
                f"dmt/configs/{name}.toml",
                "--set",
                "train.progress=false",
                "--out",
                str(out),
            ],
            check=True,
        )
        wall = time.perf_counter() - t0
        s = json.loads((out / "summary.json").read_text())
        rows.append(
            {
                "config": name,
                "model": s["model"],
                "auc": s["auc"],
                "optimal_auc": s["optimal_auc"],
                "gap": s["optimal_auc"] - s["auc"],
                "logloss": s["logloss"],
                "ne": s["ne"],
                "wall_s": wall,
                "steps": s["steps"],
                "examples_per_s": s["examples_per_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {**provenance(), "results": rows}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Training quality on synthetic data (one process)",
        "",
        *provenance_lines(result),
        "",
        "| config | model | AUC | optimal AUC | gap | NE | wall s (whole `dmt train`) | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['model']} | {r['auc']:.4f} | {r['optimal_auc']:.4f} | {r['gap']:.4f} "
            f"| {r['ne']:.4f} | {r['wall_s']:.0f} | {r['steps']} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
