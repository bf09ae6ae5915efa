"""Seconds per training step from per-rank traffic (traffic.py) and a cluster (presets.py).

One all-to-all call, one rank, one tier (intra-host over NVLink, cross-host over the NIC):

    t_tier = lat_tier + n_tier * mu_tier + bytes_tier / bw_tier        (0 when n_tier = 0)
    t_call = max(t_intra, t_cross)          both tiers drain at once; the call ends with the slower

    lat_tier   cluster latency of one call (4 us NCCL send/recv intra-node, 25 us small multi-node
               collectives; presets.py)
    mu_tier    per-message (per-peer) overhead; equivalently a message-size efficiency
               eta(s) = s / (s + mu * bw), i.e. half the bandwidth at s_half = mu * bw bytes
    bw_intra   cluster.intra_gbps
    bw_cross   cluster.nic_gbps * g(H),  g(H) = g_inf + (1 - g_inf) / (H - 1)  (1 at H <= 2)
               (times the wire's payload share; with a shared host link, host_link_gbps, and the
               bytes of all the host's ranks in the call: the emulator's hosts have one link each;
               a token-bucket link, burst_bytes > 0, passes that many bytes of a call at once;
               the two-tier emulator's rank link, cross_via_intra, carries the call's cross-host
               bytes too, so there t_intra counts intra + cross bytes)

Why g falls only mildly: the "2x NIC at 2 nodes toward 1x at many nodes" of published all-to-all
measurements (docs/cost_model.md) is nccl-tests
bus bandwidth, which counts every byte; at H hosts of L GPUs only (W - L) / (W - 1) of them cross
a NIC, so a NIC-bound all-to-all shows busbw = NIC * (W - 1) / (W - L): 1.9x at 2x8, -> 1x at scale.
This model keeps intra bytes on NVLink, so that curve falls out of the accounting
(`alltoall_busbw`); g(H) adds the fabric congestion of many hosts on top (ours, g_inf = 0.85).
mu_cross = 2 us is calibrated on a published measurement, 64 x H800 (8 x 8, ~48 GB/s NICs) at
128 KB per peer: 24-28 GB/s busbw; the model gives 26.4 (s_half = 2 us * 48 GB/s * g(8) = 84 KB).
mu_intra = 0.5 us is ours (s_half = 185 KB on H100 NVLink).

A step runs its calls one after another and every call waits for its slowest member:

    alltoall_s  = sum over calls of max over ranks of t_call = forward_s + backward_s
    allreduce_s = max over ranks of sum of its ring all-reduces:
                  lat + 2 (n - 1) / n * bytes / bw,  bw = NIC if the group spans hosts else NVLink
                  the head's ("dense") runs beside the backward's exchanges, the Tower Modules' after
    comm_s      = forward_s + max(backward_s, head all-reduce, both on the most loaded cross-host
                  link together) + Tower Module all-reduces

    input_s     the forward's input (id) exchange calls (counts and ids) inside alltoall_s
    exposed_s   what the step waits for: comm_s, less input_s when the step is pipelined
                (train.pipeline: the next batch's ids cross while this batch computes; comm_s
                stays the time with a collective in flight, since the ids still use the links)

Precision: the widths on the wire are in the traffic (dist.comm_precision, allreduce_precision).
This is communication alone; step.py adds the compute (compute.py) and the overlaps between them.
Not modelled: load imbalance other than through the per-rank maxima above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from dmt.cost.presets import Cluster
from dmt.cost.traffic import AllReduce, ModeTraffic, PhaseTraffic, is_input_phase

GB = 1e9


@dataclass(frozen=True)
class TimingModel:
    """The free parameters (calibrate them with the emulator benchmark)."""

    per_message_intra_s: float = 0.5e-6  # ours
    per_message_cross_s: float = 2.0e-6  # fits 64 x H800 at 128 KB/peer: 24-28 GB/s busbw
    fabric_floor: float = 0.85  # g_inf: cross-host efficiency of an all-to-all over many hosts (ours)


def fabric_efficiency(model: TimingModel, hosts: int) -> float:
    """g(H) = g_inf + (1 - g_inf) / (H - 1), 1 for H <= 2."""
    if hosts <= 2:
        return 1.0
    return model.fabric_floor + (1.0 - model.fabric_floor) / (hosts - 1)


def tier_time(nbytes: float, messages: int, latency: float, per_message: float, bandwidth: float) -> float:
    """lat + n * mu + bytes / bw, or 0 without messages. bandwidth in bytes/s."""
    if messages == 0:
        return 0.0
    return latency + messages * per_message + nbytes / bandwidth


def call_times(p: PhaseTraffic, cluster: Cluster, model: TimingModel, hosts: int) -> tuple[float, float]:
    """(intra, cross) seconds of one all-to-all call for one rank."""
    own_link = p.intra_bytes + (p.cross_bytes if cluster.cross_via_intra else 0.0)
    intra = tier_time(
        max(0.0, own_link - cluster.intra_burst_bytes),
        p.intra_messages + (p.cross_messages if cluster.cross_via_intra else 0),
        cluster.latency_intra_s,
        model.per_message_intra_s,
        cluster.intra_gbps * GB,
    )
    cross_bw = cross_bandwidth(cluster, model, hosts)
    paced = max(0.0, p.cross_bytes - cluster.burst_bytes)  # a token bucket lets its depth through at once
    cross = tier_time(paced, p.cross_messages, cluster.latency_cross_s, model.per_message_cross_s, cross_bw)
    return intra, cross


def cross_bandwidth(cluster: Cluster, model: TimingModel, hosts: int) -> float:
    """Payload bytes/s of one cross-host link: a GPU's NIC, or (host_link_gbps) the host's link."""
    line = cluster.host_link_gbps if cluster.host_link_gbps is not None else cluster.nic_gbps
    return line * GB * cluster.wire_efficiency * fabric_efficiency(model, hosts)


def allreduce_time(a: AllReduce, cluster: Cluster) -> float:
    """Ring all-reduce: lat + 2 (n - 1) / n * bytes / bw. A ring in rank order crosses each host
    boundary on one edge per direction, so a shared host link carries one edge's bytes."""
    if a.size <= 1 or a.bytes <= 0:
        return 0.0
    cross = a.hosts > 1
    bw = cross_bandwidth(cluster, TimingModel(), 2) if cross else cluster.intra_gbps * GB
    lat = cluster.latency_cross_s if cross else cluster.latency_intra_s
    return lat + 2.0 * (a.size - 1) / a.size * a.bytes / bw


