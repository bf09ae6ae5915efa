"""Hosts, ranks and the process groups DMT talks over.

    rank r = (host h, local index l):  h = r // L,  l = r % L,  W = H * L

    global group   all W ranks          flat all-to-alls
    dense group    all W ranks          the head's gradient all-reduce (its own group, so that
                                        it runs beside the embedding exchanges it overlaps)
    intra-host     the L ranks of h     SPTT steps 2 and 4
    tower group    the L ranks of h     SPTT Tower Module gradients (beside step 4's backward)
    cross-host     the H ranks with l   SPTT steps 1 and 6 (a "rail": same local index)
    input groups   world, intra-host    the input (id) exchanges alone: a pipelined step runs the
                   and cross-host       next batch's on them while this batch's exchanges and
                   again                all-reduces run on the groups above

Groups are created collectively (every rank calls `Topology.create`) and passed explicitly. A
world of one (`Topology.single()`) has no process group at all: one device, no collectives.
Every group waits as long as the default group does (`init_process_group(timeout=...)`, dmt's
`dist.timeout_s`): torch gives a `new_group` its own default of 30 minutes instead, so a cut
link met in a dense all-reduce or a rail exchange would otherwise hang that long.

dmt holds every group it uses weakly (`GroupRef`): torch.distributed owns the groups, and
`destroy_process_group()` frees them at the call, as in a script without dmt, even while the user
still holds the topology or the sharded model. A group that outlived that call would be freed
during interpreter shutdown instead, where a gloo worker thread that still holds a finished
collective's tensor can abort the process ("terminate called without an active exception"). A dmt
object used after the call raises a clear error.

    >>> topo = Topology.single()
    >>> topo.layout.world, topo.all_gather_object("x"), topo.max_over_ranks(3)
    (1, ['x'], 3)
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dmt.errors import UserError


@dataclass(frozen=True)
class Layout:
    """The shape of the cluster, without process groups (usable in planning and tests)."""

    hosts: int
    ranks_per_host: int

    def __post_init__(self) -> None:
        if self.hosts < 1 or self.ranks_per_host < 1:
            raise UserError(
                f"topology needs hosts >= 1 and ranks per host >= 1, got {self.hosts}x{self.ranks_per_host}"
            )

    @staticmethod
    def for_world(world: int, ranks_per_host: int) -> Layout:
        if ranks_per_host < 1 or world % ranks_per_host:
            raise UserError(
                f"ranks per host {ranks_per_host} does not divide the world of {world} ranks; "
                f"allowed: {[d for d in range(1, world + 1) if world % d == 0]}"
            )
        return Layout(world // ranks_per_host, ranks_per_host)

    @property
    def world(self) -> int:
        return self.hosts * self.ranks_per_host

    def host_of(self, rank: int) -> int:
        return rank // self.ranks_per_host

    def local_of(self, rank: int) -> int:
        return rank % self.ranks_per_host

    def rank(self, host: int, local: int) -> int:
        return host * self.ranks_per_host + local

    def host_ranks(self, host: int) -> list[int]:
        return [self.rank(host, local) for local in range(self.ranks_per_host)]

    def peer_ranks(self, local: int) -> list[int]:
        return [self.rank(h, local) for h in range(self.hosts)]


class GroupRef:
    """A process group held weakly (see the module docstring); calling it gives the group."""

    __slots__ = ("_ref",)

    def __init__(self, group: dist.ProcessGroup) -> None:
        self._ref = weakref.ref(group)

    def __call__(self) -> dist.ProcessGroup:
        group = self._ref()
        if group is None:
            raise RuntimeError("dmt: the process group is gone: torch.distributed.destroy_process_group() was called")
        return group


def group_timeout(group: dist.ProcessGroup | None = None) -> timedelta | None:
    """How long a collective of `group` (default: the default group) waits before it fails; None
    where its backend does not say. torch has no public getter: this reads the backend's options."""
    device = torch.device("cuda" if dist.get_backend(group) == "nccl" else "cpu")
    try:
        return (group or dist.group.WORLD)._get_backend(device).options._timeout
    except (AttributeError, RuntimeError):
        return None


