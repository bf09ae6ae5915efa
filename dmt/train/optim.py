"""Optimizers: one for embedding tables (sparse rows), one for the dense parameters."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from dmt import slowdown
from dmt.config import TrainConfig
from dmt.distributed.topology import GroupRef
from dmt.errors import UserError


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per embedding row (the mean of the row's squared gradient).

    For a table [rows, d] with gradient rows g_i [d]:  s_i += mean(g_i^2);  w_i -= lr g_i / (sqrt(s_i) + eps).
    Takes sparse or dense gradients; rows absent from a sparse gradient are untouched.

    column_shards: parameters that hold only some columns of their table -> (process group of the
    shards of the same rows, width of the whole row): the mean is over the whole row, so the
    shards all-reduce their sums of g_i^2 over the rows in their gradient (every shard of a row
    range gets the same ids, so the same rows, in the same order) and keep equal accumulators.
    """

    def __init__(
        self,
        params,
        lr: float = 0.05,
        eps: float = 1e-8,
        column_shards: Mapping[nn.Parameter, tuple[object, int]] | None = None,
    ) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})
        # the groups held weakly, as the sharded model holds them (dmt/distributed/topology.py)
        self.column_shards = {id(p): (GroupRef(g), width) for p, (g, width) in (column_shards or {}).items()}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the torch.optim signature
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                acc = state["sum"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    values = p.grad
                    rows = torch.arange(p.shape[0], device=p.device)
                if id(p) in self.column_shards:
                    group, row_width = self.column_shards[id(p)]
                    square = values.pow(2).sum(1)
                    with slowdown.waiting():
                        dist.all_reduce(square, group=group())
                    acc.index_add_(0, rows, square / row_width)
                else:
                    acc.index_add_(0, rows, values.pow(2).mean(1))
                scale = lr / (acc[rows].sqrt() + eps)
                p.index_add_(0, rows, -values * scale.unsqueeze(1))
        return None


def embedding_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, column_shards: Mapping | None = None
) -> torch.optim.Optimizer:
    if cfg.embedding_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.embedding_lr)
    return RowWiseAdagrad(params, lr=cfg.embedding_lr, column_shards=column_shards)


def dense_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.dense_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.dense_lr)
    return torch.optim.Adagrad(params, lr=cfg.dense_lr)


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """The embedding optimizer over `model.embedding_parameters()` and the dense one over
    `model.dense_parameters()` (a MultiTowerModel or a ShardedModel); none for an empty group
    (a rank may own no table). A ShardedModel's column shards share their row statistics. Tables
    whose kernel fuses the optimizer into its backward (model.embedding_backend = "fbgemm") are
    configured with it and get a stand-in that holds its state (dmt/modules/fused.py)."""
    optimizers = []
    emb, dense = model.embedding_parameters(), model.dense_parameters()
    tables = getattr(model, "module", model).embeddings
    column_shards = model.column_shards() if hasattr(model, "column_shards") else None
    if emb and getattr(tables, "fuses_optimizer", False):
        from dmt.modules.fused import FusedTables

        if column_shards and cfg.embedding_optimizer == "rowwise_adagrad":
            raise UserError(
                "the fbgemm backend fuses row-wise Adagrad per shard, so column shards cannot share their rows' "
                "statistics: shard those tables by rows (model.table_sharding) or use model.embedding_backend = 'torch'"
            )
        tables.configure(cfg.embedding_optimizer, cfg.embedding_lr)
        optimizers.append(FusedTables(tables))
    elif emb:
        optimizers.append(embedding_optimizer(emb, cfg, column_shards))
    if dense:
        optimizers.append(dense_optimizer(dense, cfg))
    return optimizers
