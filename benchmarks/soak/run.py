"""Soak: resident memory of a long one-process run must not creep (issue: < 10% growth from step
1,000 to step 10,000).

    .venv/bin/python -m benchmarks.soak.run [--config dmt/configs/synthetic_dmt_dlrm.toml] [--steps 10000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import provenance
from dmt.config import load_config
from dmt.train.loop import build, train_step

HERE = Path(__file__).parent


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="dmt/configs/synthetic_dmt_dlrm.toml")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    cfg = load_config(args.config, [f"train.batch_size={args.batch_size}"])
    t = build(cfg)
    stream = t.source.train_batches(args.batch_size)
    samples = {}
    for step in range(1, args.steps + 1):
        train_step(t, next(stream))
        if step % 1000 == 0 or step == 1:
            samples[step] = rss_mib()
            print(f"step {step}: {samples[step]:.1f} MiB", flush=True)
    growth = samples[args.steps] / samples[1000] - 1
    result = {
        **provenance(),
        "config": args.config,
        "batch_size": args.batch_size,
        "rss_mib": samples,
        "growth_1000_to_end": growth,
        "ok": growth < 0.10,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    print(f"RSS growth from step 1,000 to {args.steps:,}: {100 * growth:+.2f}%")


if __name__ == "__main__":
    main()
