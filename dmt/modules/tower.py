"""Tower Modules: per-sample dense modules that compress one tower's embeddings before they leave
the tower's host (SPTT sends their output across hosts, so their output width is the tower's
cross-host bytes per sample, divided by 4).

Every Tower Module maps a tower's concatenated pooled embeddings [B, n_t * d] to
[B, out_features]. None mixes samples (no batch statistics; LayerNorm normalises each sample on
its own), so running it on any split of the batch, on any rank, gives the same rows.

The compression ratio a config asks for is the ratio delivered: out_features = n_t * d / CR
exactly, in whole units of the family's granule (DLRM: one d-wide embedding, since the head takes
dot products of d-vectors; DCN: one float). A ratio that does not divide the tower into whole
units is refused (`output_width`).

    kind        DLRM family                        DCN family
    identity    IdentityTower                      IdentityTower
    compress    DotCompressTower                   CrossCompressTower
    residual    ResidualDotTower                   ResidualCrossTower

Any nn.Module may be a Tower Module (the contract dmt checks): it maps the tower's concatenated
pooled embeddings [B, D_t] (D_t = the sum of the tower's feature widths, in the tower's feature
order) to [B, out_features], and never mixes samples. `out_features` may be an attribute;
otherwise dmt reads it from one dry run. docs/design.md, "Tower Modules", says why they exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dmt.errors import UserError
from dmt.modules.dense import MLP, CrossNetwork, pairwise_dots

KINDS = ("identity", "compress", "residual")


def output_width(widths: list[int], compression_ratio: float, granule: int) -> int:
    """Floats per sample a tower of features `widths` wide sends at `compression_ratio`, in whole
    units of `granule` floats; a ratio that does not give a whole number is a UserError that names
    the nearest ratios this tower can deliver."""
    width = sum(widths)
    units = width / compression_ratio / granule
    whole = round(units)
    if whole >= 1 and abs(units - whole) <= 1e-6 * units:
        return whole * granule
    shape = f"{len(widths)} features x {widths[0]}" if len(set(widths)) == 1 else f"{len(widths)} features"
    unit = f"whole {granule}-float embeddings" if granule > 1 else "whole floats"
    near = sorted({max(1, math.floor(units)), min(width // granule, math.floor(units) + 1)})
    options = " or ".join(f"{width / (u * granule):.6g} ({u * granule} floats)" for u in near)
    raise UserError(
        f"compression ratio {compression_ratio:g} asks a tower of {shape} ({width} floats) for "
        f"{width / compression_ratio:.6g} floats, but its Tower Module sends {unit}: nearest ratios {options}"
    )


@dataclass(frozen=True)
class TowerOptions:
    """The Tower Module settings of a model config (each kind reads its own)."""

    hidden: int = 64  # compress, DLRM: width of the residual MLP's hidden layer
    cross_layers: int = 1  # compress and residual, DCN: cross layers inside the tower
    mlp: tuple[int, ...] = (256,)  # residual: hidden widths of the residual MLP
    attention_layers: int = 0  # residual, DLRM: self-attention blocks over the tower's features
    norm: bool = False  # residual: LayerNorm on the residual MLP's input
    projection_init: str = "fold"  # residual, DCN: "fold" or "default" (see ResidualCrossTower)
    cross_rank: int = 0  # residual, DCN: rank of the tower's cross weights (0: full rank)
    dots: bool = False  # residual, DCN: the residual MLP also reads the pairwise dots of the tower's embeddings


def make_tower_module(
    kind: str, family: str, widths: list[int], compression_ratio: float, options: TowerOptions
) -> nn.Module:
    """The Tower Module of `kind` ("identity", "compress", "residual") and `family` ("dlrm": every
    width the same d, outputs in whole d-vectors; "dcn": any widths, outputs in floats) for a
    tower whose features are `widths` wide (in the tower's order)."""
    width = sum(widths)
    if kind == "identity":
        return IdentityTower(width)
    if kind not in KINDS:
        raise UserError(f"unknown model.tower_module '{kind}'; allowed: {', '.join(KINDS)}")
    o, n = options, len(widths)
    if family == "dlrm":
        if len(set(widths)) != 1:
            raise UserError(f"DLRM's Tower Modules need one embedding width per tower, got {sorted(set(widths))}")
        if kind == "compress":
            return DotCompressTower(n, widths[0], compression_ratio, o.hidden)
        return ResidualDotTower(n, widths[0], compression_ratio, list(o.mlp), o.attention_layers, o.norm)
    if kind == "compress":
        return CrossCompressTower(width, compression_ratio, o.cross_layers, widths)
    if o.dots and len(set(widths)) != 1:
        raise UserError(f"model.tower_dots needs one embedding width per tower, got {sorted(set(widths))}")
    out = output_width(widths, compression_ratio, 1)
    return ResidualCrossTower(
        width, out, o.cross_layers, o.cross_rank, list(o.mlp), o.norm, o.projection_init, widths[0] if o.dots else None
    )


class IdentityTower(nn.Module):
    """[B, D] -> [B, D]: SPTT without compression; the flat model's math."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _chunk_mean(k: int, n: int) -> Tensor:
    """[k, n]: row r averages the r-th of k contiguous, near-equal chunks of n items."""
    init = torch.zeros(k, n)
    for row, chunk in enumerate(torch.arange(n).tensor_split(k)):
        init[row, chunk] = 1.0 / len(chunk)
    return init


class DotCompressTower(nn.Module):
    """DLRM family: n embeddings of width d -> k = n / CR embeddings of width d.

        X [B, n, d] --A [k, n]--> C [B, k, d]              linear compression
        X --pairwise dots--> P [B, n(n-1)/2]               within-tower interaction
        out = C + MLP([flatten(C), P]).view(B, k, d)       -> [B, k * d]

    A starts as the mean of k contiguous chunks of the tower and the MLP's last layer at zero,
    so training starts from plain chunk averaging and learns the interaction-aware residual.
    """

    def __init__(self, num_features: int, dim: int, compression_ratio: float, hidden: int) -> None:
        super().__init__()
        n, d = num_features, dim
        k = output_width([d] * n, compression_ratio, d) // d
        self.num_features, self.dim, self.num_outputs = n, d, k
        self.in_features, self.out_features = n * d, k * d
        self.compress = nn.Parameter(_chunk_mean(k, n))
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
    """DCN family: [B, D_t] -> cross layers -> linear -> [B, D_t / CR]."""

    def __init__(
        self, in_features: int, compression_ratio: float, layers: int, widths: list[int] | None = None
    ) -> None:
        """widths: the tower's feature widths (summing to in_features), only to name the tower in errors."""
        super().__init__()
        self.in_features = in_features
        self.out_features = output_width(widths or [in_features], compression_ratio, 1)
        self.cross = CrossNetwork(in_features, layers)
        self.project = nn.Linear(in_features, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.cross(x))


class FeatureAttention(nn.Module):
    """One pre-norm transformer block over a tower's feature vectors, per sample: [B, n, d] -> [B, n, d].

        H = X + Attn(LN(X)),  out = H + FFN(LN(H))      (FFN: d -> 4d -> d, ReLU)

    Both branches' last projections start at zero, so the block starts as the identity.
    """

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        if dim % heads:
            heads = 1
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = MLP(dim, [4 * dim, dim], last_activation=False)
        for layer in (self.out, self.ffn[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mixed = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1) @ v  # [B, h, n, d/h]
        x = x + self.out(mixed.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class ResidualDotTower(nn.Module):
    """DLRM family: n embeddings of width d -> k = n / CR embeddings of width d, with a residual MLP
    that sees the whole tower.

        X [B, n, d] --attention blocks (optional)--> H [B, n, d]
        C = A H  [B, k, d]                                  A [k, n] starts as the chunk mean
        R = MLP([flatten(H), pairwise dots of H])           [B, k * d], optional LayerNorm on its input
        out = flatten(C) + R                                -> [B, k * d]

    Unlike DotCompressTower, the MLP reads every embedding of the tower, not only their chunk
    means. The MLP's last layer starts at zero: training starts from chunk averaging (at CR 1 the
    identity).
    """

    def __init__(
        self, num_features: int, dim: int, compression_ratio: float, mlp: list[int], attention: int, norm: bool
    ) -> None:
        super().__init__()
        n, d = num_features, dim
        k = output_width([d] * n, compression_ratio, d) // d
        self.num_features, self.dim, self.num_outputs = n, d, k
        self.in_features, self.out_features = n * d, k * d
        self.attention = nn.Sequential(*[FeatureAttention(d) for _ in range(attention)])
        self.compress = nn.Parameter(_chunk_mean(k, n))
        width = n * d + n * (n - 1) // 2
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.mlp = MLP(width, [*mlp, k * d], last_activation=False)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        vectors = self.attention(x.view(b, self.num_features, self.dim))
        compressed = torch.einsum("kn,bnd->bkd", self.compress, vectors).reshape(b, -1)
        features = [vectors.reshape(b, -1)]
        if self.num_features > 1:
            features.append(pairwise_dots(vectors))
        return compressed + self.mlp(self.norm(torch.cat(features, 1)))


def fold_projection(out_features: int, in_features: int) -> Tensor:
    """[out, in]: output j averages the inputs i with i mod out = j. Its rows are orthogonal and at
    out = in it is the identity; for a tower of n d-wide embeddings and out = k d it averages
    coordinate c over every k-th embedding."""
    w = torch.zeros(out_features, in_features)
    cols = torch.arange(in_features)
    w[cols % out_features, cols] = 1.0
    return w / w.sum(1, keepdim=True)


class ResidualCrossTower(nn.Module):
    """DCN family: [B, D] -> [B, D'] (D' = D / CR) with a projection and a residual MLP.

        H = cross(x)  [B, D]                 cross layers, full rank or rank r
        out = P H + MLP(m)                   P [D', D]; MLP: -> hidden... -> D', last layer at zero
        m = x, or [x, pairwise dots]         with dots_dim = d: the dots of the tower's n = D / d embeddings

    projection_init "fold" starts P as `fold_projection` (averages, the identity at CR 1), so
    compression starts from the tower's own values; "default" is nn.Linear's random init. With
    norm, the MLP reads LayerNorm(m).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        cross_layers: int,
        cross_rank: int,
        mlp: list[int],
        norm: bool,
        projection_init: str,
        dots_dim: int | None = None,
    ) -> None:
        super().__init__()
        if projection_init not in ("fold", "default"):
            raise UserError(f"unknown model.tower_projection_init '{projection_init}'; allowed: fold, default")
        self.in_features, self.out_features = in_features, out_features
        self.cross = CrossNetwork(in_features, cross_layers, cross_rank)
        self.project = nn.Linear(in_features, out_features)
        if projection_init == "fold":
            with torch.no_grad():
                self.project.weight.copy_(fold_projection(out_features, in_features))
                self.project.bias.zero_()
        self.dots_dim = dots_dim
        n = in_features // dots_dim if dots_dim else 0
        width = in_features + n * (n - 1) // 2
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.mlp = MLP(width, [*mlp, out_features], last_activation=False) if mlp else None
        if self.mlp is not None:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.cross(x))
        if self.mlp is None:
            return out
        features = [x]
        if self.dots_dim and x.shape[1] > self.dots_dim:
            features.append(pairwise_dots(x.view(x.shape[0], -1, self.dots_dim)))
        return out + self.mlp(self.norm(torch.cat(features, 1)))
