"""What a run used of the machine: the process's peak resident memory, and the bytes its host's
network interface carried (read from the kernel's counters, for emulated clusters).

`dmt emulate` names the host's shaped interface in DMT_LINK_IFACE; the first rank of each host
reads its counters when the timed training loop starts and ends, so that the bytes the wire
carried during training alone can be set beside the run's own counters.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

LINK_ENV = "DMT_LINK_IFACE"
LINK_KEYS = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory (Linux reports it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def link_counters() -> dict[str, int] | None:
    """The kernel's counters of the interface named in DMT_LINK_IFACE, or None when unset."""
    iface = os.environ.get(LINK_ENV)
    if not iface:
        return None
    stats = Path("/sys/class/net") / iface / "statistics"
    return {key: int((stats / key).read_text()) for key in LINK_KEYS}


def link_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in LINK_KEYS}
