"""A one-device model, sharded: each rank keeps the tables it owns, the Tower Modules of its host
(SPTT) and a replica of the dense head, and runs the flat or SPTT dataflow.

Gradients follow DDP semantics over the global batch: the training step scales each rank's loss
by 1/W and `backward` sums dense gradients over the ranks that share a parameter (all W for the
head and flat Tower Modules, the L ranks of a host for its SPTT Tower Modules), overlapping the
head's all-reduce with the backward of the embedding exchanges.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dmt.distributed.comm import CommCounter, Exchange
from dmt.distributed.flat import flat_forward
from dmt.distributed.plan import ShardingPlan
from dmt.distributed.sptt import sptt_forward
from dmt.distributed.topology import Topology
from dmt.models.base import MultiTowerModel
from dmt.sparse import KeyedJagged
from dmt.timing import PhaseTimer


class DistributedModel(nn.Module):
    def __init__(self, model: MultiTowerModel, plan: ShardingPlan, topo: Topology) -> None:
        super().__init__()
        self.model, self.plan, self.topo, self.rank = model, plan, topo, topo.rank
        layout = plan.layout
        self.owned_tables = [t for t, r in plan.table_owner.items() if r == self.rank]
        model.embeddings.hold(self.owned_tables)  # a model built with tables=() never held the others
        if plan.mode == "sptt":
            self.held_towers = plan.towers_on(topo.host)
        else:
            self.held_towers = list(range(len(model.towers)))
        self._cut: tuple[list[Tensor], list[Tensor]] | None = None  # see head()
        self.counter = CommCounter()
        self.timer = PhaseTimer(sync_cuda=True)  # synchronises only where CUDA is present
        self.world_ex = Exchange(topo.world_group, list(range(layout.world)), self.rank, layout, self.counter, "global")
        self.intra_ex = Exchange(
            topo.intra_group, layout.host_ranks(topo.host), self.rank, layout, self.counter, "intra"
        )
        self.peer_ex = Exchange(topo.peer_group, layout.peer_ranks(topo.local), self.rank, layout, self.counter, "peer")

    # ---- what this rank holds --------------------------------------------------------------

    def holds(self, name: str) -> bool:
        """Whether the parameter (one-device name) lives on this rank."""
        if name.startswith("embeddings.tables."):
            return name.split(".")[2] in self.owned_tables
        if name.startswith("tower_modules."):
            return int(name.split(".")[1]) in self.held_towers
        return True

    def held_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if self.holds(n)]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.model.embeddings.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.held_named_parameters() if not n.startswith("embeddings.")]

    def state_dict_held(self) -> dict[str, Tensor]:
        return {n: t for n, t in self.model.state_dict().items() if self.holds(n)}

    # ---- compute ----------------------------------------------------------------------------

    def pool(self, ids: KeyedJagged) -> Tensor:
        """Ids of features I serve (any number of samples S) -> [S, n * d] in ids.keys order."""
        if not ids.keys:
            return torch.zeros(0, 0, device=ids.values.device)
        per_feature = self.model.embeddings(ids)
        return torch.cat([per_feature[f] for f in ids.keys], 1)

    def forward(self, dense: Tensor, sparse: KeyedJagged) -> Tensor:
        if self.plan.mode == "sptt":
            return sptt_forward(self, dense, sparse)
        return flat_forward(self, dense, sparse)

    def head(self, dense: Tensor, outputs: list[Tensor]) -> Tensor:
        """(the last step of both dataflows) The data-parallel head on the tower outputs [B, D'_t].

        While training, the outputs are cut from the graph behind them, so that `backward` can
        finish the head first and all-reduce its gradients while the embedding side's backward
        (exchanges, Tower Modules, lookups) still runs."""
        if not torch.is_grad_enabled():
            return self.model.head(dense, outputs)
        cut = [o.detach().requires_grad_() for o in outputs]
        self._cut = (outputs, cut)
        return self.model.head(dense, cut)

    def backward(self, loss: Tensor) -> None:
        """Gradients of `loss` (already scaled by 1/W) on every parameter this rank holds, summed
        over the ranks that share them:

            head backward -> start the head's all-reduce (dense group: all ranks) ......  wait
                          -> exchanges and Tower Modules backward -> Tower Module all-reduce
        """
        with self.timer("backward"):
            loss.backward()  # the head's parameters and the cut tower outputs
        outputs, cut = self._cut
        self._cut = None
        head, _ = self._shared_gradients()  # the Tower Modules' gradients are still to come
        pending = self._all_reduce(head, self.topo.dense_group, async_op=True)
        with_grad = [
            (o, c.grad if c.grad is not None else torch.zeros_like(c)) for o, c in zip(outputs, cut, strict=True)
        ]
        with_grad = [(o, g) for o, g in with_grad if o.requires_grad]
        if with_grad:
            with self.timer("backward"):
                torch.autograd.backward([o for o, _ in with_grad], [g for _, g in with_grad])
        with self.timer("grad_sync"):
            tower_group = self.topo.intra_group if self.plan.mode == "sptt" else self.topo.world_group
            self._all_reduce(self._shared_gradients()[1], tower_group)
            if pending is not None:
                pending()

    def _shared_gradients(self) -> tuple[list[Tensor], list[Tensor]]:
        """Dense gradients of the head and of the Tower Modules this rank holds (zeros where unused)."""
        head, towers = [], []
        for name, p in self.held_named_parameters():
            if name.startswith("embeddings."):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            (towers if name.startswith("tower_modules.") else head).append(p.grad)
        return head, towers

    def _all_reduce(self, grads: list[Tensor], group, async_op: bool = False):
        """Sum `grads` over `group` through one flat buffer. async_op: start it and return a
        function that waits for it and writes the sums back (None when there is nothing to do)."""
        if not grads or dist.get_world_size(group) == 1:
            return None
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.counter.allreduce_bytes += flat.numel() * flat.element_size()
        if group is not self.topo.intra_group and self.plan.layout.hosts > 1:
            self.counter.allreduce_cross_host_bytes += flat.numel() * flat.element_size()
        start = time.perf_counter()
        work = dist.all_reduce(flat, group=group, async_op=True)
        done: list[float] = []  # when the backend finished it (wait() may come much later)
        work.get_future().add_done_callback(lambda _: done.append(time.perf_counter()))

        def finish() -> None:
            work.wait()
            end = done[0] if done else time.perf_counter()
            self.counter.allreduce_s += end - start
            self.counter.intervals.append((start, end, tuple(dist.get_process_group_ranks(group))))
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

        if async_op:
            return finish
        finish()
        return None
