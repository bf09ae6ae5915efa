"""Measured speed on an emulated cluster (needs root): flat, SPTT (CR 1) and SPTT + Tower Modules
(CR 2, 4, 8) on 2 hosts x 2 ranks and 4 hosts x 1 rank, cross-host links shaped with tbf.

    .venv/bin/python -m benchmarks.emulated.run [--mbit 100] [--steps 200]

Writes results.json and results.md here: median step time, examples/s, counted cross-host bytes
and the bytes the shaped links carried, per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import provenance
from dmt.emulate import emulate

HERE = Path(__file__).parent
RUNS = [
    ("flat", ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"]),
    ("sptt cr1", ["dist.mode=sptt", "model.tower_module=identity"]),
    ("sptt+tm cr2", ["dist.mode=sptt", "model.tower_module=compress", "model.compression_ratio=2"]),
    ("sptt+tm cr4", ["dist.mode=sptt", "model.tower_module=compress", "model.compression_ratio=4"]),
    ("sptt+tm cr8", ["dist.mode=sptt", "model.tower_module=compress", "model.compression_ratio=8"]),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--mbit", type=float, default=100.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--topologies", default="2x2,4x1")
    args = p.parse_args()
    rows = []
    for topo in args.topologies.split(","):
        hosts, per_host = (int(x) for x in topo.split("x"))
        for name, overrides in RUNS:
            out = Path("runs/bench_emulated") / topo / name.replace(" ", "_").replace("+", "_")
            train_args = [
                "--config",
                args.config,
                "--set",
                f"train.steps={args.steps}",
                "train.progress=false",
                "train.tensorboard=false",
                "data.synthetic.eval_samples=8192",
                *overrides,
                "--out",
                str(out),
            ]
            s = emulate(hosts, per_host, args.mbit, train_args)
            link = sum(x["tx_bytes"] for x in s["link_bytes"]) / len(s["link_bytes"])
            rows.append(
                {
                    "topology": topo,
                    "run": name,
                    "examples_per_s": s["examples_per_s"],
                    "step_ms": s["step_ms"],
                    "step_breakdown_ms": s["step_breakdown_ms"],
                    "auc": s["auc"],
                    "cross_host_bytes_per_step_rank": s["comm"]["cross_host_bytes"],
                    "allreduce_bytes_per_step_rank": s["comm"]["allreduce_bytes"],
                    "link_tx_bytes_per_host": link,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        base = next(x for x in rows if x["topology"] == r["topology"] and x["run"] == "flat")
        r["speedup_vs_flat"] = r["examples_per_s"] / base["examples_per_s"]
    result = {**provenance(), "cross_host_mbit": args.mbit, "steps": args.steps, "config": args.config, "results": rows}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Emulated cluster, cross-host links shaped to {args.mbit:g} Mbit/s per host",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: `{result['commit']}`, {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (all ranks share them)",
        "",
        "| topology | run | examples/s | speedup vs flat | median step ms | cross-host B/step/rank | link tx B/host |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['run']} | {r['examples_per_s']:.0f} | {r['speedup_vs_flat']:.2f}x "
            f"| {r['step_ms']['median']:.1f} | {r['cross_host_bytes_per_step_rank']:,.0f} "
            f"| {r['link_tx_bytes_per_host']:,.0f} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
