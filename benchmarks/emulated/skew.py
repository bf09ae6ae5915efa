"""Two emulated hosts (one rank each) swap 768 KiB each way, once with both sides starting together
and once with host 1 starting 20 ms late, through gloo's own all-to-all and through our
receives-first exchange (`dmt.distributed.comm.Exchange`). Needs root:

    .venv/bin/python -m benchmarks.emulated.skew [--mbit 100]

Writes skew.json and skew.md here: median milliseconds from host 0's start until both are done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.common import provenance, provenance_lines
from dmt.distributed.comm import CommCounter, Exchange
from dmt.distributed.topology import Layout
from dmt.emulate import emulate

HERE = Path(__file__).parent
BYTES_EACH_WAY = 768 * 1024
LATE_S = 0.020
REPEATS = 9


def rank_main(out: str) -> None:
    """One rank under torchrun: every (method, late) case, REPEATS times."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ex = Exchange(dist.group.WORLD, [0, 1], rank, Layout(2, 1), CommCounter(), "skew")
    x = torch.zeros(2 * BYTES_EACH_WAY, dtype=torch.uint8)
    split = [BYTES_EACH_WAY, BYTES_EACH_WAY]
    results = {}
    for method, receives_first in (("gloo all_to_all_single", False), ("receives first", True)):
        ex.receives_first = receives_first
        for late in (0.0, LATE_S):
            times = []
            for _ in range(REPEATS):
                dist.barrier()
                start = time.perf_counter()
                if rank == 1:
                    time.sleep(late)
                ex.all_to_all(x, split, split, "swap")
                dist.barrier()  # both done
                times.append(1e3 * (time.perf_counter() - start))
            results[f"{method}, host 1 {1e3 * late:.0f} ms late"] = statistics.median(times)
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.json").write_text(json.dumps(results, indent=2))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mbit", type=float, default=100.0)
    p.add_argument("--out", help="(set by the emulator for the ranks)")
    args = p.parse_args()
    if args.out:
        rank_main(args.out)
        return
    s = emulate(2, 1, args.mbit, ["--out", "runs/bench_skew"], entry=("benchmarks.emulated.skew",))
    cases = {k: v for k, v in s.items() if k not in ("link_bytes", "emulation")}
    result = {**provenance(), "cross_host_mbit": args.mbit, "bytes_each_way": BYTES_EACH_WAY, "median_ms": cases}
    (HERE / "skew.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# A late peer on gloo: 768 KiB each way between two hosts at {args.mbit:g} Mbit/s",
        "",
        *provenance_lines(result),
        "",
        "| exchange | median ms until both are done |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in cases.items()],
    ]
    (HERE / "skew.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
