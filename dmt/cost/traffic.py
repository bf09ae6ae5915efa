"""Exact per-step, per-rank communication of the flat and SPTT dataflows, as the counters count it.

A real run's `CommCounter` (dmt/distributed/comm.py) records, for every all-to-all, the bytes
this rank SENDS to each other member of the group (intra- or cross-host by the receiver's host),
one message per non-empty send; groups of one member are skipped. This module predicts the same
numbers from the placement (`plan_flat` / `plan_sptt`) without running anything.

One exchange over a group (dmt/distributed/ids.py), B_s = samples each member sends:

    <group>.counts               16 B (int64 [2]) to every other member, always a message
                                 (24 B, int64 [3], with dedup_ids)
    <group>.<p>                  4 * B_s * n_j              lengths; n_j: features member j serves
                                 + id_bytes * B_s * p_j     ids; p_j: sum of their pooling factors
                                 + 4 * B_s * p_j            weights, only when the batch carries them
                                 (one message: the three travel back to back; with dedup_ids the
                                 message is deduplicated and bit-packed, see dmt/cost/ids.py)
    <group>.<q>                  r * B_s * w_me             pooled rows back to every source
    <group>.<q>.grad             r * B_s * w_j              their gradient, to every server j

id_bytes = 4 when every table has < 2^31 rows, else 8; r = bytes per float on the wire (4 for
fp32, 2 for bf16 / fp16: dist.comm_precision). Ids per sample and feature = pooling factor: exact
when lengths are deterministic, the expectation otherwise.

What a member serves are exchange units (dmt/distributed/shards.py): a feature of a whole
table, or one shard of a cut table. n_j counts member j's units; a unit's ids per sample are its
feature's pooling factor, times the share of the table's rows in a row shard (exact for ids
spread evenly over the rows, the expectation otherwise); w_j sums its units' widths (a feature's
d_f, a shard's columns).

Flat (group "global", all W ranks, B_s = B):  p = "ids", q = "pooled".
SPTT, rank (h, l), R = H * B samples per rail:
    (1) "peer" (H ranks with local index l), p = "peer_ids", B_s = B, served: host g's features
    (2) "intra" (the L ranks of host h), p = "intra_ids", B_s = R
    (4) "intra", q = "intra_pooled", B_s = R
    (6) "peer", q = "peer_pooled", B_s = B, w_g = sum of host g's Tower Module output widths
Flat "table_row" tables take (1), (2), (4) and (6) too, host g serving the features of the tables
it holds and returning their widths in (6); when every table is "table_row", the "global"
exchange does not run at all.

Dense gradient all-reduce (dmt/distributed/gradsync.py, one bucket per group), payload 4 bytes per
parameter (2 with dist.allreduce_precision bf16 / fp16): flat: head + every Tower Module over the
world; SPTT: head over the world, host h's Tower Modules over its L ranks; a group of one rank adds
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dmt.cost.ids import IdUnit, message_bytes
from dmt.cost.workload import Workload
from dmt.distributed.plan import ShardingPlan, plan_flat, plan_sptt
from dmt.distributed.topology import Layout

COUNT_BYTES = 16  # int64 [2] per member: (lengths, ids) counts
DEDUP_COUNT_BYTES = 24  # int64 [3] per member: (lengths, ids, message bytes)
LENGTH_BYTES = 4  # lengths travel as int32
FLOAT_BYTES = 4  # pooled rows, gradients, weights, dense parameters: float32


def is_input_phase(phase: str) -> bool:
    """A call of the input (id) exchange: its counts or its ids (what a pipelined step runs ahead)."""
    return phase.endswith(".counts") or phase.endswith("ids")


@dataclass(frozen=True)
class PhaseTraffic:
    """One all-to-all call as seen by one rank: what it sends to the other members, by tier.

    send_buffer_bytes / recv_buffer_bytes: the whole input / output tensor of the call, this
    rank's own part included (what the call holds in memory).
    """

    phase: str
    backward: bool
    intra_bytes: float
    cross_bytes: float
    intra_messages: int
    cross_messages: int
    send_buffer_bytes: float
    recv_buffer_bytes: float

    @property
    def bytes(self) -> float:
        return self.intra_bytes + self.cross_bytes

    @property
    def messages(self) -> int:
        return self.intra_messages + self.cross_messages


@dataclass(frozen=True)
class AllReduce:
    """One dense-gradient all-reduce this rank joins: `size` ranks over `hosts` hosts."""

    group: str  # "dense" (the head, beside the backward's exchanges), "global" or "intra" (after them)
    size: int
    hosts: int
    bytes: float  # payload


@dataclass(frozen=True)
class RankTraffic:
    rank: int
    phases: tuple[PhaseTraffic, ...]
    allreduces: tuple[AllReduce, ...]

    @property
    def intra_host_bytes(self) -> float:
        return sum(p.intra_bytes for p in self.phases)

    @property
    def cross_host_bytes(self) -> float:
        return sum(p.cross_bytes for p in self.phases)

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.phases)

    @property
    def allreduce_bytes(self) -> float:
        return sum(a.bytes for a in self.allreduces)

    @property
    def by_phase(self) -> dict[str, float]:
        """phase -> bytes sent (all tiers), as `CommCounter.by_phase` (phases with bytes only)."""
        out: dict[str, float] = {}
        for p in self.phases:
            if p.bytes > 0:
                out[p.phase] = out.get(p.phase, 0.0) + p.bytes
        return out

    @property
    def by_phase_tier(self) -> dict[str, dict]:
        """phase -> intra/cross bytes, messages and direction (calls without messages left out)."""
        return {
            p.phase: {
                "intra_host_bytes": p.intra_bytes,
                "cross_host_bytes": p.cross_bytes,
                "messages": p.messages,
                "backward": p.backward,
            }
            for p in self.phases
            if p.messages > 0
        }

    def counters(self) -> dict:
        """The same keys as `CommCounter.snapshot()`."""
        return {
            "intra_host_bytes": self.intra_host_bytes,
            "cross_host_bytes": self.cross_host_bytes,
            "messages": self.messages,
            "by_phase": self.by_phase,
            "cross_host_by_phase": {p.phase: p.cross_bytes for p in self.phases if p.cross_bytes > 0},
            "allreduce_bytes": self.allreduce_bytes,
        }


@dataclass(frozen=True)
class ModeTraffic:
    """Per-rank traffic of one mode ("flat", "sptt" or "sptt_tm") on one layout."""

    mode: str
    plan: ShardingPlan
    workload: Workload
    ranks: tuple[RankTraffic, ...] = field(repr=False)

    def mean(self) -> dict:
        """Mean over ranks of every counter (what the training summary reports)."""
        n = len(self.ranks)
        totals = {"intra_host_bytes": 0.0, "cross_host_bytes": 0.0, "messages": 0.0, "allreduce_bytes": 0.0}
        by_phase: dict[str, float] = {}
        tiers: dict[str, dict] = {}
        for r in self.ranks:
            counters = r.counters()
            for k in totals:
                totals[k] += counters[k]
            for p, b in counters["by_phase"].items():
                by_phase[p] = by_phase.get(p, 0.0) + b
            for p, t in r.by_phase_tier.items():
                acc = tiers.setdefault(p, {"intra_host_bytes": 0.0, "cross_host_bytes": 0.0, "messages": 0.0})
                for k in acc:
                    acc[k] += t[k]
                acc["backward"] = t["backward"]
        return {
            **{k: v / n for k, v in totals.items()},
            "by_phase": {p: by_phase[p] / n for p in sorted(by_phase)},
            "by_phase_tier": {
                p: {k: v / n if k != "backward" else v for k, v in tiers[p].items()} for p in sorted(tiers)
            },
        }


# ---- one exchange over one group, for all its members at once -------------------------------


@dataclass(frozen=True)
class _Group:
    name: str
    members: list[int]  # global ranks, in group order
    hosts: np.ndarray  # host of each member


def _group(name: str, members: list[int], layout: Layout) -> _Group:
    return _Group(name, members, np.array([layout.host_of(m) for m in members]))


def _to_receiver(g: _Group, phase: str, backward: bool, v: np.ndarray) -> list[PhaseTraffic]:
    """Every member sends v[j] bytes to member j (the amount depends on the receiver only)."""
    v = np.broadcast_to(np.asarray(v, dtype=np.float64), g.hosts.shape)
    nz = (v > 0).astype(np.float64)
    host_sum = np.bincount(g.hosts, weights=v)[g.hosts]  # per member: bytes its host's members get
    host_nz = np.bincount(g.hosts, weights=nz)[g.hosts]
    intra, cross = host_sum - v, v.sum() - host_sum
    n_intra, n_cross = host_nz - nz, nz.sum() - host_nz
    send, recv = float(v.sum()), v * len(g.members)
    return [
        PhaseTraffic(phase, backward, a, b, int(c), int(d), send, e)
        for a, b, c, d, e in zip(
            intra.tolist(), cross.tolist(), n_intra.tolist(), n_cross.tolist(), recv.tolist(), strict=True
        )
    ]


def _from_sender(g: _Group, phase: str, backward: bool, c: np.ndarray) -> list[PhaseTraffic]:
    """Member i sends c[i] bytes to every member (the amount depends on the sender only)."""
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), g.hosts.shape)
    same = np.bincount(g.hosts)[g.hosts]  # members on each member's host
    peers_intra, peers_cross = same - 1, len(g.members) - same
    busy = c > 0
    recv = float(c.sum())
    return [
        PhaseTraffic(phase, backward, ci * pi, ci * pc, pi if bi else 0, pc if bi else 0, ci * len(g.members), recv)
        for ci, pi, pc, bi in zip(c.tolist(), peers_intra.tolist(), peers_cross.tolist(), busy.tolist(), strict=True)
    ]


def _exchange(
    g: _Group,
    ids_phase: str,
    rows_phase: str,
    samples: float,
    n_served: np.ndarray,
    pooling: np.ndarray,
    width: np.ndarray,
    id_bytes: int,
    weighted: bool,
    row_bytes: int = FLOAT_BYTES,
    dedup: np.ndarray | None = None,
) -> list[list[PhaseTraffic]]:
    """send_ids + return_rows over one group. samples: B_s, the samples each member sends
    (equal over a group); n_served, pooling, width: per member j; dedup: with dedup_ids, the
    bytes of the id message to each member j (dmt/cost/ids.py). -> per member, its phases."""
    if len(g.members) == 1:
        return [[]]
    b = float(samples)
    per_id = id_bytes + (FLOAT_BYTES if weighted else 0)
    count = float(COUNT_BYTES if dedup is None else DEDUP_COUNT_BYTES)
    ids = LENGTH_BYTES * b * n_served + per_id * b * pooling if dedup is None else dedup
    parts = [
        _to_receiver(g, f"{g.name}.counts", False, np.full(len(g.members), count)),
        _to_receiver(g, f"{g.name}.{ids_phase}", False, ids),
    ]
    parts.append(_from_sender(g, f"{g.name}.{rows_phase}", False, row_bytes * b * width))
    parts.append(_to_receiver(g, f"{g.name}.{rows_phase}.grad", True, row_bytes * b * width))
    return [list(p) for p in zip(*parts, strict=True)]


# ---- the two dataflows ---------------------------------------------------------------------------


def _served(plan: ShardingPlan, workload: Workload, features: list[str]) -> tuple[np.ndarray, ...]:
    """Per global rank, over the exchange units of `features` it serves: how many, the ids per
    sample they get (a row shard: its share of the rows times the pooling factor, ids taken as
    spread evenly over the rows) and the floats per sample they return (a shard: its columns)."""
    specs = {f.name: f for f in workload.features}
    n, p, width = (np.zeros(plan.layout.world) for _ in range(3))
    for f in features:
        spec, table = specs[f], plan.feature_table[f]
        if table in plan.shards:
            for s in plan.shards[table]:
                n[s.rank] += 1
                p[s.rank] += spec.pooling_factor * s.num_rows / spec.num_embeddings
                width[s.rank] += s.width
        else:
            r = plan.table_owner[table]
            n[r] += 1
            p[r] += spec.pooling_factor
            width[r] += workload.width(spec)
    return n, p, width


def _id_bytes(plan: ShardingPlan) -> int:
    return 4 if plan.max_rows < 2**31 else 8


def _dedup(workload: Workload, messages: list[list[IdUnit]], samples: np.ndarray | float) -> np.ndarray | None:
    """With dedup_ids: the bytes of the id message to each member j (the units `messages[j]`, for
    `samples[j]` samples)."""
    if workload.ids is None:
        return None
    samples = np.broadcast_to(np.asarray(samples, dtype=np.float64), (len(messages),))
    return np.array(
        [message_bytes(m, s, workload.ids, workload.weighted) for m, s in zip(messages, samples.tolist(), strict=True)]
    )


def _unit_specs(plan: ShardingPlan, w: Workload, features: list[str], ranks: list[int]) -> list[list[IdUnit]]:
    """Per rank of `ranks`: the exchange units it serves among `features`, as an id message sees them
    (a whole table's feature; a shard's row range of it)."""
    specs = {f.name: f for f in w.features}
    out: dict[int, list[IdUnit]] = {r: [] for r in ranks}
    for f in features:
        spec, table = specs[f], plan.feature_table[f]
        if table not in plan.shards:
            if plan.table_owner[table] in out:
                out[plan.table_owner[table]].append(IdUnit.whole(spec))
            continue
        for sh in plan.shards[table]:
            if sh.rank in out:
                out[sh.rank].append(IdUnit(spec, sh.rows))
    return [out[r] for r in ranks]


def _two_hops(
    plan: ShardingPlan, w: Workload, host_features: list[list[str]], host_width: np.ndarray
) -> list[list[PhaseTraffic]]:
    """SPTT steps (1), (2) and (4), (6) (and flat's "table_row" path): host g serves
    host_features[g] and returns host_width[g] floats per sample across hosts. -> per rank."""
    layout, b, id_bytes = plan.layout, w.batch_size, _id_bytes(plan)
    specs = {f.name: f for f in w.features}
    pf = {f.name: f.pooling_factor for f in w.features}
    host_n = np.array([float(len(fs)) for fs in host_features])
    host_p = np.array([sum(pf[f] for f in fs) for fs in host_features])
    rail = np.where(host_n > 0, float(layout.hosts * b), 0.0)  # samples a host's ranks hold after step (1)
    n, p, width = _served(plan, w, [f for fs in host_features for f in fs])
    phases: list[list[PhaseTraffic]] = [[] for _ in range(layout.world)]
    peer_ids: dict[int, list[PhaseTraffic]] = {}
    peer_rows: dict[int, list[PhaseTraffic]] = {}
    peer_dedup = _dedup(w, [[IdUnit.whole(specs[f]) for f in fs] for fs in host_features], b)
    for local in range(layout.ranks_per_host):
        g = _group("peer", layout.peer_ranks(local), layout)
        ids_and_rows = _exchange(
            g, "peer_ids", "peer_pooled", b, host_n, host_p, host_width, id_bytes, w.weighted, w.row_bytes, peer_dedup
        )
        for m, ph in zip(g.members, ids_and_rows, strict=True):
            peer_ids[m], peer_rows[m] = ph[:2], ph[2:]  # counts, ids | rows, grad
    for h in range(layout.hosts):
        members = layout.host_ranks(h)
        g = _group("intra", members, layout)
        dedup = _dedup(w, _unit_specs(plan, w, host_features[h], members), rail[h])
        ex = _exchange(
            g,
            "intra_ids",
            "intra_pooled",
            rail[h],
            n[members],
            p[members],
            width[members],
            id_bytes,
            w.weighted,
            w.row_bytes,
            dedup,
        )
        for m, ph in zip(members, ex, strict=True):
            phases[m] = [*peer_ids[m], *ph, *peer_rows[m]]  # forward order: (1), (2) and (4), (6)
    return phases


def flat_traffic(plan: ShardingPlan, workload: Workload) -> list[RankTraffic]:
    layout, w = plan.layout, workload
    two_hop = plan.host_path_features([f.name for f in w.features])
    features = [f.name for f in w.features if f.name not in two_hop]
    phases: list[list[PhaseTraffic]] = [[] for _ in range(layout.world)]
    if features:  # (every table "table_row": nothing goes over the world)
        n, p, width = _served(plan, w, features)
        world = _group("global", list(range(layout.world)), layout)
        dedup = _dedup(w, _unit_specs(plan, w, features, world.members), w.batch_size)
        phases = _exchange(
            world, "ids", "pooled", w.batch_size, n, p, width, _id_bytes(plan), w.weighted, w.row_bytes, dedup
        )
    if two_hop:
        widths = w.widths
        on_host = [[f for f in two_hop if plan.table_host(plan.feature_table[f]) == g] for g in range(layout.hosts)]
        host_width = np.array([float(sum(widths[f] for f in fs)) for fs in on_host])
        phases = [a + b for a, b in zip(phases, _two_hops(plan, w, on_host, host_width), strict=True)]
    allreduce: tuple[AllReduce, ...] = ()
    if layout.world > 1:  # the head beside the backward (group "dense"), then the Tower Modules
        parts = (("dense", w.shape.head_params), ("global", sum(w.shape.tower_params)))
        allreduce = tuple(
            AllReduce(g, layout.world, layout.hosts, w.allreduce_param_bytes * n) for g, n in parts if n > 0
        )
    return [RankTraffic(r, tuple(phases[r]), allreduce) for r in range(layout.world)]


def sptt_traffic(plan: ShardingPlan, workload: Workload) -> list[RankTraffic]:
    layout, w = plan.layout, workload
    hosts, per_host = layout.hosts, layout.ranks_per_host
    # per host g: features of its towers, its Tower Modules' output width and params
    host_features: list[list[str]] = [[] for _ in range(hosts)]
    host_w, host_params = np.zeros(hosts), np.zeros(hosts)
    for t, g in enumerate(plan.tower_host):
        host_features[g] += list(w.shape.towers[t])
        host_w[g] += w.shape.tower_widths[t]
        host_params[g] += w.shape.tower_params[t]
    phases = _two_hops(plan, w, host_features, host_w)

    out = []
    for r in range(layout.world):
        h = layout.host_of(r)
        ar = []
        if layout.world > 1 and w.shape.head_params > 0:
            ar.append(AllReduce("dense", layout.world, hosts, w.allreduce_param_bytes * w.shape.head_params))
        if per_host > 1 and host_params[h] > 0:
            ar.append(AllReduce("intra", per_host, 1, w.allreduce_param_bytes * float(host_params[h])))
        out.append(RankTraffic(r, tuple(phases[r]), tuple(ar)))
    return out


def make_plan(mode: str, workload: Workload, layout: Layout, kinds: Mapping[str, str] | None = None) -> ShardingPlan:
    """The placement a run would use: `plan_flat` for "flat", `plan_sptt` for the SPTT modes;
    kinds: table -> sharding kind (default: every table whole)."""
    features = list(workload.features)
    widths = workload.widths
    if mode == "flat":
        return plan_flat(features, widths, layout, kinds)
    return plan_sptt(
        features, [list(t) for t in workload.shape.towers], widths, layout, list(workload.shape.tower_widths), kinds
    )


def traffic(mode: str, workload: Workload, layout: Layout, plan: ShardingPlan | None = None) -> ModeTraffic:
    """Per-rank traffic of `mode` ("flat", or "sptt" / "sptt_tm": the SPTT dataflow)."""
    plan = plan or make_plan(mode, workload, layout)
    ranks = flat_traffic(plan, workload) if plan.mode == "flat" else sptt_traffic(plan, workload)
    return ModeTraffic(mode, plan, workload, tuple(ranks))
