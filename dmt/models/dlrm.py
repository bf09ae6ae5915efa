"""DLRM and DMT-DLRM: bottom MLP, dot interaction over embeddings, top MLP.

Head input: the dense vector z = bottom_mlp(dense) [B, d] and K tower embeddings [B, K, d]
(K = number of features for the flat model, sum_t ceil(n_t / CR_t) with Tower Modules).
Top MLP input: [z, <v_i, v_j> for i < j over the K + 1 vectors] -> logit.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from dmt.models.base import MultiTowerModel
from dmt.modules.dense import MLP, pair_index, pairwise_dots
from dmt.modules.tower import DotCompressTower, IdentityTower
from dmt.specs import FeatureSpec


class DLRM(MultiTowerModel):
    family = "dlrm"

    def __init__(
        self,
        features: list[FeatureSpec],
        num_dense: int,
        towers: list[list[str]],
        dim: int = 16,
        pooling: str = "mean",
        bottom_mlp: list[int] | None = None,
        top_mlp: list[int] | None = None,
        tower_module: str = "identity",
        compression_ratios: list[float] | None = None,
        tower_hidden: int = 64,
        tables: Collection[str] | None = None,
    ) -> None:
        super().__init__(features, towers, dim, pooling, tables)
        ratios = compression_ratios or [1.0] * len(towers)
        for tower, cr in zip(self.towers, ratios, strict=True):
            if tower_module == "identity":
                self.tower_modules.append(IdentityTower(len(tower) * dim))
            else:
                self.tower_modules.append(DotCompressTower(len(tower), dim, cr, tower_hidden))
        self.has_dense = num_dense > 0
        self.bottom = MLP(num_dense, bottom_mlp or [dim]) if self.has_dense else None
        if self.bottom is not None and self.bottom.out_features != dim:
            raise ValueError(f"bottom MLP must end in the embedding dim {dim}")
        self.num_vectors = sum(tm.out_features // dim for tm in self.tower_modules) + int(self.has_dense)
        pairs = self.num_vectors * (self.num_vectors - 1) // 2
        self.top = MLP(dim * int(self.has_dense) + pairs, [*(top_mlp or []), 1], last_activation=False)

    def head(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        """dense [B, num_dense], tower outputs [B, k_t * d] -> logits [B]."""
        b = tower_outputs[0].shape[0]
        vectors = [o.view(b, -1, self.dim) for o in tower_outputs]
        inputs = []
        if self.bottom is not None:
            z = self.bottom(dense)
            vectors.insert(0, z.unsqueeze(1))
            inputs.append(z)
        inputs.append(pairwise_dots(torch.cat(vectors, 1)))
        return self.top(torch.cat(inputs, 1)).squeeze(1)

    def _permute_head(self, flat_index: list[int]) -> None:
        shift = int(self.has_dense)  # vector 0 is the dense vector
        vec = list(range(shift)) + [i + shift for i in flat_index]
        pairs = pair_index(self.num_vectors)  # the same pair layout in both models, over permuted vectors
        lead = self.dim * shift
        cols = list(range(lead)) + [0] * len(pairs)
        for (a, b), col in pairs.items():
            cols[lead + col] = lead + pairs[tuple(sorted((vec[a], vec[b])))]
        first: nn.Linear = self.top[0]
        with torch.no_grad():
            first.weight.copy_(first.weight[:, cols])
