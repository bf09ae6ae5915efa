"""A one-device model, sharded: each rank keeps the tables it owns, the Tower Modules of its host
(SPTT) and a replica of the dense head, and runs the flat or SPTT dataflow.

Gradients follow DDP semantics over the global batch: the training step scales each rank's loss
by 1/W and `sync_gradients` sums dense gradients over the ranks that share a parameter (all W for
the head and flat Tower Modules, the L ranks of a host for its SPTT Tower Modules).
"""

from __future__ import annotations

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
from dmt.train.timing import PhaseTimer


class DistributedModel(nn.Module):
    def __init__(self, model: MultiTowerModel, plan: ShardingPlan, topo: Topology) -> None:
        super().__init__()
        self.model, self.plan, self.topo, self.rank = model, plan, topo, topo.rank
        layout = plan.layout
        self.owned_tables = [t for t, r in plan.table_owner.items() if r == self.rank]
        for table in list(model.embeddings.tables):
            if table not in self.owned_tables:
                del model.embeddings.tables[table]
        if plan.mode == "sptt":
            self.held_towers = plan.towers_on(topo.host)
        else:
            self.held_towers = list(range(len(model.towers)))
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

    def sync_gradients(self) -> None:
        """Sum dense gradients over the ranks that share each parameter (loss already scaled by 1/W)."""
        shared_world, shared_host = [], []
        for name, p in self.held_named_parameters():
            if name.startswith("embeddings."):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            is_tower = name.startswith("tower_modules.")
            (shared_host if is_tower and self.plan.mode == "sptt" else shared_world).append(p.grad)
        self._all_reduce(shared_world, self.topo.world_group)
        self._all_reduce(shared_host, self.topo.intra_group)

    def _all_reduce(self, grads: list[Tensor], group) -> None:
        if not grads or dist.get_world_size(group) == 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.counter.allreduce_bytes += flat.numel() * flat.element_size()
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
