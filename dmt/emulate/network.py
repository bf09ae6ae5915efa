"""The emulated network: namespaces, bridges, shaped links, their counters, tear-down.

One tier (`intra_host_mbit` None, as before): each host is a namespace with one address that its
ranks share, so traffic between ranks of a host rides that namespace's loopback; each host's link
into the switch is shaped to `cross_host_mbit` in both directions.

    netns <tag>h0 (host 0)           netns <tag>sw (switch)          netns <tag>h1 (host 1)
    ranks --- veth e0 ==tbf==> [ p0  bridge br0  p1 ] <==tbf== veth e0 --- ranks
    10.X.Y.1                                                               10.X.Y.2

Two tiers (`intra_host_mbit` set): every rank is a namespace of its own with a shaped link into
its host's switch (a bridge in the host's namespace), and every host has a shaped uplink into
the switch between hosts. Traffic inside a host crosses two rank links (the sender's, then the
receiver's); traffic between hosts crosses both rank links and both hosts' uplinks.

    netns <tag>h0r0 --e0 ==R_in==> r0 [br0 in netns <tag>h0] up ==R_out==> p0 [br0 in <tag>sw] ...
    netns <tag>h0r1 --e0 ==R_in==> r1 /

An outage takes a host's port on the switch down. With `faults` (packet loss), each shaped link
has a netem qdisc in front of its token bucket (no delay, no loss until a fault sets it); kernels
without netem (sch_netem) cannot lose packets at random, and `has_netem` says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFIX = "dmt"
# Above about 400 Mbit/s per link, tbf on this machine's veths stops delivering its rate (the
# kernel's softirq work competes with the ranks for the same cores).
MAX_MBIT = 400
UPLINK = "uplink"  # a host's link into the switch between hosts (two tiers)


@dataclass(frozen=True)
class EmulatedCluster:
    hosts: int
    ranks_per_host: int
    cross_host_mbit: float  # a host's link (one tier) or uplink (two tiers), each direction
    tag: str  # unique per emulator process: its pid
    queue_ms: float = 100.0  # how long a packet may wait in a link's queue before it is dropped
    intra_host_mbit: float | None = None  # each rank's link into its host's switch; None: one tier
    faults: bool = False  # netem before each token bucket, for packet loss

    @property
    def two_tier(self) -> bool:
        return self.intra_host_mbit is not None

    @property
    def world(self) -> int:
        return self.hosts * self.ranks_per_host

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.tag}sw"

    def host_ns(self, h: int) -> str:
        return f"{PREFIX}{self.tag}h{h}"

    def rank_ns(self, h: int, local: int) -> str:
        """Where rank (h, local) runs: its own namespace (two tiers) or its host's."""
        return f"{self.host_ns(h)}r{local}" if self.two_tier else self.host_ns(h)

    def address(self, h: int, local: int = 0) -> str:
        """The address of rank (h, local) (one tier: of host h). A test subnet held only by these
        namespaces; the tag keeps concurrent emulators apart."""
        n = h * self.ranks_per_host + local if self.two_tier else h
        # three digits in the last byte, so that torchrun's rendezvous, which orders the nodes by
        # their address as text, numbers them as we do
        return f"10.{200 + int(self.tag) % 50}.{int(self.tag) // 50 % 250}.{100 + n}"

    def host_link(self, h: int) -> list[tuple[str, str]]:
        """(device, namespace) of both directions of host h's link to the other hosts."""
        near = (UPLINK, self.host_ns(h)) if self.two_tier else ("e0", self.host_ns(h))
        return [near, (f"p{h}", self.switch)]

    @property
    def burst_bytes(self) -> int:
        return burst_bytes(self.cross_host_mbit)

    @property
    def intra_burst_bytes(self) -> int:
        return burst_bytes(self.intra_host_mbit) if self.intra_host_mbit else 0


def burst_bytes(mbit: float) -> int:
    """Token bucket depth: about 3 ms at the shaped rate, at least a few full frames."""
    return max(int(mbit * 1e6 / 8 * 0.003), 16 * 1514)


def run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {r.stderr.strip()}")
    return r


def remove_stale() -> list[str]:
    """Delete namespaces of emulators whose process is gone. -> names removed"""
    names = [line.split()[0] for line in run("ip", "netns", "list", check=False).stdout.splitlines() if line]
    removed = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        digits = name[len(PREFIX) :].split("h")[0].split("sw")[0]
        if digits.isdigit() and not Path(f"/proc/{int(digits)}").exists():
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def create(c: EmulatedCluster) -> None:
    run("ip", "netns", "add", c.switch)
    _bridge(c.switch)
    for h in range(c.hosts):
        ns = c.host_ns(h)
        run("ip", "netns", "add", ns)
        run("ip", "link", "set", "lo", "up", ns=ns)
        if not c.two_tier:
            _veth("e0", ns, f"p{h}", c.switch)
            _address(c, h, 0, ns)
        else:
            _bridge(ns)
            _veth(UPLINK, ns, f"p{h}", c.switch)
            run("ip", "link", "set", "dev", UPLINK, "master", "br0", ns=ns)
            for local in range(c.ranks_per_host):
                rns = c.rank_ns(h, local)
                run("ip", "netns", "add", rns)
                run("ip", "link", "set", "lo", "up", ns=rns)
                _veth("e0", rns, f"r{local}", ns)
                run("ip", "link", "set", f"r{local}", "master", "br0", ns=ns)
                _address(c, h, local, rns)
                for dev, where in (("e0", rns), (f"r{local}", ns)):
                    shape(dev, where, c.intra_host_mbit, c.intra_burst_bytes, c.queue_ms, c.faults)
        run("ip", "link", "set", f"p{h}", "master", "br0", ns=c.switch)
        for dev, where in c.host_link(h):  # shape both directions
            shape(dev, where, c.cross_host_mbit, c.burst_bytes, c.queue_ms, c.faults)


