"""`dmt emulate`: a cluster of H hosts on this machine, with slow shaped links between hosts.

    netns dmt<pid>h0 (host 0)          netns dmt<pid>sw (switch)          netns dmt<pid>h1 (host 1)
    ranks 0..L-1 --- veth e0 ==tbf==> [ p0  bridge br0  p1 ] <==tbf== veth e0 --- ranks L..2L-1
    10.X.Y.1                                                                       10.X.Y.2

Each host is a network namespace with one address; its L ranks share it, so traffic between
ranks of one host rides that namespace's loopback (fast) and traffic between hosts crosses the
host's veth, shaped with a token bucket (tbf) in both directions. One `torchrun` per host starts
the host's ranks (static rendezvous at host 0), exactly as on a real multi-host cluster, pinned to
the host's own share of the machine's cores (`host_cores`), so that hosts compute side by side.
The ranks learn their link's name (DMT_LINK_IFACE) and record what it carried during the training
loop (summary.json `link_train`); `link_bytes` adds the whole run's totals, read before tear-down.

Everything is removed on exit, also after Ctrl-C, a failed rank, or an exception; namespaces left
by an emulator that was killed outright are removed by the next one. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dmt.errors import UserError
from dmt.train.resources import LINK_ENV

PREFIX = "dmt"
MAX_MBIT = 400  # DESIGN section 3: rates above about 400 Mbit/s per host stop being faithful


@dataclass(frozen=True)
class EmulatedCluster:
    hosts: int
    ranks_per_host: int
    cross_host_mbit: float
    tag: str  # unique per emulator process
    queue_ms: float = 100.0  # how long a packet may wait in a link's queue before it is dropped

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.tag}sw"

    def host_ns(self, h: int) -> str:
        return f"{PREFIX}{self.tag}h{h}"

    def address(self, h: int) -> str:
        # a test subnet held only by these namespaces; the tag keeps concurrent emulators apart
        return f"10.{200 + int(self.tag) % 50}.{int(self.tag) // 50 % 250}.{h + 1}"

    @property
    def burst_bytes(self) -> int:
        """Token bucket depth: about 3 ms at the shaped rate, at least a few full frames."""
        return max(int(self.cross_host_mbit * 1e6 / 8 * 0.003), 16 * 1514)


def _run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {r.stderr.strip()}")
    return r


def check_can_emulate(hosts: int, ranks_per_host: int, mbit: float, queue_ms: float = 100.0) -> None:
    if os.geteuid() != 0:
        raise UserError("dmt emulate needs root (it creates network namespaces and shapes links); run it as root")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise UserError("dmt emulate needs the `ip` and `tc` commands (Debian package iproute2)")
    if hosts < 2:
        raise UserError(f"dmt emulate needs at least 2 hosts, got {hosts}")
    if ranks_per_host < 1:
        raise UserError(f"--ranks-per-host must be >= 1, got {ranks_per_host}")
    if not 0 < mbit <= MAX_MBIT:
        raise UserError(f"--cross-host-mbit must be in (0, {MAX_MBIT}], got {mbit}")
    if not 1 <= queue_ms <= 1000:
        raise UserError(f"--queue-ms must be in [1, 1000], got {queue_ms}")


def remove_stale() -> list[str]:
    """Delete namespaces of emulators whose process is gone. -> names removed"""
    names = [line.split()[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines() if line]
    removed = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        digits = name[len(PREFIX) :].split("h")[0].split("sw")[0]
        if digits.isdigit() and not Path(f"/proc/{int(digits)}").exists():
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def create(c: EmulatedCluster) -> None:
    _run("ip", "netns", "add", c.switch)
    _run("ip", "link", "add", "br0", "type", "bridge", ns=c.switch)
    _run("ip", "link", "set", "br0", "up", ns=c.switch)
    rate, burst, queue = f"{c.cross_host_mbit}mbit", str(c.burst_bytes), f"{c.queue_ms}ms"
    for h in range(c.hosts):
        ns = c.host_ns(h)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", "e0", "netns", ns, "type", "veth", "peer", "name", f"p{h}", "netns", c.switch)
        _run("ip", "link", "set", f"p{h}", "master", "br0", ns=c.switch)
        _run("ip", "link", "set", f"p{h}", "up", ns=c.switch)
        _run("ip", "addr", "add", f"{c.address(h)}/24", "dev", "e0", ns=ns)
        _run("ip", "link", "set", "e0", "up", ns=ns)
        _run("ip", "link", "set", "lo", "up", ns=ns)
        for dev, where in (("e0", ns), (f"p{h}", c.switch)):  # shape both directions
            shape(dev, rate, burst, queue, where)


def shape(dev: str, rate: str, burst: str, queue: str, ns: str) -> None:
    """A token bucket at `rate` on the egress of `dev`; a packet waits at most `queue`, then drops.

    A deep queue (the default 100 ms) loses nothing and only delays, like a lossless fabric
    that pauses senders; a shallow one drops bursts, like an Ethernet switch with little buffer,
    and TCP then waits out retransmission timeouts."""
    _run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "latency", queue, ns=ns)


def link_bytes(c: EmulatedCluster) -> list[dict]:
    """Bytes each host's shaped link carried (kernel counters of its veth)."""
    out = []
    for h in range(c.hosts):
        stats = {"host": h}
        for key in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets"):
            stats[key] = int(_run("cat", f"/sys/class/net/e0/statistics/{key}", ns=c.host_ns(h)).stdout)
        out.append(stats)
    return out


