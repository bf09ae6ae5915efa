"""DCNv2 and DMT-DCN: cross network and deep MLP over [dense, tower outputs].

x0 = [bottom_mlp(dense) or dense, tower outputs...]  [B, D]
stacked:  logit = out(deep(cross(x0)))
parallel: logit = out([cross(x0), deep(x0)])
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from dmt.models.base import MultiTowerModel
from dmt.modules.dense import MLP, CrossNetwork
from dmt.modules.tower import CrossCompressTower, IdentityTower
from dmt.specs import FeatureSpec


class DCN(MultiTowerModel):
    family = "dcn"

    def __init__(
        self,
        features: list[FeatureSpec],
        num_dense: int,
        towers: list[list[str]],
        dim: int = 16,
        pooling: str = "mean",
        bottom_mlp: list[int] | None = None,
        deep_mlp: list[int] | None = None,
        cross_layers: int = 2,
        cross_rank: int = 0,
        structure: str = "stacked",
        tower_module: str = "identity",
        compression_ratios: list[float] | None = None,
        tower_cross_layers: int = 1,
        tables: Collection[str] | None = None,
    ) -> None:
        super().__init__(features, towers, dim, pooling, tables)
        ratios = compression_ratios or [1.0] * len(towers)
        for tower, cr in zip(self.towers, ratios, strict=True):
            width = len(tower) * dim
            if tower_module == "identity":
                self.tower_modules.append(IdentityTower(width))
            else:
                self.tower_modules.append(CrossCompressTower(width, cr, tower_cross_layers))
        self.bottom = MLP(num_dense, bottom_mlp) if bottom_mlp and num_dense else None
        self.dense_width = self.bottom.out_features if self.bottom is not None else num_dense
        width = self.dense_width + sum(tm.out_features for tm in self.tower_modules)
        self.structure = structure
        self.cross = CrossNetwork(width, cross_layers, cross_rank)
        self.deep = MLP(width, deep_mlp or [])
        final = self.deep.out_features + (width if structure == "parallel" else 0)
        self.out = nn.Linear(final, 1)

    def head(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        """dense [B, num_dense], tower outputs [B, D'_t] -> logits [B]."""
        lead = [self.bottom(dense) if self.bottom is not None else dense] if self.dense_width else []
        x0 = torch.cat(lead + tower_outputs, 1)
        if self.structure == "stacked":
            return self.out(self.deep(self.cross(x0))).squeeze(1)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], 1)).squeeze(1)

    def _permute_head(self, flat_index: list[int]) -> None:
        d, lead = self.dim, self.dense_width
        cols = list(range(lead))
        for i in flat_index:
            cols.extend(range(lead + i * d, lead + (i + 1) * d))
        perm = torch.tensor(cols)
        self.cross.permute_(perm)
        with torch.no_grad():
            if len(self.deep):
                self.deep[0].weight.copy_(self.deep[0].weight[:, perm])
            if self.structure == "parallel" or not len(self.deep):
                width = perm.numel()
                self.out.weight[:, :width].copy_(self.out.weight[:, :width][:, perm])
