"""DCNv2 and DMT-DCN: cross network and deep MLP over [dense, tower outputs].

x0 = [bottom_mlp(dense) or dense, tower outputs...]  [B, D]
stacked:  logit = out(deep(cross(x0)))
parallel: logit = out([cross(x0), deep(x0)])

The head concatenates its inputs, so tables and tower outputs may have any widths.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dmt.models.base import MultiTowerModel, build_tower_modules
from dmt.modules.dense import MLP, CrossNetwork
from dmt.modules.embedding import EmbeddingBagCollection
from dmt.modules.tower import TowerOptions
from dmt.specs import FeatureSpec


class DCNHead(nn.Module):
    """dense [B, num_dense], tower outputs [B, D'_t] -> logits [B].

    >>> head = DCNHead(num_dense=3, tower_widths=[8, 5], cross_layers=2, deep_mlp=[16])
    >>> head.width  # cross network input: 3 dense + 8 + 5
    16
    >>> head(torch.zeros(4, 3), [torch.zeros(4, 8), torch.zeros(4, 5)]).shape
    torch.Size([4])
    """

    def __init__(
        self,
        num_dense: int,
        tower_widths: list[int],
        bottom_mlp: list[int] | None = None,
        cross_layers: int = 2,
        cross_rank: int = 0,
        structure: str = "stacked",
        deep_mlp: list[int] | None = None,
    ) -> None:
        super().__init__()
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        self.bottom = MLP(num_dense, bottom_mlp) if bottom_mlp and num_dense else None
        self.dense_width = self.bottom.out_features if self.bottom is not None else num_dense
        self.width = self.dense_width + sum(tower_widths)
        self.structure = structure
        self.cross = CrossNetwork(self.width, cross_layers, cross_rank)
        self.deep = MLP(self.width, deep_mlp or [])
        final = self.deep.out_features + (self.width if structure == "parallel" else 0)
        self.out = nn.Linear(final, 1)

    def forward(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        lead = [self.bottom(dense) if self.bottom is not None else dense] if self.dense_width else []
        x0 = torch.cat(lead + tower_outputs, 1)
        if self.structure == "stacked":
            return self.out(self.deep(self.cross(x0))).squeeze(1)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], 1)).squeeze(1)

    def permute_features(self, flat_index: list[int], widths: list[int]) -> None:
        """Re-express the head for inputs whose feature block i is the old block flat_index[i];
        widths: the old blocks' widths, in the old order."""
        starts = [self.dense_width]
        for w in widths[:-1]:
            starts.append(starts[-1] + w)
        cols = list(range(self.dense_width))
        for i in flat_index:
            cols.extend(range(starts[i], starts[i] + widths[i]))
        perm = torch.tensor(cols)
        self.cross.permute_(perm)
        with torch.no_grad():
            if len(self.deep):
                self.deep[0].weight.copy_(self.deep[0].weight[:, perm])
            if self.structure == "parallel" or not len(self.deep):
                width = perm.numel()
                self.out.weight[:, :width].copy_(self.out.weight[:, :width][:, perm])


class DCN(MultiTowerModel):
    """DCNv2 (towers None: the flat model) or DMT-DCN: tables of width `dim` (or `dims[table]`),
    Tower Modules "identity", "compress" (CrossCompressTower: cross layers, then a linear map) or
    "residual" (ResidualCrossTower), each sending D_t / CR_t floats (dmt/modules/tower.py)."""

    family = "dcn"

    def __init__(
        self,
        features: list[FeatureSpec],
        num_dense: int,
        towers: list[list[str]] | None = None,
        dim: int = 16,
        pooling: str = "mean",
        bottom_mlp: list[int] | None = None,
        deep_mlp: list[int] | None = None,
        cross_layers: int = 2,
        cross_rank: int = 0,
        structure: str = "stacked",
        tower_module: str = "identity",
        compression_ratios: list[float] | None = None,
        tower_options: TowerOptions | None = None,
        dims: Mapping[str, int] | None = None,
    ) -> None:
        embeddings = EmbeddingBagCollection.from_features(features, dim, pooling, dims)
        towers = towers or [[f.name for f in features]]
        tower_modules = build_tower_modules(
            towers, embeddings.feature_dims, "dcn", tower_module, compression_ratios, tower_options or TowerOptions()
        )
        head = DCNHead(
            num_dense,
            [tm.out_features for tm in tower_modules],
            bottom_mlp,
            cross_layers,
            cross_rank,
            structure,
            deep_mlp,
        )
        super().__init__(embeddings, head, towers, tower_modules)