def alltoall_busbw(
    cluster: Cluster, model: TimingModel, hosts: int, ranks_per_host: int, bytes_per_peer: float
) -> float:
    """nccl-tests bus bandwidth (GB/s) the model predicts for a uniform all-to-all of W = H * L
    ranks with `bytes_per_peer` to every rank: busbw = (W - 1) * s / t."""
    world = hosts * ranks_per_host
    p = PhaseTraffic(
        "alltoall",
        False,
        (ranks_per_host - 1) * bytes_per_peer,
        (world - ranks_per_host) * bytes_per_peer,
        ranks_per_host - 1,
        world - ranks_per_host,
        world * bytes_per_peer,
        world * bytes_per_peer,
    )
    t = max(call_times(p, cluster, model, hosts))
    return (world - 1) * bytes_per_peer / t / GB


def rank_flops(traffic: ModeTraffic) -> list[float]:
    """Forward FLOPs of the dense part on every rank: the head on its B samples, plus the Tower
    Modules it runs (flat: all of them on B samples; SPTT: its host's on the rail's H * B)."""
    plan, w = traffic.plan, traffic.workload
    layout, b, shape = plan.layout, w.batch_size, w.shape
    if plan.mode == "flat":
        return [b * (shape.head_flops + sum(shape.tower_flops))] * layout.world
    out = []
    for r in range(layout.world):
        mine = plan.towers_on(layout.host_of(r))
        out.append(b * shape.head_flops + layout.hosts * b * sum(shape.tower_flops[t] for t in mine))
    return out


def _host_cross_bytes(traffic: ModeTraffic) -> dict[tuple[int, str], float]:
    """(host, phase) -> cross-host bytes all of the host's ranks send in that call."""
    out: dict[tuple[int, str], float] = {}
    for rank in traffic.ranks:
        h = traffic.plan.layout.host_of(rank.rank)
        for p in rank.phases:
            out[(h, p.phase)] = out.get((h, p.phase), 0.0) + p.cross_bytes
    return out


def _allreduce_s(traffic: ModeTraffic, cluster: Cluster, counts: Callable[[str], bool]) -> float:
    """Max over ranks of the summed time of its all-reduces whose group `counts`."""
    per_rank = (sum(allreduce_time(a, cluster) for a in r.allreduces if counts(a.group)) for r in traffic.ranks)
    return max(per_rank, default=0.0)


