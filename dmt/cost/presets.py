"""Cluster presets: per-GPU bandwidths, one direction, latencies and memory.

    preset  intra-host fabric (achieved)              NIC per GPU         peak dense bf16       memory
    v100    NVLink2 cube mesh, 150 line -> 80 GB/s    6.25 GB/s (EDR)     125 TFLOP/s (fp16)    32 GB
    a100    NVLink3 300 line -> 235 GB/s              25 GB/s (HDR)       312 TFLOP/s           80 GB
    h100    NVLink4 450 line -> 370 GB/s              48 GB/s (NDR, measured 48-49 of 50)   989 TFLOP/s   80 GB

Sources: the NVLink generations' and InfiniBand EDR / HDR / NDR line rates for the fabrics and
NICs (achieved rates as in the table); NVIDIA's V100 / A100 / H100 SXM datasheets for the peak
tensor-core rates and the memory (V100 SXM2 32 GB, A100 and H100 SXM 80 GB, taken as 1e9-byte
GB). The V100 achieved rate is ours: DGX-1's cube mesh links each GPU directly to 4 of its 7
peers, so an all-to-all sends about 3/7 of its bytes over two hops; we take about 55% of the
150 GB/s line rate.

Latencies: NCCL send/recv about 4 us inside a node; small multi-node collectives about 25 us.
timing.py charges them once per all-to-all call on that tier.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dmt.errors import UserError


@dataclass(frozen=True)
class Cluster:
    """One GPU's view of the cluster. GB/s = 1e9 bytes per second, one direction."""

    name: str
    intra_gbps: float  # achieved all-to-all bandwidth per GPU inside a host (NVLink)
    nic_gbps: float  # NIC bandwidth per GPU (an all-to-all cannot use a neighbour's NIC)
    latency_intra_s: float = 4e-6  # fixed cost of one intra-host all-to-all call
    latency_cross_s: float = 25e-6  # fixed cost of one all-to-all call that crosses hosts
    peak_tflops: float | None = None  # dense-part peak; None: compute time is not predicted
    # One cross-host link per host, shared by its ranks (hosts with one Ethernet NIC, the emulator),
    # in GB/s of line rate; None: every GPU has its own NIC of nic_gbps (the presets).
    host_link_gbps: float | None = None
    wire_efficiency: float = 1.0  # payload share of the cross-host line rate (TCP/IP: 1448 / 1514)
    # bytes a cross-host link lets through at once after a pause: a token bucket's depth (the
    # emulator's tbf burst); 0 for a real wire, which is never faster than its rate
    burst_bytes: float = 0.0
    memory_gb: float | None = None  # memory per GPU the planner fits tables into; None: no limit known

    def __post_init__(self) -> None:
        for key in ("intra_gbps", "nic_gbps"):
            if getattr(self, key) <= 0:
                raise UserError(f"cluster {key} must be > 0, got {getattr(self, key)}")
        for key in ("latency_intra_s", "latency_cross_s"):
            if getattr(self, key) < 0:
                raise UserError(f"cluster {key} must be >= 0, got {getattr(self, key)}")
        if self.host_link_gbps is not None and self.host_link_gbps <= 0:
            raise UserError(f"cluster host_link_gbps must be > 0 or unset, got {self.host_link_gbps}")
        if self.burst_bytes < 0:
            raise UserError(f"cluster burst_bytes must be >= 0, got {self.burst_bytes}")
        if not 0 < self.wire_efficiency <= 1:
            raise UserError(f"cluster wire_efficiency must be in (0, 1], got {self.wire_efficiency}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError(f"cluster peak_tflops must be > 0 or unset, got {self.peak_tflops}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise UserError(f"cluster memory_gb must be > 0 or unset, got {self.memory_gb}")


PRESETS: dict[str, Cluster] = {
    "v100": Cluster("v100", intra_gbps=80.0, nic_gbps=6.25, peak_tflops=125.0, memory_gb=32.0),
    "a100": Cluster("a100", intra_gbps=235.0, nic_gbps=25.0, peak_tflops=312.0, memory_gb=80.0),
    "h100": Cluster("h100", intra_gbps=370.0, nic_gbps=48.0, peak_tflops=989.0, memory_gb=80.0),
}


TCP_PAYLOAD_SHARE = 1448 / 1514  # a full 1500-byte-MTU frame: Ethernet 14 + IPv4 20 + TCP 32 (timestamps)


def emulated(
    mbit: float, loopback_gbps: float, latency_intra_s: float, latency_cross_s: float, burst_bytes: float = 0.0
) -> Cluster:
    """`dmt emulate`'s cluster: each host's ranks share one tbf-shaped link of `mbit`, TCP over
    Ethernet frames; inside a host, loopback. Bandwidth and latencies come from a calibration run
    (benchmarks/emulated/calibrate.py), not from a training run."""
    return Cluster(
        "emulated",
        intra_gbps=loopback_gbps,
        nic_gbps=mbit / 8e3,
        latency_intra_s=latency_intra_s,
        latency_cross_s=latency_cross_s,
        host_link_gbps=mbit / 8e3,
        wire_efficiency=TCP_PAYLOAD_SHARE,
        burst_bytes=burst_bytes,
    )


def cluster(preset: str, **overrides: float | str | None) -> Cluster:
    """A preset, optionally with some fields replaced: cluster("h100", nic_gbps=25.0)."""
    if preset not in PRESETS:
        raise UserError(f"unknown cluster preset '{preset}'; allowed: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Cluster)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown cluster field(s) {unknown}; allowed: {', '.join(sorted(fields - {'name'}))}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def parse_overrides(items: list[str]) -> dict[str, float | None]:
    """`KEY=VALUE` strings (CLI --cluster) -> overrides for `cluster`; `peak_tflops=none` and
    `memory_gb=none` unset them."""
    out: dict[str, float | None] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--cluster expects key=value, got '{item}'")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in ("peak_tflops", "memory_gb") and text.lower() == "none":
            out[key] = None
            continue
        try:
            out[key] = float(text)
        except ValueError:
            raise UserError(f"--cluster {key}: '{text}' is not a number") from None
    return out
