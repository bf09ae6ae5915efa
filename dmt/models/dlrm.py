"""DLRM and DMT-DLRM: bottom MLP, dot interaction over embeddings, top MLP.

Head input: the dense vector z = bottom_mlp(dense) [B, d] and K tower embeddings [B, K, d]
(K = number of features for the flat model, sum_t k_t with Tower Modules that output k_t
embeddings of width d). Top MLP input: [z, <v_i, v_j> for i < j over the K + 1 vectors] -> logit.
The dot interaction needs one width: every table and every tower output is d wide.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmt.models.base import MultiTowerModel, build_tower_modules
from dmt.modules.dense import MLP, pair_index, pairwise_dots
from dmt.modules.embedding import EmbeddingBagCollection
from dmt.modules.tower import TowerOptions
from dmt.specs import FeatureSpec


class DLRMHead(nn.Module):
    """dense [B, num_dense], tower outputs [B, k_t * d] -> logits [B].

    >>> head = DLRMHead(num_dense=3, dim=4, tower_widths=[8, 4], bottom_mlp=[4], top_mlp=[16])
    >>> head.num_vectors  # z and 2 + 1 tower vectors
    4
    >>> head(torch.zeros(5, 3), [torch.zeros(5, 8), torch.zeros(5, 4)]).shape
    torch.Size([5])
    """

    def __init__(
        self,
        num_dense: int,
        dim: int,
        tower_widths: list[int],
        bottom_mlp: list[int] | None = None,
        top_mlp: list[int] | None = None,
    ) -> None:
        super().__init__()
        bad = [w for w in tower_widths if w % dim]
        if bad:
            raise ValueError(f"DLRM's dot interaction needs tower outputs in multiples of d={dim}, got widths {bad}")
        self.dim = dim
        self.has_dense = num_dense > 0
        self.bottom = MLP(num_dense, bottom_mlp or [dim]) if self.has_dense else None
        if self.bottom is not None and self.bottom.out_features != dim:
            raise ValueError(f"bottom MLP must end in the embedding dim {dim}")
        self.num_vectors = sum(w // dim for w in tower_widths) + int(self.has_dense)
        pairs = self.num_vectors * (self.num_vectors - 1) // 2
        self.top = MLP(dim * int(self.has_dense) + pairs, [*(top_mlp or []), 1], last_activation=False)

    def forward(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        b = tower_outputs[0].shape[0]
        vectors = [o.view(b, -1, self.dim) for o in tower_outputs]
        inputs = []
        if self.bottom is not None:
            z = self.bottom(dense)
            vectors.insert(0, z.unsqueeze(1))
            inputs.append(z)
        inputs.append(pairwise_dots(torch.cat(vectors, 1)))
        return self.top(torch.cat(inputs, 1)).squeeze(1)

    def permute_features(self, flat_index: list[int], widths: list[int]) -> None:
        """Re-express the head for inputs whose feature vector i is the old vector flat_index[i]
        (widths: unused, every vector is d wide)."""
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


class DLRM(MultiTowerModel):
    """DLRM (towers None: the flat model) or DMT-DLRM: tables of width `dim`, Tower Modules
    "identity", "compress" (DotCompressTower) or "residual" (ResidualDotTower), each sending
    n_t / CR_t embeddings of width d (dmt/modules/tower.py)."""

    family = "dlrm"

    def __init__(
        self,
        features: list[FeatureSpec],
        num_dense: int,
        towers: list[list[str]] | None = None,
        dim: int = 16,
        pooling: str = "mean",
        bottom_mlp: list[int] | None = None,
        top_mlp: list[int] | None = None,
        tower_module: str = "identity",
        compression_ratios: list[float] | None = None,
        tower_options: TowerOptions | None = None,
    ) -> None:
        embeddings = EmbeddingBagCollection.from_features(features, dim, pooling)
        towers = towers or [[f.name for f in features]]
        tower_modules = build_tower_modules(
            towers, embeddings.feature_dims, "dlrm", tower_module, compression_ratios, tower_options or TowerOptions()
        )
        head = DLRMHead(num_dense, dim, [tm.out_features for tm in tower_modules], bottom_mlp, top_mlp)
        super().__init__(embeddings, head, towers, tower_modules)
