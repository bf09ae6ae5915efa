"""Tower Modules: per-sample dense modules that compress one tower's embeddings before they
leave the tower's host (docs/design.md, "Tower Modules").

The contract (any nn.Module may be a Tower Module): it maps the tower's concatenated pooled
embeddings [B, D_t] (D_t = the sum of the tower's feature widths, in the tower's feature order)
to [B, out_features], and it never mixes samples (no batch statistics such as BatchNorm), so
that running it on any split of the batch, on any rank, gives the same rows. `out_features` may
be an attribute; otherwise dmt reads it from one dry run. The compression ratio of a tower is
D_t / out_features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dmt.modules.dense import MLP, CrossNetwork, pairwise_dots


class IdentityTower(nn.Module):
    """[B, D] -> [B, D]: SPTT without compression; the flat model's math."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class DotCompressTower(nn.Module):
    """DLRM family: n embeddings of width d -> k = ceil(n / CR) embeddings of width d.

        X [B, n, d] --A [k, n]--> C [B, k, d]              linear compression
        X --pairwise dots--> P [B, n(n-1)/2]               within-tower interaction
        out = C + MLP([flatten(C), P]).view(B, k, d)       -> [B, k * d]

    A starts as the mean of k contiguous chunks of the tower and the MLP's last layer at zero,
    so training starts from plain chunk averaging and learns the interaction-aware residual.
    """

    def __init__(self, num_features: int, dim: int, compression_ratio: float, hidden: int) -> None:
        super().__init__()
        n, d = num_features, dim
        k = max(1, math.ceil(n / compression_ratio))
        self.num_features, self.dim, self.num_outputs = n, d, k
        self.in_features, self.out_features = n * d, k * d
        init = torch.zeros(k, n)
        for row, chunk in enumerate(torch.arange(n).tensor_split(k)):
            init[row, chunk] = 1.0 / len(chunk)
        self.compress = nn.Parameter(init)
        self.mlp = MLP(k * d + n * (n - 1) // 2, [hidden, k * d], last_activation=False)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        vectors = x.view(b, self.num_features, self.dim)
        compressed = torch.einsum("kn,bnd->bkd", self.compress, vectors)
        features = [compressed.reshape(b, -1)]
        if self.num_features > 1:
            features.append(pairwise_dots(vectors))
        residual = self.mlp(torch.cat(features, 1))
        return compressed.reshape(b, -1) + residual


class CrossCompressTower(nn.Module):
    """DCN family: [B, D_t] -> cross layers -> linear -> [B, ceil(D_t / CR)]."""

    def __init__(self, in_features: int, compression_ratio: float, layers: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = max(1, math.ceil(in_features / compression_ratio))
        self.cross = CrossNetwork(in_features, layers)
        self.project = nn.Linear(in_features, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.cross(x))
