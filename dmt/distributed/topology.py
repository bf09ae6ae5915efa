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

    >>> topo = Topology.single()
    >>> topo.layout.world, topo.all_gather_object("x"), topo.max_over_ranks(3)
    (1, ['x'], 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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


@dataclass
class Topology:
    """This rank's place in the layout and its process groups."""

    layout: Layout
    rank: int
    world_group: dist.ProcessGroup | None = None
    dense_group: dist.ProcessGroup | None = None
    intra_group: dist.ProcessGroup | None = None
    tower_group: dist.ProcessGroup | None = None
    peer_group: dist.ProcessGroup | None = None
    input_world_group: dist.ProcessGroup | None = None
    input_intra_group: dist.ProcessGroup | None = None
    input_peer_group: dist.ProcessGroup | None = None

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
    def create(layout: Layout) -> Topology:
        """Collective: every rank of the default group must call it, in the same order."""
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != layout.world:
            raise UserError(f"topology {layout.hosts}x{layout.ranks_per_host} needs {layout.world} ranks, have {world}")
        topo = Topology(layout, rank, world_group=dist.group.WORLD, dense_group=dist.new_group(list(range(world))))
        for h in range(layout.hosts):
            intra, tower = dist.new_group(layout.host_ranks(h)), dist.new_group(layout.host_ranks(h))
            if h == topo.host:
                topo.intra_group, topo.tower_group = intra, tower
        for local in range(layout.ranks_per_host):
            g = dist.new_group(layout.peer_ranks(local))
            if local == topo.local:
                topo.peer_group = g
        topo.input_world_group = dist.new_group(list(range(world)))
        for h in range(layout.hosts):
            g = dist.new_group(layout.host_ranks(h))
            if h == topo.host:
                topo.input_intra_group = g
        for local in range(layout.ranks_per_host):
            g = dist.new_group(layout.peer_ranks(local))
            if local == topo.local:
                topo.input_peer_group = g
        return topo

    @staticmethod
    def from_env(ranks_per_host: int | None = None) -> Topology:
        """The topology of an initialised default process group (as under torchrun), hosts of
        `ranks_per_host` ranks (default: the launcher's LOCAL_WORLD_SIZE); a world of one
        when no process group is initialised. Collective."""
        if not dist.is_initialized():
            return Topology.single()
        world = dist.get_world_size()
        per_host = ranks_per_host or int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return Topology.create(Layout.for_world(world, per_host))

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
