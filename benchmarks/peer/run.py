"""Peer baseline on an emulated cluster (needs root): our flat, SPTT (CR 1) and SPTT + Tower Modules
(CR 4) against TorchRec DistributedModelParallel with table-wise and table-row-wise sharding, on
2 hosts x 2 ranks, cross-host links shaped with tbf; same model (the flat DLRM of the config for
TorchRec), same seed, same per-rank batches, one run each.

    .venv/bin/python -m benchmarks.peer.run [--mbit 100] [--steps 200]

Writes results.json and results.md here: examples/s, speedup vs our flat, median step time, AUC
and the bytes each host's shaped link carried, per run.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib.metadata import version
from pathlib import Path

from benchmarks.common import provenance, provenance_lines
from dmt.emulate import emulate

HERE = Path(__file__).parent
FLAT = ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"]
TORCHREC = ("benchmarks.peer.torchrec_train",)
RUNS = [  # (name, torchrun entry, extra arguments)
    ("dmt flat", ("dmt", "train"), ["--set", *FLAT]),
    ("dmt sptt cr1", ("dmt", "train"), ["--set", "dist.mode=sptt", "model.tower_module=identity"]),
    (
        "dmt sptt+tm cr4",
        ("dmt", "train"),
        ["--set", "dist.mode=sptt", "model.tower_module=compress", "model.compression_ratio=4"],
    ),
    ("torchrec table-wise", TORCHREC, ["--sharding", "table_wise", "--set", *FLAT]),
    ("torchrec table-row-wise", TORCHREC, ["--sharding", "table_row_wise", "--set", *FLAT]),
]


def run_all(config: str, mbit: float, steps: int, hosts: int = 2, per_host: int = 2) -> list[dict]:
    rows = []
    for name, entry, extra in RUNS:
        out = Path("runs/bench_peer") / name.replace(" ", "_").replace("+", "_")
        common = ["--set", f"train.steps={steps}", "train.progress=false", "train.tensorboard=false"]
        common += ["data.synthetic.eval_samples=8192"]
        args = ["--config", config, *common, *extra, "--out", str(out)]
        s = emulate(hosts, per_host, mbit, args, entry=entry)
        rows.append(
            {
                "run": name,
                "mode": s["mode"],
                "examples_per_s": s["examples_per_s"],
                "step_ms": s["step_ms"],
                "step_breakdown_ms": s["step_breakdown_ms"],
                "auc": s["auc"],
                "link_tx_bytes_per_host": sum(x["tx_bytes"] for x in s["link_bytes"]) / len(s["link_bytes"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["examples_per_s"]
    for r in rows:
        r["speedup_vs_flat"] = r["examples_per_s"] / base
    return rows


def verdict(rows: list[dict]) -> tuple[bool, str]:
    ours = next(r for r in rows if r["run"] == "dmt sptt+tm cr4")
    peers = [r for r in rows if r["run"].startswith("torchrec")]
    best = max(peers, key=lambda r: r["examples_per_s"])
    beats = all(ours["examples_per_s"] > r["examples_per_s"] for r in peers)
    word = "beats" if beats else "does NOT beat"
    return beats, (
        f"SPTT+TM at CR 4 {word} every TorchRec sharding on examples/s: {ours['examples_per_s']:.0f} against "
        f"{best['examples_per_s']:.0f} for the best one ({best['run']}), "
        f"{ours['examples_per_s'] / best['examples_per_s']:.2f}x."
    )


def write(result: dict, load: str) -> None:
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Peer baseline: dmt against TorchRec on an emulated 2x2 cluster, {result['cross_host_mbit']:g} Mbit/s",
        "",
        *provenance_lines(result, f" (all ranks share them); {load}"),
        f"Config: `{result['config']}` (TorchRec runs: its flat DLRM), {result['steps']} steps, one run each",
        "",
        "| run | examples/s | speedup vs dmt flat | median step ms | AUC | link tx B/host |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['run']} | {r['examples_per_s']:.0f} | {r['speedup_vs_flat']:.2f}x | {r['step_ms']['median']:.1f} "
            f"| {r['auc']:.4f} | {r['link_tx_bytes_per_host']:,.0f} |"
        )
    lines += ["", result["verdict"], ""]
    lines += [
        f"Both TorchRec runs use TorchRec {result['torchrec']}'s DistributedModelParallel on gloo/CPU "
        f"(fbgemm-gpu-cpu {result['fbgemm_gpu_cpu']}) with fbgemm's fused row-wise Adagrad on the tables and "
        "DDP on the dense part (`benchmarks/peer/torchrec_train.py`); table-wise puts each table on the rank our "
        "flat plan gives it, table-row-wise splits it by rows over the ranks of that rank's host. Every run "
        "trains the same DLRM from the same seed on the same per-rank batches (B = 256 per rank); examples/s "
        "is W x B x steps over the whole training loop, median step ms leaves out the first step, as in "
        "`dmt train`. Link tx B/host: bytes each host's shaped link sent over the whole run (kernel counters, "
        "set-up and evaluation included).",
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="dmt/configs/demo.toml")
    p.add_argument("--mbit", type=float, default=100.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--load-note", default="", help="a sentence on other load on the machine during the run")
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = run_all(args.config, args.mbit, args.steps)
    beats, sentence = verdict(rows)
    load = args.load_note or f"load average {load_before[0]:.2f} (1 min) when the runs started"
    result = {
        **provenance(),
        "cross_host_mbit": args.mbit,
        "steps": args.steps,
        "config": args.config,
        "load": load,
        "torchrec": version("torchrec"),
        "fbgemm_gpu_cpu": version("fbgemm-gpu-cpu"),
        "results": rows,
        "sptt_tm_cr4_beats_torchrec": beats,
        "verdict": sentence,
    }
    write(result, load)
    print(sentence)


if __name__ == "__main__":
    main()
