"""The emulated cluster's own facts, measured before any training run (runs under `dmt emulate`,
one rank per process, as `python -m dmt.emulate.probe --out DIR`; `link_facts` starts it):

    latency_cross_s   median time of a tiny all-to-all over all ranks (16 B per peer): the fixed
                      cost of one call that crosses hosts (gloo over TCP, both tbf hops)
    latency_intra_s   the same inside one host (loopback), when hosts have several ranks
    loopback_gbps     payload GB/s one rank moves in a large intra-host all-to-all (4 MiB per peer;
                      with two tiers the rank links' shaped rate, which the model takes as given)
    cross_goodput     payload GB/s one host's link carries in a large all-to-all between the
                      hosts (a check of the tbf rate x TCP payload share, not used by the model)
    runtime_rss_bytes resident memory of a rank with torch, dmt and its process groups loaded,
                      before any model or data: the platform's fixed cost per process

These feed `dmt.cost.presets.emulated`; the training runs that are predicted never do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

import dmt.cli  # noqa: F401 - what `dmt train` has loaded before it builds anything
import dmt.train.loop  # noqa: F401
from dmt.distributed.topology import Layout, Topology
from dmt.train.resources import peak_rss_bytes

REPEATS = 30


def timed_alltoall(group, per_peer_bytes: int, repeats: int = REPEATS) -> float:
    """Median seconds of an all-to-all sending `per_peer_bytes` to every member of `group`."""
    size = dist.get_world_size(group)
    x = torch.zeros(size * per_peer_bytes, dtype=torch.uint8)
    out = torch.empty_like(x)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_to_all_single(out, x, group=group)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    per_host = os.environ.get("DMT_RANKS_PER_HOST") or os.environ["LOCAL_WORLD_SIZE"]  # dmt emulate, torchrun
    layout = Layout.for_world(dist.get_world_size(), int(per_host))
    topo = Topology.create(layout)
    runtime_rss = peak_rss_bytes()
    facts = {"latency_cross_s": timed_alltoall(topo.world_group, 16)}
    if layout.ranks_per_host > 1:
        facts["latency_intra_s"] = timed_alltoall(topo.intra_group, 16)
        big = 4 << 20
        t = timed_alltoall(topo.intra_group, big, repeats=10)
        facts["loopback_gbps"] = (layout.ranks_per_host - 1) * big / t / 1e9
    else:
        facts["latency_intra_s"] = 0.0
        facts["loopback_gbps"] = None
    per_peer = 1 << 20  # every rank to each rank of the other hosts; a host's link carries L*L*(H-1) of them
    t = timed_alltoall(topo.world_group, per_peer, repeats=5)
    per_host = layout.ranks_per_host * (layout.world - layout.ranks_per_host) * per_peer
    facts["cross_goodput_gbps"] = per_host / t / 1e9
    everyone: list = [None] * layout.world
    dist.all_gather_object(everyone, runtime_rss)
    facts["runtime_rss_bytes"] = everyone
    if dist.get_rank() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(facts, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
