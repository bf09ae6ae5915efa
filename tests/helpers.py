"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from dmt.sparse import Batch, KeyedJagged
from dmt.specs import FeatureSpec


def tiny_features(num: int = 6, shared: bool = True) -> list[FeatureSpec]:
    """Features over tables of very different sizes; f0 and f1 share a table when `shared`."""
    sizes = [7, 50, 300, 11, 1000, 5]
    feats = []
    for i in range(num):
        table = "t0" if shared and i == 1 else f"t{i}"
        rows = sizes[0] if shared and i == 1 else sizes[i % len(sizes)]
        feats.append(FeatureSpec(f"f{i}", table, rows, pooling_factor=1.0 + (i % 3)))
    return feats


def random_batch(
    features: list[FeatureSpec], batch_size: int, num_dense: int, seed: int = 0, weights: bool = False
) -> Batch:
    """Multi-hot batch, lengths 0..4 (empty bags included)."""
    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for f in features:
        ln = torch.randint(0, 5, (batch_size,), generator=g)
        lengths.append(ln)
        values.append(torch.randint(0, f.num_embeddings, (int(ln.sum()),), generator=g))
    vals = torch.cat(values)
    sparse = KeyedJagged(
        keys=[f.name for f in features],
        values=vals,
        lengths=torch.cat(lengths),
        weights=torch.rand(vals.numel(), generator=g) if weights else None,
    )
    return Batch(
        dense=torch.randn(batch_size, num_dense, generator=g),
        sparse=sparse,
        labels=torch.randint(0, 2, (batch_size,), generator=g).float(),
    )
