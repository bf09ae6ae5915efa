"""A one-device model, sharded: `dmt.shard(model, topology, mode)` -> an nn.Module that trains like it.

    what rank r = (h, l) keeps of the MultiTowerModel
                         flat                                sptt
    embedding tables     the tables the plan gives r         the same (tables of host h's towers)
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
one-device names, so its state_dict is this rank's part of the one-device state_dict.
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
from dmt.distributed.sptt import sptt_compute, sptt_route
from dmt.distributed.topology import Topology
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
        model.embeddings.hold(sharding.tables_on(self.rank))
        if sharding.mode == "sptt":
            held = set(sharding.towers_on(topology.host))
            for t in range(len(model.tower_modules)):
                if t not in held:
                    model.tower_modules[t] = TowerElsewhere(model.tower_in_widths[t], model.tower_widths[t])
        self.module = model
        self.widths = model.embeddings.feature_dims
        self.counter = CommCounter()
        self.timer = timer if timer is not None else PhaseTimer(sync_cuda=profile)
        self.precision = precision
        if sharding.mode == "single":
            self.sync = None
            return
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
        features = model.embeddings.features
        self.codec = IdCodec({f.name: f.num_embeddings for f in features}) if self.wire.dedup_ids else None
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