def _group(name: str) -> property:
    return property(lambda self: self.group(name), doc=f"this rank's {name} process group (None in a world of one)")


@dataclass
class Topology:
    """This rank's place in the layout and its process groups, by name: world, dense, intra,
    tower, peer, input_world, input_intra, input_peer (the table in the module docstring)."""

    layout: Layout
    rank: int
    groups: dict[str, GroupRef] = field(default_factory=dict)
    timeout: timedelta | None = None  # every group's collective timeout (None: no groups)

    def group(self, name: str) -> dist.ProcessGroup | None:
        ref = self.groups.get(name)
        return None if ref is None else ref()

    def new_group(self, ranks: list[int]) -> dist.ProcessGroup:
        """Collective over the default group: a group of `ranks` whose collectives wait `timeout`.
        Every group dmt makes comes from here."""
        return dist.new_group(ranks, timeout=self.timeout)

    world_group = _group("world")
    dense_group = _group("dense")
    intra_group = _group("intra")
    tower_group = _group("tower")
    peer_group = _group("peer")
    input_world_group = _group("input_world")
    input_intra_group = _group("input_intra")
    input_peer_group = _group("input_peer")

    @property
    def host(self) -> int:
        return self.layout.host_of(self.rank)

    @property
    def local(self) -> int:
        return self.layout.local_of(self.rank)

    @staticmethod
    def single() -> Topology:
        """One rank on one device: no process group, every collective a no-op."""
        return Topology(Layout(1, 1), 0)

    @staticmethod
    def create(layout: Layout, timeout: timedelta | None = None) -> Topology:
        """Collective: every rank of the default group must call it, in the same order. timeout:
        how long each group's collectives wait (default: as long as the default group's)."""
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != layout.world:
            raise UserError(f"topology {layout.hosts}x{layout.ranks_per_host} needs {layout.world} ranks, have {world}")
        topo = Topology(layout, rank, timeout=timeout or group_timeout())
        mine = {"world": dist.group.WORLD, "dense": topo.new_group(list(range(world)))}
        for h in range(layout.hosts):
            intra, tower = topo.new_group(layout.host_ranks(h)), topo.new_group(layout.host_ranks(h))
            if h == layout.host_of(rank):
                mine["intra"], mine["tower"] = intra, tower
        for local in range(layout.ranks_per_host):
            g = topo.new_group(layout.peer_ranks(local))
            if local == layout.local_of(rank):
                mine["peer"] = g
        mine["input_world"] = topo.new_group(list(range(world)))
        for h in range(layout.hosts):
            g = topo.new_group(layout.host_ranks(h))
            if h == layout.host_of(rank):
                mine["input_intra"] = g
        for local in range(layout.ranks_per_host):
            g = topo.new_group(layout.peer_ranks(local))
            if local == layout.local_of(rank):
                mine["input_peer"] = g
        topo.groups = {name: GroupRef(g) for name, g in mine.items()}
        return topo

    @staticmethod
    def from_env(ranks_per_host: int | None = None, timeout: timedelta | None = None) -> Topology:
        """The topology of an initialised default process group (as under torchrun), hosts of
        `ranks_per_host` ranks (default: the launcher's LOCAL_WORLD_SIZE); a world of one
        when no process group is initialised. Collective; timeout as in `create`."""
        if not dist.is_initialized():
            return Topology.single()
        world = dist.get_world_size()
        per_host = ranks_per_host or int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return Topology.create(Layout.for_world(world, per_host), timeout)

    # ---- small collectives over all ranks, no-ops in a world of one --------------------------

    @property
    def distributed(self) -> bool:
        return self.layout.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, by rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.layout.world
        dist.all_gather_object(out, obj)
        return out

    def max_over_ranks(self, value: int) -> int:
        return max(self.all_gather_object(value))
