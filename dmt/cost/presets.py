"""Cluster presets: per-GPU bandwidths (one direction), latencies, memory and the compute side of a GPU.

    preset  intra-host fabric (achieved)          NIC per GPU            peak dense bf16   HBM         memory
    v100    NVLink2 cube mesh, 150 line -> 80 GB/s 6.25 GB/s (EDR)       125 TFLOP/s (fp16) 900 GB/s   32 GB
    a100    NVLink3 300 line -> 235 GB/s          25 GB/s (HDR)          312 TFLOP/s       2039 GB/s  80 GB
    h100    NVLink4 450 line -> 370 GB/s          48 GB/s (NDR, 48-49 measured) 989 TFLOP/s  3350 GB/s  80 GB

Sources and reasoning are in docs/cost_model.md: NVIDIA's V100 / A100 (80 GB) / H100 SXM
datasheets for the line rates, peak tensor-core rates, memory bandwidths and sizes (V100 SXM2
32 GB, A100 and H100 SXM 80 GB, taken as 1e9-byte GB); the achieved NVLink
all-to-all rates are 80% of the line rate (H100, A100) and about 55% on V100, whose cube mesh
links each GPU directly to 4 of its 7 peers, so that an all-to-all sends about 3/7 of its bytes
over two hops. Latencies: about 4 us for an NCCL send/recv inside a node, about 25 us for a small
collective across nodes; timing.py charges them once per all-to-all call on that tier.

Compute (compute.py) assumes the dense part runs in bf16 on tensor cores at 35% of peak and
embedding rows move at 50% of the memory bandwidth (our estimates, docs/cost_model.md), with
operator launches hidden (fused table kernels, CUDA graphs) and the batch prefetched.
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
    # two-tier emulator: a rank's cross-host bytes also pass its own link into the host's switch
    # (one veth per rank), so that link carries both tiers; False for GPUs (NVLink and NIC apart)
    cross_via_intra: bool = False
    intra_burst_bytes: float = 0.0  # the rank link's token bucket depth (two-tier emulator)
    # the compute side of one rank (dmt/cost/compute.py); memory_gbps None: compute not predicted
    memory_gbps: float | None = None  # memory bandwidth, GB/s
    memory_efficiency: float = 0.5  # achieved share on embedding rows (random rows of d floats; ours)
    dense_efficiency: float = 0.35  # achieved share of peak_tflops in the MLPs and Tower Modules (ours)
    op_s: float = 0.0  # host seconds per operator launched (0: hidden behind the device)
    data_s_per_sample: float = 0.0  # making the batch (0: a loader prefetches it)
    cores_shared: float = 1.0  # ranks taking turns on one core (the emulator on a small machine)
    # CPU seconds per step a sharded rank spends beyond the terms above (the exchanges' packing,
    # collective launches, gradient buckets), measured on loopback (calibrate.py); 0 for GPUs
    host_s: float = 0.0
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
        if self.memory_gbps is not None and self.memory_gbps <= 0:
            raise UserError(f"cluster memory_gbps must be > 0 or unset, got {self.memory_gbps}")
        for key in ("memory_efficiency", "dense_efficiency"):
            if not 0 < getattr(self, key) <= 1:
                raise UserError(f"cluster {key} must be in (0, 1], got {getattr(self, key)}")
        for key in ("op_s", "data_s_per_sample", "intra_burst_bytes"):
            if getattr(self, key) < 0:
                raise UserError(f"cluster {key} must be >= 0, got {getattr(self, key)}")
        if self.cores_shared < 1:
            raise UserError(f"cluster cores_shared must be >= 1, got {self.cores_shared}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise UserError(f"cluster memory_gb must be > 0 or unset, got {self.memory_gb}")


PRESETS: dict[str, Cluster] = {
    "v100": Cluster("v100", intra_gbps=80.0, nic_gbps=6.25, peak_tflops=125.0, memory_gbps=900.0, memory_gb=32.0),
    "a100": Cluster("a100", intra_gbps=235.0, nic_gbps=25.0, peak_tflops=312.0, memory_gbps=2039.0, memory_gb=80.0),
    "h100": Cluster("h100", intra_gbps=370.0, nic_gbps=48.0, peak_tflops=989.0, memory_gbps=3350.0, memory_gb=80.0),
}


TCP_PAYLOAD_SHARE = 1448 / 1514  # a full 1500-byte-MTU frame: Ethernet 14 + IPv4 20 + TCP 32 (timestamps)


def emulated(
    mbit: float,
    loopback_gbps: float,
    latency_intra_s: float,
    latency_cross_s: float,
    burst_bytes: float = 0.0,
    intra_mbit: float | None = None,
    intra_burst_bytes: float = 0.0,
) -> Cluster:
    """`dmt emulate`'s cluster: each host's ranks share one tbf-shaped link (two tiers: uplink) of
    `mbit`, TCP over Ethernet frames. Inside a host: loopback at `loopback_gbps` (one tier), or
    (two tiers, `intra_mbit`) each rank's own shaped link, which its cross-host bytes pass too.
    Loopback bandwidth and latencies come from a calibration run (benchmarks/emulated/calibrate.py),
    not from a training run."""
    intra = loopback_gbps if intra_mbit is None else intra_mbit / 8e3 * TCP_PAYLOAD_SHARE
    return Cluster(
        "emulated",
        intra_gbps=intra,
        nic_gbps=mbit / 8e3,
        latency_intra_s=latency_intra_s,
        latency_cross_s=latency_cross_s,
        host_link_gbps=mbit / 8e3,
        wire_efficiency=TCP_PAYLOAD_SHARE,
        burst_bytes=burst_bytes,
        cross_via_intra=intra_mbit is not None,
        intra_burst_bytes=intra_burst_bytes if intra_mbit is not None else 0.0,
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
