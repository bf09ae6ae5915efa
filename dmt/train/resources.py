"""What a run used of the machine: the process's peak resident memory, and the bytes its host's
network interfaces carried (read from the kernel's counters, for emulated clusters).

`dmt emulate` names the rank's shaped interface in DMT_LINK_IFACE; the first rank of each host
reads its counters when the timed training loop starts and ends, so that the bytes the wire
carried during training alone can be set beside the run's own counters. With two tiers of links
it also names, in DMT_HOST_NETDEV, a `/proc/<pid>/net/dev` of a process in the host's switch
namespace: there the host's uplink (`uplink`) carries what the host's ranks send to other hosts, and
the ports `r<l>` receive everything rank l sends (to its own host and beyond).
"""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

LINK_ENV = "DMT_LINK_IFACE"
HOST_NETDEV_ENV = "DMT_HOST_NETDEV"
LINK_KEYS = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory (Linux reports it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def link_counters() -> dict[str, int] | None:
    """The kernel's counters of the interface named in DMT_LINK_IFACE, or None when unset; with
    DMT_HOST_NETDEV also the host's uplink (uplink_*) and the sums over its rank ports (ports_*:
    ports_rx_bytes is what the host's ranks sent)."""
    iface = os.environ.get(LINK_ENV)
    if not iface:
        return None
    stats = Path("/sys/class/net") / iface / "statistics"
    out = {key: int((stats / key).read_text()) for key in LINK_KEYS}
    netdev = os.environ.get(HOST_NETDEV_ENV)
    if netdev:
        devices = parse_netdev(Path(netdev).read_text())
        out.update({f"uplink_{k}": v for k, v in devices["uplink"].items()})
        ports = [v for name, v in devices.items() if re.fullmatch(r"r\d+", name)]
        out.update({f"ports_{k}": sum(p[k] for p in ports) for k in LINK_KEYS})
    return out


def parse_netdev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev -> {interface: {tx_bytes, rx_bytes, tx_packets, rx_packets}}."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, fields = line.partition(":")
        v = [int(x) for x in fields.split()]
        out[name.strip()] = {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8], "tx_packets": v[9]}
    return out


def link_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in after}