def destroy(c: EmulatedCluster) -> None:
    for name in [c.host_ns(h) for h in range(c.hosts)] + [c.switch]:
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", name, check=False)


def host_cores(hosts: int) -> list[list[int]]:
    """The CPU cores each emulated host runs on: the machine's cores split evenly, so that hosts
    compute side by side as real hosts do instead of taking turns on shared cores. With more
    hosts than cores, hosts share cores round-robin."""
    cores = sorted(os.sched_getaffinity(0))
    if hosts >= len(cores):
        return [[cores[h % len(cores)]] for h in range(hosts)]
    per = len(cores) // hosts
    return [cores[h * per : (h + 1) * per] for h in range(hosts)]


def _out_dir(train_args: list[str]) -> Path:
    if "--out" not in train_args or train_args.index("--out") + 1 >= len(train_args):
        raise UserError("dmt emulate needs the training's --out DIR after `--`")
    return Path(train_args[train_args.index("--out") + 1])


def emulate(
    hosts: int,
    ranks_per_host: int,
    mbit: float,
    train_args: list[str],
    port: int = 29511,
    entry: tuple[str, ...] = ("dmt", "train"),
    queue_ms: float = 100.0,
) -> dict:
    """Run `python -m <entry> <train_args>` (default `dmt train`) on the emulated cluster; the entry
    must write --out DIR/summary.json on rank 0. -> the run's summary with link_bytes."""
    check_can_emulate(hosts, ranks_per_host, mbit, queue_ms)
    if any(a in train_args for a in ("--nproc", "--ranks-per-host")):
        raise UserError("give the cluster to dmt emulate (--hosts, --ranks-per-host), not to the training arguments")
    out = _out_dir(train_args)
    remove_stale()
    c = EmulatedCluster(hosts, ranks_per_host, mbit, str(os.getpid()), queue_ms)
    procs: list[subprocess.Popen] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, stop)
    try:
        create(c)
        env = {
            **os.environ,
            "GLOO_SOCKET_IFNAME": "e0",
            LINK_ENV: "e0",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        cores = host_cores(hosts)
        for h in range(hosts):
            cmd = [
                "ip",
                "netns",
                "exec",
                c.host_ns(h),
                "taskset",
                "-c",
                ",".join(map(str, cores[h])),
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={hosts}",
                f"--nproc-per-node={ranks_per_host}",
                f"--node-rank={h}",
                f"--master-addr={c.address(0)}",
                f"--master-port={port}",
                f"--local-addr={c.address(h)}",
                "--max-restarts=0",
                "-m",
                *entry,
                *train_args,
            ]
            procs.append(subprocess.Popen(cmd, env=env, stdout=None if h == 0 else subprocess.DEVNULL))
        codes = _wait_all(procs)
        links = link_bytes(c)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        destroy(c)
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = {h: code for h, code in enumerate(codes) if code != 0}
    if failed:
        raise RuntimeError(f"emulated hosts failed (host: exit code): {failed}")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["link_bytes"] = links
    summary["emulation"] = {
        "hosts": hosts,
        "ranks_per_host": ranks_per_host,
        "cross_host_mbit": mbit,
        "burst_bytes": c.burst_bytes,
        "queue_ms": queue_ms,
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def _wait_all(procs: list[subprocess.Popen], poll_s: float = 0.5) -> list[int]:
    """Wait for every host; when one fails, stop the others. -> exit codes"""
    import time

    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        if any(c not in (None, 0) for c in codes):
            time.sleep(5)  # let the others notice and report the lost peer themselves
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            return [p.wait() for p in procs]
        time.sleep(poll_s)
