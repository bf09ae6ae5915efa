"""Gradient synchronisation of a sharded model, attached to autograd the way DDP attaches it.

The user's loop is the one-device loop: `loss = f(model(dense, sparse))` on the rank's local
batch, `loss.backward()`, `optimizer.step()`. Three things make that equal to one device on the
global batch (DDP semantics: each rank's loss is the mean over its own samples):

    tables          model-parallel: the dataflows divide the gradient that flows back into the
                    exchanges (flat.py, sptt.py: `scale_grad`), so that an owner sums
                    1/W * the ranks' local mean-loss gradients = the global mean's gradient
    head            replicated on all W ranks: gradients averaged over the dense group
    Tower Modules   flat: replicated on all W ranks, averaged over them; SPTT: on the L ranks
                    of their host, averaged over the tower group

Each parameter that ranks share gets a post-accumulate-grad hook. A bucket (one flat buffer
per group) starts its all-reduce, asynchronously, once all its parameters have their
gradients, in a fixed order (head first) on every rank; so the head's all-reduce runs while
the backward of the embedding exchanges is still going. A callback queued on autograd's engine
when the backward reaches the logits waits for every bucket at the end of the backward (an
unused parameter's gradient counts as zero) and writes the averages back. Averaging (not
summing) keeps gradient accumulation right: a gradient that is already synchronised is the same
on every rank and stays unchanged. Inside `no_sync()` nothing is reduced (accumulate locally;
the next synchronised backward reduces the sum). A bucket may all-reduce at a narrower width
(`dtype`, as DDP's bf16 / fp16 compression hooks): the average is taken in fp32, cast, reduced and
cast back; the counters count the bytes at that width.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Variable

from dmt import slowdown
from dmt.distributed.comm import CommCounter
from dmt.distributed.topology import GroupRef
from dmt.timing import PhaseTimer


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """x unchanged; its gradient multiplied by `factor` on the way back."""
    if factor == 1 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _ScaleGrad.apply(x, factor)


class Bucket:
    """Parameters averaged over one process group through one flat buffer."""

    def __init__(
        self,
        name: str,
        params: list[nn.Parameter],
        group,
        members: tuple[int, ...],
        cross_host: bool,
        dtype: torch.dtype = torch.float32,
    ):
        self.name, self.params, self.members, self.cross_host = name, params, members, cross_host
        self.group = None if group is None else GroupRef(group)  # held weakly (dmt/distributed/topology.py)
        self.dtype = dtype
        self.size = len(members)
        self.ready: set[int] = set()
        self.finish = None  # set once launched: waits and writes back

    def launch(self, counter: CommCounter) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in self.params]).mul_(1.0 / self.size)
        wire = flat if flat.dtype == self.dtype else flat.to(self.dtype)
        counter.allreduce_bytes += wire.numel() * wire.element_size()
        if self.cross_host:
            counter.allreduce_cross_host_bytes += wire.numel() * wire.element_size()
        slowdown.pace()  # the emulator's slowed compute (dmt/slowdown.py)
        start = time.perf_counter()
        work = dist.all_reduce(wire, group=self.group(), async_op=True)
        done: list[float] = []  # when the backend finished it (the wait may come much later)
        work.get_future().add_done_callback(lambda _: done.append(time.perf_counter()))

        def finish() -> None:
            with slowdown.waiting():
                work.wait()
            end = done[0] if done else time.perf_counter()
            counter.allreduce_s += end - start
            counter.intervals.append((start, end, self.members))
            if wire is not flat:
                flat.copy_(wire)
            offset = 0
            for p in self.params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

        self.finish = finish


class GradientSync:
    """Hooks that average the shared dense gradients of one rank (see the module docstring).

    buckets: in launch order; a bucket of a group with one member is dropped (nothing to share).
    """

    def __init__(self, buckets: list[Bucket], counter: CommCounter, timer: PhaseTimer) -> None:
        self.buckets = [b for b in buckets if b.size > 1 and b.params]
        self.counter, self.timer = counter, timer
        self.enabled = True
        self._armed = False  # a backward that reached the logits is under way
        for b in self.buckets:
            for p in b.params:
                p.register_post_accumulate_grad_hook(self._make_hook(b, id(p)))

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def attach(self, logits: Tensor) -> None:
        """Called on the forward's output: its backward will be synchronised."""
        if self.enabled and self.buckets and logits.requires_grad:
            logits.register_hook(self._backward_started)

    def _backward_started(self, grad: Tensor) -> None:
        if self._armed:  # several outputs of one backward: arm once
            return
        self._armed = True
        for b in self.buckets:
            b.ready.clear()
            b.finish = None
        Variable._execution_engine.queue_callback(self._backward_done)

    def _make_hook(self, bucket: Bucket, key: int):
        def hook(_: Tensor) -> None:
            if not self._armed:
                return
            bucket.ready.add(key)
            self._launch_ready()

        return hook

    def _launch_ready(self) -> None:
        """Start every bucket whose gradients are all in, in order: a bucket waits for the ones
        before it, so that every rank issues the all-reduces in the same order."""
        for b in self.buckets:
            if b.finish is None:
                if len(b.ready) < len(b.params):
                    return
                b.launch(self.counter)

    def _backward_done(self) -> None:
        self._armed = False
        with self.timer("grad_sync"):
            for b in self.buckets:
                if b.finish is None:
                    b.launch(self.counter)
                b.finish()
                b.finish = None
