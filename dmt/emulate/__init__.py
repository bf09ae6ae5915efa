"""`dmt emulate`: a cluster of H hosts x L ranks on this machine, with shaped links.

    network.py   namespaces, bridges and token-bucket links (one tier, or two: per rank and per host)
    launch.py    one torchrun per host or rank, their logs, and the one line that says what failed
    faults.py    link outages, packet loss and killed ranks (--fault)
    dilate.py    --like h100: link rates scaled by how much slower this machine computes the step

The ranks learn their link's name (DMT_LINK_IFACE) and record what it carried during the training
loop (summary.json `link_train`); `link_bytes` adds the whole run's totals, read before tear-down;
with two tiers `rank_link_bytes` has every rank's link and `link_tiers` sets each tier's wire
bytes beside our counters. Everything is removed on exit, also after Ctrl-C, a failed rank, or an
exception; namespaces left by an emulator that was killed outright are removed by the next one.
Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dmt import slowdown
from dmt.emulate import launch, network
from dmt.emulate.faults import Fault, LinkFaults, check_faults, kill_env, stalls
from dmt.emulate.network import MAX_MBIT, PREFIX, EmulatedCluster, host_cores, remove_stale
from dmt.emulate.tiers import link_tiers
from dmt.errors import UserError
from dmt.train.resources import HOST_NETDEV_ENV, LINK_ENV

__all__ = ["MAX_MBIT", "PREFIX", "EmulatedCluster", "check_can_emulate", "emulate", "remove_stale"]


def check_can_emulate(
    hosts: int, ranks_per_host: int, mbit: float, queue_ms: float = 100.0, intra_host_mbit: float | None = None
) -> None:
    if os.geteuid() != 0:
        raise UserError("dmt emulate needs root (it creates network namespaces and shapes links); run it as root")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise UserError("dmt emulate needs the `ip` and `tc` commands (Debian package iproute2)")
    if hosts < 2:
        raise UserError(f"dmt emulate needs at least 2 hosts, got {hosts}")
    if ranks_per_host < 1:
        raise UserError(f"--ranks-per-host must be >= 1, got {ranks_per_host}")
    if hosts * ranks_per_host > 150:
        raise UserError(f"dmt emulate holds at most 150 ranks, got {hosts} x {ranks_per_host}")
    if not 0 < mbit <= MAX_MBIT:
        raise UserError(f"--cross-host-mbit must be in (0, {MAX_MBIT}], got {mbit:g}")
    if intra_host_mbit is not None and not 0 < intra_host_mbit <= MAX_MBIT:
        raise UserError(f"--intra-host-mbit must be in (0, {MAX_MBIT}], got {intra_host_mbit:g}")
    if not 1 <= queue_ms <= 1000:
        raise UserError(f"--queue-ms must be in [1, 1000], got {queue_ms:g}")


def _out_dir(train_args: list[str]) -> Path:
    if "--out" not in train_args or train_args.index("--out") + 1 >= len(train_args):
        raise UserError("dmt emulate needs the training's --out DIR after `--`")
    return Path(train_args[train_args.index("--out") + 1])


def preflight(train_args: list[str], hosts: int, ranks_per_host: int):
    """`dmt train` arguments checked here, once, before any namespace exists: a bad value stops
    with its one line instead of once per rank. -> the training's Config"""
    from dmt.cli import make_parser
    from dmt.config import load_config
    from dmt.train.run import check_cluster

    args = make_parser().parse_args(["train", *train_args])
    cfg = load_config(args.config, args.set)
    check_cluster(cfg, hosts * ranks_per_host, ranks_per_host)
    return cfg