def _shared_link_s(traffic: ModeTraffic, cluster: Cluster, model: TimingModel) -> float:
    """Seconds the backward's cross-host bytes and the head all-reduce's take on one link together
    (they run side by side): per host link, or per GPU NIC, the most loaded one."""
    layout = traffic.plan.layout
    load: dict[int, float] = {}
    for r in traffic.ranks:
        key = layout.host_of(r.rank) if cluster.host_link_gbps is not None else r.rank
        load[key] = load.get(key, 0.0) + sum(p.cross_bytes for p in r.phases if p.backward)
        for a in r.allreduces:
            if a.group == "dense" and a.hosts > 1 and (cluster.host_link_gbps is None or layout.local_of(r.rank) == 0):
                load[key] += 2.0 * (a.size - 1) / a.size * a.bytes  # a ring: one edge per host (or NIC)
    return max(load.values(), default=0.0) / cross_bandwidth(cluster, model, layout.hosts)


@dataclass(frozen=True)
class ModeTiming:
    """Predicted seconds per step of one mode (see the module docstring for the sums)."""

    mode: str
    calls: dict[str, float] = field(default_factory=dict)  # phase -> the slowest rank's seconds
    intra_s: float = 0.0  # sum over calls of the slowest rank's intra-host tier time
    cross_s: float = 0.0  # same, cross-host tier
    forward_s: float = 0.0  # all-to-all seconds of forward calls
    backward_s: float = 0.0  # and of backward (gradient) calls
    alltoall_s: float = 0.0
    allreduce_s: float = 0.0
    comm_s: float = 0.0
    beside_s: float = 0.0  # the head's all-reduce (beside the backward's exchanges)
    together_s: float = 0.0  # the backward's cross-host bytes and the head's all-reduce on one link
    after_s: float = 0.0  # the Tower Modules' all-reduces (after the backward)
    input_s: float = 0.0  # the input (id) exchange's calls, part of forward_s
    pipelined: bool = False

    @property
    def exposed_s(self) -> float:
        """Communication the step waits for: the input exchange hides behind compute when pipelined."""
        return self.comm_s - self.input_s if self.pipelined else self.comm_s

    def as_dict(self) -> dict:
        return {
            "comm_s": self.comm_s,
            "alltoall_s": self.alltoall_s,
            "allreduce_s": self.allreduce_s,
            "intra_s": self.intra_s,
            "cross_s": self.cross_s,
            "forward_s": self.forward_s,
            "backward_s": self.backward_s,
            "input_s": self.input_s,
            "exposed_s": self.exposed_s,
            "calls_s": dict(self.calls),
        }


def mode_timing(
    traffic: ModeTraffic, cluster: Cluster, model: TimingModel | None = None, pipelined: bool = False
) -> ModeTiming:
    model = model or TimingModel()
    hosts = traffic.plan.layout.hosts
    calls: dict[str, float] = {}
    intra: dict[str, float] = {}
    cross: dict[str, float] = {}
    backward: dict[str, bool] = {}
    host_tx = _host_cross_bytes(traffic) if cluster.host_link_gbps is not None else None
    for rank in traffic.ranks:
        for p in rank.phases:
            if host_tx is not None:  # the host's ranks send through one link at once
                p = dataclasses.replace(p, cross_bytes=host_tx[(traffic.plan.layout.host_of(rank.rank), p.phase)])
            ti, tc = call_times(p, cluster, model, hosts)
            calls[p.phase] = max(calls.get(p.phase, 0.0), ti, tc)
            intra[p.phase] = max(intra.get(p.phase, 0.0), ti)
            cross[p.phase] = max(cross.get(p.phase, 0.0), tc)
            backward[p.phase] = p.backward
    alltoall = sum(calls.values())
    forward = sum(t for p, t in calls.items() if not backward[p])
    backward_s = alltoall - forward
    allreduce = _allreduce_s(traffic, cluster, lambda group: True)
    beside = _allreduce_s(traffic, cluster, lambda group: group == "dense")
    after = _allreduce_s(traffic, cluster, lambda group: group != "dense")
    together = _shared_link_s(traffic, cluster, model)
    comm = forward + max(backward_s, beside, together) + after
    return ModeTiming(
        mode=traffic.mode,
        calls=calls,
        intra_s=sum(intra.values()),
        cross_s=sum(cross.values()),
        forward_s=forward,
        backward_s=backward_s,
        alltoall_s=alltoall,
        allreduce_s=allreduce,
        comm_s=comm,
        beside_s=beside,
        together_s=together,
        after_s=after,
        input_s=sum(t for p, t in calls.items() if is_input_phase(p)),
        pipelined=pipelined,
    )
