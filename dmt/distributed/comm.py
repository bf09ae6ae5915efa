"""Counted and timed all-to-alls over one process group.

`Exchange` wraps a group and records, for every all-to-all it runs, the bytes this rank sends to
each other member, split into intra-host and cross-host by the members' hosts, the number of
non-empty messages, and the wall time this rank spent inside the collective. Counts and times
include the backward pass of differentiable exchanges. Rows travel at the exchange's `wire` width
(dmt/distributed/wire.py) and are counted as sent.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from dmt import slowdown
from dmt.distributed.topology import GroupRef, Layout
from dmt.distributed.wire import RowWire
from dmt.guard import device_sync


@dataclass
class CommCounter:
    intra_host_bytes: int = 0
    cross_host_bytes: int = 0
    messages: int = 0
    by_phase: dict[str, int] = field(default_factory=dict)  # phase -> bytes (all tiers)
    cross_host_by_phase: dict[str, int] = field(default_factory=dict)  # phase -> bytes sent across hosts
    # payload of dense gradients all-reduced (not split by tier: the backend picks the algorithm)
    allreduce_bytes: int = 0
    allreduce_cross_host_bytes: int = 0  # the part all-reduced over groups that span hosts
    # wall seconds inside collectives, by phase (all-to-alls) and for the gradient all-reduces;
    # they include waiting for the slowest member to arrive
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    allreduce_s: float = 0.0
    # (start, end, group) of every collective on the host's monotonic clock, group: its members
    # (an all-reduce may overlap all-to-alls; the members tell which calls of other ranks it pairs with)
    intervals: list[tuple[float, float, tuple[int, ...]]] = field(default_factory=list)

    def add_time(self, phase: str, start: float, end: float, group: tuple[int, ...]) -> None:
        self.seconds_by_phase[phase] = self.seconds_by_phase.get(phase, 0.0) + end - start
        self.intervals.append((start, end, group))

    def busy_s(self) -> float:
        """Seconds with at least one collective in flight (the union of the intervals)."""
        return union_s([(start, end) for start, end, _ in self.intervals])

    def add(self, phase: str, nbytes: int, cross_host: bool) -> None:
        if nbytes <= 0:
            return
        if cross_host:
            self.cross_host_bytes += nbytes
            self.cross_host_by_phase[phase] = self.cross_host_by_phase.get(phase, 0) + nbytes
        else:
            self.intra_host_bytes += nbytes
        self.messages += 1
        self.by_phase[phase] = self.by_phase.get(phase, 0) + nbytes

    def snapshot(self) -> dict:
        return {
            "intra_host_bytes": self.intra_host_bytes,
            "cross_host_bytes": self.cross_host_bytes,
            "messages": self.messages,
            "by_phase": dict(self.by_phase),
            "cross_host_by_phase": dict(self.cross_host_by_phase),
            "allreduce_bytes": self.allreduce_bytes,
            "allreduce_cross_host_bytes": self.allreduce_cross_host_bytes,
            "seconds_by_phase": dict(self.seconds_by_phase),
            "allreduce_s": self.allreduce_s,
            "busy_s": self.busy_s(),
            "intervals": list(self.intervals),
        }

    def merge(self, other: CommCounter) -> None:
        """Add what `other` counted (a batch's input exchange, run ahead of its step)."""
        self.intra_host_bytes += other.intra_host_bytes
        self.cross_host_bytes += other.cross_host_bytes
        self.messages += other.messages
        self.allreduce_bytes += other.allreduce_bytes
        self.allreduce_cross_host_bytes += other.allreduce_cross_host_bytes
        self.allreduce_s += other.allreduce_s
        for mine, theirs in (
            (self.by_phase, other.by_phase),
            (self.cross_host_by_phase, other.cross_host_by_phase),
            (self.seconds_by_phase, other.seconds_by_phase),
        ):
            for phase, value in theirs.items():
                mine[phase] = mine.get(phase, 0) + value
        self.intervals.extend(other.intervals)

    def reset(self) -> None:
        self.intra_host_bytes = self.cross_host_bytes = self.messages = 0
        self.allreduce_bytes = self.allreduce_cross_host_bytes = 0
        self.by_phase, self.seconds_by_phase, self.allreduce_s, self.intervals = {}, {}, 0.0, []
        self.cross_host_by_phase = {}


def union_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class Exchange:
    """All-to-alls among `members` (global ranks, in group order) over `group`."""

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        members: list[int],
        rank: int,
        layout: Layout,
        counter: CommCounter,
        name: str,
        wire: RowWire | None = None,
        profile: bool = False,
    ) -> None:
        """profile: wait for the device around each collective (CUDA), so that its time is the
        transfer's; off in training, where the wait would undo the overlap."""
        self._group = None if group is None else GroupRef(group)
        self.members, self.layout, self.counter, self.name = members, layout, counter, name
        self.wire = wire if wire is not None else RowWire()
        self.profile = profile
        self.size = len(members)
        self.index = members.index(rank)
        self.cross = [layout.host_of(m) != layout.host_of(rank) for m in members]
        # gloo over TCP: exchange across hosts through point-to-point messages, receives first
        # (see _receives_first); NCCL's fused all-to-all is better left alone
        self.receives_first = group is not None and any(self.cross) and dist.get_backend(group) == dist.Backend.GLOO

    @property
    def group(self) -> dist.ProcessGroup | None:
        return None if self._group is None else self._group()

    def _count(self, phase: str, send_elems: list[int], elem_bytes: int) -> None:
        for j, n in enumerate(send_elems):
            if j != self.index:
                self.counter.add(f"{self.name}.{phase}", n * elem_bytes, self.cross[j])

    def all_to_all(self, x: Tensor, send: list[int], recv: list[int], phase: str) -> Tensor:
        """x [sum(send), *rest] -> [sum(recv), *rest]; member j gets rows send-split j."""
        if self.size == 1:
            return x
        out = x.new_empty((sum(recv), *x.shape[1:]))
        x = x.contiguous()
        _sync(x, self.profile)
        with slowdown.waiting():  # the emulator's slowed compute: the work before it (dmt/slowdown.py)
            start = time.perf_counter()
            if self.receives_first:
                self._receives_first(out, x, send, recv)
            else:
                dist.all_to_all_single(out, x, output_split_sizes=recv, input_split_sizes=send, group=self.group)
            _sync(out, self.profile)
            self.counter.add_time(f"{self.name}.{phase}", start, time.perf_counter(), tuple(self.members))
        row = x[0].numel() if x.dim() > 1 else 1
        self._count(phase, [n * row for n in send], x.element_size())
        return out

    def _receives_first(self, out: Tensor, x: Tensor, send: list[int], recv: list[int]) -> None:
        """all_to_all_single as point-to-point messages, every receive posted before any send.

        gloo keeps one TCP socket per rank pair and tells a sender that the receiver is ready over
        that socket. Its all-to-all posts each peer's send before the matching receive, so a rank
        that arrives late queues that "ready" behind its own outgoing data, and the other
        direction cannot start until the late rank's data has crossed: on a slow link the two
        directions take turns. Posting the receives first sends every "ready" on an idle socket.
        """
        into, parts, me = out.split(recv), x.split(send), self.index
        into[me].copy_(parts[me])
        peers = [(j, m) for j, m in enumerate(self.members) if j != me]
        works = [dist.irecv(into[j], src=m, group=self.group) for j, m in peers if recv[j] > 0]
        works += [dist.isend(parts[j], dst=m, group=self.group) for j, m in peers if send[j] > 0]
        for w in works:
            w.wait()

    def counts(self, send: Tensor) -> Tensor:
        """Swap small per-member count vectors: send [size, k] int64 -> recv [size, k]."""
        return self.all_to_all(send, [1] * self.size, [1] * self.size, "counts")

    def with_counter(self, counter: CommCounter) -> Exchange:
        """The same exchange, counting into `counter` (a batch's input exchange, run ahead of its step)."""
        other = copy.copy(self)
        other.counter = counter
        return other

    def rows(self, x: Tensor, send: list[int], recv: list[int], phase: str) -> Tensor:
        """Differentiable all_to_all of float rows at the `wire` width: the backward sends the
        gradients back along the same links, at the same width."""
        if self.size == 1:
            return x
        if torch.is_grad_enabled() and not x.requires_grad:
            # a rank with nothing to send (no tables, no towers) must still join the backward exchange
            x = x.detach().requires_grad_()
        return _AllToAll.apply(x, send, recv, self, phase)


def _sync(x: Tensor, profile: bool) -> None:
    """Profiling only: wait for the device, so that the time measured is the transfer's. Without it
    an NCCL collective returns once queued, and the times recorded are the host's."""
    if profile:
        device_sync(x.device)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], ex: Exchange, phase: str) -> Tensor:
        ctx.args = (send, recv, ex, phase, x.dtype)
        return ex.wire.decode(ex.all_to_all(ex.wire.encode(x), send, recv, phase), dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        send, recv, ex, phase, dtype = ctx.args
        sent = ex.all_to_all(ex.wire.encode(grad.contiguous(), grad=True), recv, send, f"{phase}.grad")
        return ex.wire.decode(sent, grad=True, dtype=dtype), None, None, None, None