def emulate(
    hosts: int,
    ranks_per_host: int,
    mbit: float,
    train_args: list[str],
    port: int = 29511,
    entry: tuple[str, ...] = ("dmt", "train"),
    queue_ms: float = 100.0,
    intra_host_mbit: float | None = None,
    faults: list[Fault] | tuple[Fault, ...] = (),
    max_restarts: int = 0,
    compute_slowdown: float | None = None,
) -> dict:
    """Run `python -m <entry> <train_args>` (default `dmt train`) on the emulated cluster; the entry
    must write --out DIR/summary.json on rank 0. mbit: each host's link (two tiers: its uplink);
    intra_host_mbit: each rank's own link into its host's switch (None: one tier, loopback inside
    a host); compute_slowdown: each rank computes that many times slower (dmt/slowdown.py; None:
    at this machine's speed). -> the run's summary with link_bytes (and, with faults, what they did)."""
    if compute_slowdown is not None and not compute_slowdown >= 1:
        raise UserError(f"a rank's compute slowdown must be >= 1, got {compute_slowdown:g}")
    check_can_emulate(hosts, ranks_per_host, mbit, queue_ms, intra_host_mbit)
    if any(a in train_args for a in ("--nproc", "--ranks-per-host")):
        raise UserError("give the cluster to dmt emulate (--hosts, --ranks-per-host), not to the training arguments")
    if max_restarts < 0:
        raise UserError(f"--max-restarts must be >= 0, got {max_restarts}")
    faults = list(faults)
    check_faults(faults, hosts, hosts * ranks_per_host)
    out = _out_dir(train_args)
    cfg = preflight(train_args, hosts, ranks_per_host) if entry == ("dmt", "train") else None
    remove_stale()
    if any(f.kind == "loss" for f in faults) and not network.has_netem():
        raise UserError("--fault loss needs the kernel's netem qdisc (sch_netem), which this machine lacks")
    c = EmulatedCluster(
        hosts, ranks_per_host, mbit, str(os.getpid()), queue_ms, intra_host_mbit, any(f.kind == "loss" for f in faults)
    )
    procs: list[launch.Process] = []
    restarts: list[dict] = []  # the failures the cluster restarted after
    injector = None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, stop)
    started = time.time()
    try:
        network.create(c)
        injector = LinkFaults(faults, lambda h, pct: _set_host_loss(c, h, pct), out / "metrics.jsonl", started)
        injector.start()
        for attempt in range(max_restarts + 1):
            launch.stop_all(procs)  # the previous attempt's (its anchors)
            args = train_args if attempt == 0 or entry != ("dmt", "train") else [*train_args, "--resume"]
            first_faults = faults if attempt == 0 else []
            procs = _start(c, entry, args, port + attempt, first_faults, out / "emulate", attempt, compute_slowdown)
            # a restart needs no reports from the survivors: stop them soon
            codes = launch.wait_all(procs, grace_s=1.0 if attempt < max_restarts else 5.0)
            if all(code == 0 for code in codes) or attempt == max_restarts:
                break
            lost = launch.failure(procs, cfg.dist.timeout_s if cfg is not None else None)
            restarts.append({"attempt": attempt, "error": str(lost), "at_s": time.time() - started})
            if cfg is not None:  # the restart rewrites metrics.jsonl: keep this attempt's stalls
                restarts[-1]["stalls"] = stalls(out / "metrics.jsonl")
            print(f"dmt emulate: {lost}; restarting every rank from the last checkpoint", file=sys.stderr)
        links = network.link_bytes(c)
        rank_links = network.rank_link_bytes(c) if c.two_tier else None
    finally:
        applied = injector.stop() if injector is not None else []
        launch.stop_all(procs)
        network.destroy(c)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(code != 0 for code in codes):
        raise launch.failure(procs, cfg.dist.timeout_s if cfg is not None else None)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["link_bytes"] = links
    summary["emulation"] = {
        "hosts": hosts,
        "ranks_per_host": ranks_per_host,
        "cross_host_mbit": mbit,
        "intra_host_mbit": intra_host_mbit,
        "burst_bytes": c.burst_bytes,
        "intra_burst_bytes": c.intra_burst_bytes,
        "queue_ms": queue_ms,
        "max_restarts": max_restarts,
        "compute_slowdown": compute_slowdown,
    }
    if rank_links is not None:
        summary["rank_link_bytes"] = rank_links
        if "link_train" in summary:  # a training run, not a probe
            summary["link_tiers"] = link_tiers(summary)
    if faults or restarts:
        summary["faults"] = {**_fault_report(faults, applied, out, cfg, summary, restarts), "restarts": restarts}
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def _set_host_loss(c: EmulatedCluster, host: int, percent: float) -> None:
    """100 %: cut the link; less: netem drops that share of its packets (0: restored)."""
    network.set_host_link(c, host, percent < 100)
    if c.faults:
        for dev, ns in c.host_link(host):
            network.set_loss(dev, ns, percent if percent < 100 else 0.0)


