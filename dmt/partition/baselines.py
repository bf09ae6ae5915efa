"""Baseline partitions over must-link items (features sharing a table stay together).

All return labels [num_items] in [0, k), every tower non-empty (needs num_items >= k).

- sequential: items in order of their first feature, cut into k contiguous chunks of about equal
  feature count. Without shared tables this is exactly the feature order cut into equal chunks;
  an item whose features lie far apart sits at its first feature (the "repair" that keeps a
  shared table whole).
- random: a seeded permutation of the items, cut the same way.
- greedy (LPT): items by decreasing cost, each to the least-loaded tower (lowest index on ties);
  balances cost and ignores interactions.
"""

from __future__ import annotations

import numpy as np

from dmt.partition.kmeans import lpt


def _cut(sizes: list[int], k: int) -> np.ndarray:
    """Contiguous chunks of about equal total size, none empty -> labels [len(sizes)] (needs
    len(sizes) >= k). Item i goes to chunk floor(size before it * k / total), clipped so that labels
    step by at most 1 and enough items remain for the chunks still to fill."""
    n, total = len(sizes), sum(sizes)
    labels = np.zeros(n, dtype=np.int64)
    before, prev = 0, 0
    for i, size in enumerate(sizes):
        ideal = before * k // total
        lo = max(prev, k - (n - i))
        hi = min(prev + 1, k - 1) if i else 0
        labels[i] = prev = min(max(ideal, lo), hi)
        before += size
    return labels


def sequential(items: list[list[int]], k: int) -> np.ndarray:
    return _cut([len(it) for it in items], k)


def random(items: list[list[int]], k: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(items))
    labels = np.empty(len(items), dtype=np.int64)
    labels[order] = _cut([len(items[i]) for i in order], k)
    return labels


def greedy(loads: np.ndarray, k: int) -> np.ndarray:
    """Longest processing time first over item loads [n]."""
    return lpt(loads, k)
