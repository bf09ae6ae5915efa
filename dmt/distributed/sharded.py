"""A one-device model, sharded: `dmt.shard(model, topology, mode)` -> an nn.Module that trains like it.

    what rank r = (h, l) keeps of the MultiTowerModel
                         flat                                sptt
    embedding tables     the tables and shards the plan      the same (tables of host h's towers,
                         gives r                             cut inside host h)
    Tower Modules        all, data-parallel over W           host h's towers, shared by its L ranks
    head                 a replica, data-parallel over W     a replica, data-parallel over W

`forward(dense, sparse)` runs the flat (flat.py) or SPTT (sptt.py) dataflow on the rank's local
batch and returns its logits [B]. Its first part, the input exchange, is `route(sparse)`: ids only,
on process groups of its own, so it may run ahead (a pipelined step routes batch i+1 while batch i
computes) and `forward(dense, routed)` then runs the rest. A plain `loss.backward()` then leaves on
every parameter the rank holds the gradient of the global batch's mean loss (gradsync.py), so the
optimizers' `step()` train exactly as the one-device model would on the global batch (`dmt verify`).
In a world of one the wrapper is the model itself plus counters: the same training loop serves
every topology. `wire` (dmt/distributed/wire.py) sets the exchanges' widths and id deduplication.

`module` is the one-device model, trimmed to what this rank holds: its parameter names are the
one-device names, so its state_dict is this rank's part of the one-device state_dict; a table
held as a shard is the block `blocks()` names of the one-device parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dmt.distributed.comm import CommCounter, Exchange
from dmt.distributed.flat import flat_compute, flat_route
from dmt.distributed.gradsync import Bucket, GradientSync
from dmt.distributed.idcodec import IdCodec
from dmt.distributed.ids import RoutedIds
from dmt.distributed.plan import ShardingPlan, plan
from dmt.distributed.shards import unit_key
from dmt.distributed.sptt import sptt_compute, sptt_route
from dmt.distributed.topology import GroupRef, Topology
from dmt.distributed.wire import WireOptions
from dmt.models.base import MultiTowerModel
from dmt.sparse import as_keyed_jagged
from dmt.timing import PhaseTimer


class TowerElsewhere(nn.Module):
    """Stands in for a Tower Module that lives on another host (SPTT): widths only, no parameters."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("this Tower Module lives on another host")