def _start(
    c: EmulatedCluster,
    entry: tuple[str, ...],
    train_args: list[str],
    port: int,
    faults: list[Fault],
    logs: Path,
    attempt: int,
    compute_slowdown: float | None,
) -> list[launch.Process]:
    """One torchrun per host (one tier) or per rank (two tiers). attempt > 0: a restart of every
    rank after a failure (DMT_RESTART_COUNT tells the ranks); compute_slowdown: every rank's
    DMT_COMPUTE_SLOWDOWN (None: unset)."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "e0",
        LINK_ENV: "e0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "DMT_RANKS_PER_HOST": str(c.ranks_per_host),
        "DMT_RESTART_COUNT": str(attempt),
        **kill_env(faults),
    }
    env.pop(slowdown.ENV, None)
    if compute_slowdown is not None:
        env[slowdown.ENV] = repr(float(compute_slowdown))
    args = list(train_args)
    per_node = c.ranks_per_host
    if c.two_tier:
        per_node = 1  # every rank in its own namespace, so one launcher each
        if entry == ("dmt", "train"):
            args += ["--ranks-per-host", str(c.ranks_per_host)]
    cores = host_cores(c.hosts)
    procs = []
    nodes = [(h, local) for h in range(c.hosts) for local in range(c.ranks_per_host)] if c.two_tier else None
    for node in range(c.world if c.two_tier else c.hosts):
        h, local = nodes[node] if nodes else (node, 0)
        node_env = dict(env)
        anchor = None
        if c.two_tier and local == 0:  # the host's switch counters, readable from the rank's namespace
            anchor = subprocess.Popen(["ip", "netns", "exec", c.host_ns(h), "sleep", "infinity"])
            node_env[HOST_NETDEV_ENV] = f"/proc/{anchor.pid}/net/dev"
        cmd = [
            "ip",
            "netns",
            "exec",
            c.rank_ns(h, local),
            "taskset",
            "-c",
            ",".join(map(str, cores[h])),
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={c.world if c.two_tier else c.hosts}",
            f"--nproc-per-node={per_node}",
            f"--node-rank={node}",
            f"--master-addr={c.address(0, 0)}",
            f"--master-port={port}",
            f"--local-addr={c.address(h, local)}",
            "--max-restarts=0",
            "-m",
            *entry,
            *args,
        ]
        ranks = [node] if c.two_tier else [h * c.ranks_per_host + i for i in range(c.ranks_per_host)]
        name = f"rank{node}" if c.two_tier else f"host{h}"
        log = logs / (f"{name}.log" if attempt == 0 else f"{name}.restart{attempt}.log")
        procs.append(launch.start(name, h, ranks, cmd, node_env, log, show=node == 0))
        procs[-1].anchor = anchor
    return procs


def _fault_report(
    faults: list[Fault], applied: list[dict], out: Path, cfg, summary: dict, restarts: list[dict]
) -> dict:
    """What the faults did: the link switches made, how long training stalled, and for a killed
    rank how many steps of work the restart had to redo (back to the last checkpoint)."""
    report: dict = {"applied": applied}
    if cfg is not None:
        report.update(stalls(out / "metrics.jsonl"))
        earlier = [r["stalls"]["stalled_s"] or 0.0 for r in restarts if "stalls" in r]
        report["stalled_s"] = (report["stalled_s"] or 0.0) + sum(earlier)  # over every attempt
        kill = next((f for f in faults if f.kind == "kill"), None)
        if kill is not None:
            every = cfg.train.checkpoint_every
            last = (kill.step // every) * every if every else 0
            report["killed"] = {"rank": kill.rank, "step": kill.step, "last_checkpoint_step": last}
            report["steps_redone"] = kill.step - last
    return report
