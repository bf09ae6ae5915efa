"""A tiny click generator for the examples: one-hot ids, dense features, and labels from pairwise
interactions of hidden per-id vectors, so that a model has something to learn.

    batches = global_batches(features, num_dense=4, batch_size=512, seed=0)   # endless, deterministic
    batch = next(batches)   # dmt.Batch: dense [512, 4], sparse (512 samples), labels [512]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

import dmt


def global_batches(
    features: list[dmt.FeatureSpec], num_dense: int, batch_size: int, seed: int = 0, stream: int = 0
) -> Iterator[dmt.Batch]:
    """Endless batches of `batch_size` samples; the same (seed, stream) gives the same batches."""
    teacher = torch.Generator().manual_seed(seed)
    hidden = {f.table: torch.randn(f.num_embeddings, 3, generator=teacher) for f in features}
    weights = torch.randn(num_dense, generator=teacher) / max(num_dense, 1) ** 0.5
    pairs = [(i, i + 1) for i in range(0, len(features) - 1, 2)]  # neighbours interact
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1 + stream)
    while True:
        ids = [torch.randint(0, f.num_embeddings, (batch_size,), generator=g) for f in features]
        dense = torch.randn(batch_size, num_dense, generator=g)
        vectors = [hidden[f.table][i] for f, i in zip(features, ids, strict=True)]
        logit = dense @ weights + sum((vectors[a] * vectors[b]).sum(1) for a, b in pairs) / len(pairs) ** 0.5
        labels = torch.bernoulli(torch.sigmoid(logit - 0.5), generator=g)
        sparse = dmt.KeyedJagged(
            keys=[f.name for f in features],
            values=torch.cat(ids),
            lengths=torch.ones(len(features) * batch_size, dtype=torch.long),
        )
        yield dmt.Batch(dense=dense, sparse=sparse, labels=labels)