class ShardedModel(nn.Module):
    """See the module docstring. Build it with `shard`."""

    def __init__(
        self,
        model: MultiTowerModel,
        topology: Topology,
        sharding: ShardingPlan,
        timer: PhaseTimer | None = None,
        profile: bool = False,
        precision: str = "fp32",
        wire: WireOptions | None = None,
    ) -> None:
        super().__init__()
        self.topo, self.plan, self.rank = topology, sharding, topology.rank
        self.wire = wire if wire is not None else WireOptions()
        layout = sharding.layout
        mine = sharding.shards_on(self.rank)
        model.embeddings.hold(sharding.tables_on(self.rank), {t: (s.rows, s.cols) for t, s in mine.items()})
        if sharding.mode == "sptt":
            held = set(sharding.towers_on(topology.host))
            for t in range(len(model.tower_modules)):
                if t not in held:
                    model.tower_modules[t] = TowerElsewhere(model.tower_in_widths[t], model.tower_widths[t])
        self.module = model
        self.widths = model.embeddings.feature_dims
        specs = model.embeddings.specs
        self.mean_tables = {t: spec.pooling == "mean" for t, spec in specs.items()}
        self.unit_table = dict(sharding.feature_table)  # exchange unit -> table
        for f, t in sharding.feature_table.items():
            self.unit_table.update({unit_key(f, k): t for k in range(len(sharding.shards.get(t, ())))})
        self.counter = CommCounter()
        self.timer = timer if timer is not None else PhaseTimer(sync_cuda=profile)
        self.precision = precision
        self._column_groups: dict[str, GroupRef] = {}
        if sharding.mode == "single":
            self.sync = None
            return
        self._column_groups = _column_groups(sharding, topology)
        me, rows, counter = self.rank, self.wire.rows, self.counter
        everyone = list(range(layout.world))
        host, rail = layout.host_ranks(topology.host), layout.peer_ranks(topology.local)
        self.world_ex = Exchange(topology.world_group, everyone, me, layout, counter, "global", rows, profile)
        self.intra_ex = Exchange(topology.intra_group, host, me, layout, counter, "intra", rows, profile)
        self.peer_ex = Exchange(topology.peer_group, rail, me, layout, counter, "peer", rows, profile)
        # the input exchanges (ids) on groups of their own; `route` gives each call its own counter
        self.input_world_ex = Exchange(topology.input_world_group, everyone, me, layout, counter, "global")
        self.input_intra_ex = Exchange(topology.input_intra_group, host, me, layout, counter, "intra")
        self.input_peer_ex = Exchange(topology.input_peer_group, rail, me, layout, counter, "peer")
        # the codec knows every exchange unit's rows: a feature's table, or a shard's rows of it
        rows = {f.name: f.num_embeddings for f in model.embeddings.features}
        for f, t in sharding.feature_table.items():
            rows.update({unit_key(f, k): s.num_rows for k, s in enumerate(sharding.shards.get(t, ()))})
        self.codec = IdCodec(rows) if self.wire.dedup_ids else None
        spans_hosts, dtype = layout.hosts > 1, self.wire.allreduce_dtype
        head = Bucket("head", list(model.head.parameters()), topology.dense_group, tuple(everyone), spans_hosts, dtype)
        towers = list(model.tower_modules.parameters())
        if sharding.mode == "sptt":
            tower = Bucket("towers", towers, topology.tower_group, tuple(host), False, dtype)
        else:
            tower = Bucket("towers", towers, topology.dense_group, tuple(everyone), spans_hosts, dtype)
        self.sync = GradientSync([head, tower], self.counter, self.timer)

    # ---- what this rank trains ---------------------------------------------------------------

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The tables this rank owns (sparse gradients)."""
        return self.module.embedding_parameters()

    def dense_parameters(self) -> list[nn.Parameter]:
        """The Tower Modules this rank holds and its replica of the head (dense gradients)."""
        return self.module.dense_parameters()

    def blocks(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Parameters held as shards: one-device name -> (offsets, one-device shape)."""
        emb = self.module.embeddings
        out = {}
        for t, ((r0, _), (c0, _)) in emb.blocks.items():
            spec = emb.specs[t]
            out[f"embeddings.tables.{t}.weight"] = ((r0, c0), (spec.num_embeddings, spec.embedding_dim))
        return out

    def column_shards(self) -> dict[nn.Parameter, tuple[object, int]]:
        """Shards of part of a table's columns: parameter -> (the process group of the ranks that
        hold the other columns of its rows, the width of the whole row). Row-wise optimizers sum
        their per-row statistics over that group (dmt/train/optim.py)."""
        emb = self.module.embeddings
        return {emb.tables[t].weight: (g(), emb.specs[t].embedding_dim) for t, g in self._column_groups.items()}

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate dense gradients locally (as DDP's no_sync); the first
        backward after it averages the accumulated sum."""
        if self.sync is None:
            yield
            return
        with self.sync.no_sync():
            yield

    # ---- compute -----------------------------------------------------------------------------

    def route(self, sparse) -> RoutedIds:
        """The input exchange of one batch (this rank's B samples): collective over the input
        groups, touches no parameter. Every rank must route its batches in the same order."""
        sparse = as_keyed_jagged(sparse)
        if self.plan.mode == "single":
            return RoutedIds(sparse, [sparse.batch_size], sparse.batch_size, CommCounter())
        return (sptt_route if self.plan.mode == "sptt" else flat_route)(self, sparse)

    def forward(self, dense: Tensor, sparse) -> Tensor:
        """dense [B, num_dense], sparse (KeyedJagged or TorchRec KeyedJaggedTensor, this rank's B
        samples; or what `route` made of them) -> logits [B] (float32)."""
        if isinstance(sparse, RoutedIds):
            routed = sparse
        elif self.plan.mode == "single":
            routed = None
        else:
            with self.timer("input_exchange"):
                routed = self.route(sparse)
        with self.autocast():
            if self.plan.mode == "single":
                return self.module(dense, as_keyed_jagged(sparse) if routed is None else routed.ids).float()
            self.counter.merge(routed.counter)
            compute = sptt_compute if self.plan.mode == "sptt" else flat_compute
            logits = compute(self, dense, routed).float()
        self.sync.attach(logits)
        return logits

    def autocast(self):
        """precision "bf16": the dense parts (Tower Modules, head) compute in bfloat16 under
        autocast; tables, pooling, exchanges and the loss stay float32 (a Tower Module's output is
        cast back before it crosses hosts)."""
        device = next((p.device.type for p in self.module.parameters()), "cpu")
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def _column_groups(sharding: ShardingPlan, topology: Topology) -> dict[str, GroupRef]:
    """Collective (every rank, same order): one process group per row range of a table cut into
    several column ranges (`topology.new_group`). -> table -> the group of this rank's shard of it."""
    mine = {}
    for t, shards in sharding.shards.items():
        by_rows: dict[tuple[int, int], list[int]] = {}
        for s in shards:
            by_rows.setdefault(s.rows, []).append(s.rank)
        for ranks in by_rows.values():
            if len(ranks) > 1:
                group = topology.new_group(sorted(ranks))
                if topology.rank in ranks:
                    mine[t] = GroupRef(group)
    return mine


def shard(
    model: MultiTowerModel,
    topology: Topology,
    mode: str = "sptt",
    sharding: ShardingPlan | None = None,
    timer: PhaseTimer | None = None,
    profile: bool = False,
    precision: str = "fp32",
    wire: WireOptions | None = None,
) -> ShardedModel:
    """Shard a one-device model over `topology` ("flat" or "sptt"; `sharding` overrides the
    planner's placement; `wire`: the exchanges' widths and id deduplication, default fp32 and
    plain ids). Collective only through the topology's groups; build the model the same
    way (same seed) on every rank, ideally inside `dmt.deferred_tables()` so that no rank
    allocates tables it does not own; the model is trimmed in place. profile: wait for the device
    around every timed phase and collective (exact times, no overlap). precision: "fp32", or
    "bf16" for the dense parts (see ShardedModel.autocast).

    >>> from dmt.models.dlrm import DLRM
    >>> from dmt.sparse import KeyedJagged
    >>> from dmt.specs import FeatureSpec
    >>> model = DLRM([FeatureSpec("f0", "t0", 100)], num_dense=2, dim=4)
    >>> sharded = shard(model, Topology.single())  # a world of one: the model itself
    >>> sparse = KeyedJagged(["f0"], torch.tensor([5, 6]), torch.tensor([1, 1]))
    >>> sharded(torch.zeros(2, 2), sparse).shape
    torch.Size([2])
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    sharding = sharding if sharding is not None else plan(model, topology.layout, mode)
    return ShardedModel(model, topology, sharding, timer, profile, precision, wire)
