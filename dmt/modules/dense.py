"""Dense building blocks: MLP, DLRM's dot interaction, DCNv2's cross network."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """[B, in_features] -> [B, widths[-1]]; ReLU after every layer but (optionally) the last."""

    def __init__(self, in_features: int, widths: list[int], last_activation: bool = True) -> None:
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            layers.append(nn.Linear(in_features, w))
            if last_activation or i < len(widths) - 1:
                layers.append(nn.ReLU())
            in_features = w
        super().__init__(*layers)
        self.out_features = in_features


def pairwise_dots(vectors: Tensor) -> Tensor:
    """[B, n, d] -> [B, n*(n-1)/2]: <v_i, v_j> for i < j, in row-major upper-triangle order."""
    n = vectors.shape[1]
    gram = torch.bmm(vectors, vectors.transpose(1, 2))
    i, j = torch.triu_indices(n, n, offset=1, device=vectors.device)
    return gram[:, i, j]


def pair_index(n: int) -> dict[tuple[int, int], int]:
    """(i, j) with i < j -> column of `pairwise_dots` for n vectors."""
    i, j = torch.triu_indices(n, n, offset=1)
    return {(a, b): k for k, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True))}


class CrossNetwork(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, shapes [B, D] -> [B, D].

    rank = 0 gives full D x D weights; rank r > 0 factors W_l = U_l V_l^T with U, V [D, r].
    """

    def __init__(self, width: int, layers: int, rank: int = 0) -> None:
        super().__init__()
        self.width, self.rank = width, rank
        if rank == 0:
            self.weights = nn.ParameterList([nn.Parameter(torch.empty(width, width)) for _ in range(layers)])
        else:
            self.u = nn.ParameterList([nn.Parameter(torch.empty(width, rank)) for _ in range(layers)])
            self.v = nn.ParameterList([nn.Parameter(torch.empty(width, rank)) for _ in range(layers)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(width)) for _ in range(layers)])
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer, b in enumerate(self.biases):
            if self.rank == 0:
                mixed = x @ self.weights[layer].T
            else:
                mixed = (x @ self.v[layer]) @ self.u[layer].T
            x = x0 * (mixed + b) + x
        return x

    def permute_(self, perm: Tensor) -> None:
        """Re-express the same function for inputs whose column c is old column perm[c]."""
        with torch.no_grad():
            for b in self.biases:
                b.copy_(b[perm])
            if self.rank == 0:
                for w in self.weights:
                    w.copy_(w[perm][:, perm])
            else:
                for u, v in zip(self.u, self.v, strict=True):
                    u.copy_(u[perm])
                    v.copy_(v[perm])
