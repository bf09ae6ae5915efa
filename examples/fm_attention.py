"""A factorisation machine over towers compressed by attention: a model dmt does not ship, written
against dmt's public API only.

    tower t: n_t feature vectors [B, n_t, d] --self-attention, then k_t learned queries attend to
             them--> k_t vectors [B, k_t * d]            (compression ratio n_t / k_t)
    head:    the dense features projected to one vector, and every tower vector: a second-order
             FM  0.5 * ((sum v)^2 - sum v^2)  summed over d, plus a linear term on the dense features

Run it on 2 hosts x 2 ranks (it verifies, trains and evaluates; see harness.py):

    torchrun --nproc-per-node 4 examples/fm_attention.py --ranks-per-host 2

`build` also lets the CLI train it: PYTHONPATH=examples dmt train --config synthetic_dmt_dlrm
--set model.arch=fm_attention:build --out runs/fm
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import dmt


class AttentionTower(nn.Module):
    """[B, n * d] -> [B, k * d]: self-attention among the tower's n vectors (per sample), then k
    learned queries pool them into k vectors; a residual keeps the queries' view of the input."""

    def __init__(self, num_features: int, dim: int, num_outputs: int, heads: int = 2) -> None:
        super().__init__()
        self.n, self.d, self.k = num_features, dim, num_outputs
        self.in_features, self.out_features = num_features * dim, num_outputs * dim
        # no projection biases: a key bias shifts every score of a query equally, so its gradient is
        # zero up to rounding, and Adam would turn that rounding noise into full-size steps
        self.mix = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.queries = nn.Parameter(torch.randn(num_outputs, dim) / math.sqrt(dim))
        self.pool = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        v = x.view(-1, self.n, self.d)
        v = self.norm(v + self.mix(v, v, v, need_weights=False)[0])
        q = self.queries.expand(v.shape[0], -1, -1)
        return self.pool(q, v, v, need_weights=False)[0].reshape(-1, self.k * self.d)


class FMHead(nn.Module):
    """dense [B, num_dense], tower outputs [B, k_t * d] -> logits [B]."""

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.dense_vector = nn.Linear(num_dense, dim)
        self.linear = nn.Linear(num_dense, 1)

    def forward(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        b = dense.shape[0]
        vectors = torch.cat(
            [self.dense_vector(dense).unsqueeze(1), *(o.view(b, -1, self.dim) for o in tower_outputs)], 1
        )
        fm = 0.5 * (vectors.sum(1).pow(2) - vectors.pow(2).sum(1)).sum(1)
        return self.linear(dense).squeeze(1) + fm


def fm_attention(
    features: list[dmt.FeatureSpec], num_dense: int, towers: list[list[str]], dim: int = 8, compression_ratio: int = 3
) -> dmt.MultiTowerModel:
    embeddings = dmt.EmbeddingBagCollection.from_features(features, dim)
    tower_modules = [AttentionTower(len(t), dim, max(1, len(t) // compression_ratio)) for t in towers]
    return dmt.MultiTowerModel(embeddings, FMHead(num_dense, dim), towers, tower_modules)


def build(inputs: dmt.ModelInputs) -> dmt.MultiTowerModel:
    """The CLI's entry (model.arch = "fm_attention:build"): the config's towers (or two halves of the
    feature order), model.embedding_dim, and `model.options.compression_ratio` (default 3)."""
    names = [f.name for f in inputs.features]
    towers = inputs.towers or [names[: len(names) // 2], names[len(names) // 2 :]]
    ratio = int(inputs.config.options.get("compression_ratio", 3))
    return fm_attention(inputs.features, inputs.num_dense, towers, inputs.config.embedding_dim, ratio)


FEATURES = [dmt.FeatureSpec(f"f{i}", f"t{i}", rows) for i, rows in enumerate([500, 40, 300, 25, 800, 60])]
TOWERS = [["f0", "f1", "f2"], ["f3", "f4", "f5"]]  # one tower per host, 3 vectors -> 1 each

if __name__ == "__main__":
    from harness import run

    run(lambda: fm_attention(FEATURES, 4, TOWERS), FEATURES, num_dense=4)