def _bridge(ns: str) -> None:
    run("ip", "link", "add", "br0", "type", "bridge", ns=ns)
    run("ip", "link", "set", "br0", "up", ns=ns)


def _veth(name: str, ns: str, peer: str, peer_ns: str) -> None:
    run("ip", "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer, "netns", peer_ns)
    run("ip", "link", "set", "dev", name, "up", ns=ns)
    run("ip", "link", "set", "dev", peer, "up", ns=peer_ns)


def _address(c: EmulatedCluster, h: int, local: int, ns: str) -> None:
    run("ip", "addr", "add", f"{c.address(h, local)}/24", "dev", "e0", ns=ns)


def shape(dev: str, ns: str, mbit: float, burst: int, queue_ms: float, netem: bool = False) -> None:
    """A token bucket at `mbit` on the egress of `dev`; a packet waits at most `queue_ms`, then drops.

    A deep queue (the default 100 ms) loses nothing and only delays, like a lossless fabric
    that pauses senders; a shallow one drops bursts, like an Ethernet switch with little buffer,
    and TCP then waits out retransmission timeouts. `netem`: a netem qdisc first (handle 1:, no
    loss), the token bucket below it, so that `set_loss` can drop packets."""
    tbf = ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", f"{queue_ms}ms"]
    if not netem:
        run("tc", "qdisc", "add", "dev", dev, "root", *tbf, ns=ns)
        return
    run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "limit", "100000", "loss", "0%", ns=ns)
    run("tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf, ns=ns)


def set_host_link(c: EmulatedCluster, h: int, up: bool) -> None:
    """Cut (or restore) host h's link to the other hosts, as a pulled cable would: its port on the
    switch goes down, so frames in both directions are lost; the token buckets stay configured."""
    run("ip", "link", "set", "dev", f"p{h}", "up" if up else "down", ns=c.switch)


def has_netem() -> bool:
    """Whether this kernel has the netem qdisc (sch_netem), which packet loss needs."""
    probe = f"{PREFIX}netemprobe{os.getpid()}"
    run("ip", "netns", "add", probe)
    try:
        return (
            run("tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", "0%", ns=probe, check=False).returncode == 0
        )
    finally:
        run("ip", "netns", "del", probe, check=False)


def set_loss(dev: str, ns: str, percent: float) -> None:
    """Drop `percent` of the packets leaving `dev`; needs a cluster with faults (netem)."""
    netem = ["netem", "limit", "100000", "loss", f"{percent}%"]
    run("tc", "qdisc", "change", "dev", dev, "root", "handle", "1:", *netem, ns=ns)


def read_counters(dev: str, ns: str) -> dict[str, int]:
    stats = {}
    for key in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets"):
        stats[key] = int(run("cat", f"/sys/class/net/{dev}/statistics/{key}", ns=ns).stdout)
    return stats


def link_bytes(c: EmulatedCluster) -> list[dict]:
    """Bytes each host's link to the other hosts carried (kernel counters; two tiers: its uplink)."""
    dev, _ = c.host_link(0)[0]
    return [{"host": h, **read_counters(dev, c.host_ns(h))} for h in range(c.hosts)]


def rank_link_bytes(c: EmulatedCluster) -> list[dict]:
    """Two tiers: bytes each rank's link into its host's switch carried (its e0)."""
    return [
        {"rank": h * c.ranks_per_host + local, "host": h, "local": local, **read_counters("e0", c.rank_ns(h, local))}
        for h in range(c.hosts)
        for local in range(c.ranks_per_host)
    ]


def namespaces(c: EmulatedCluster) -> list[str]:
    ranks = [c.rank_ns(h, local) for h in range(c.hosts) for local in range(c.ranks_per_host)] if c.two_tier else []
    return ranks + [c.host_ns(h) for h in range(c.hosts)] + [c.switch]


def destroy(c: EmulatedCluster) -> None:
    for name in namespaces(c):
        pids = run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", name, check=False)


def host_cores(hosts: int) -> list[list[int]]:
    """The CPU cores each emulated host runs on: the machine's cores split evenly, so that hosts
    compute side by side as real hosts do instead of taking turns on shared cores. With more
    hosts than cores, hosts share cores round-robin."""
    cores = sorted(os.sched_getaffinity(0))
    if hosts >= len(cores):
        return [[cores[h % len(cores)]] for h in range(hosts)]
    per = len(cores) // hosts
    return [cores[h * per : (h + 1) * per] for h in range(hosts)]
