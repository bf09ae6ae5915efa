"""Bytes of a deduplicated id message (dmt/distributed/idcodec.py), and what they depend on in the data.

One message carries S samples of features F (a member's share of an input exchange):

    4 (1 + |F|)                              header: bits per length, distinct ids per feature
    ceil((|F| S b_len                        one bit stream: lengths, b_len = bits_for(max length + 1),
          + sum over f of u_f bits_for(rows_f) + n_f bits_for(u_f)) / 8)
                                             then the distinct ids and the inverse index
    4 N                                      weights, only for weighted features

n_f = S * pooling factor ids, u_f of them distinct. u_f and the longest bag are properties of the
data, not of the model; `IdStatistics` gives their expectation:

    SaturatedIds   one-hot or fixed lengths (the pooling factor), every row of a table in every
                   message (u_f = min(rows, n_f)): exact for data whose ids are known, as in tests
    ZipfIds        the synthetic source (dmt/data/synthetic.py): ids from a Zipf law over each
                   table, lengths 1 + Poisson(pooling - 1) clipped at max_pooling; computed, not
                   sampled: E[u_f] = sum over rows k of 1 - G(1 - p_k)^S, G(z) = E[z^length]
                   (the exact expectation; bits_for(u_f) is taken at that expectation)
    MeasuredIds    any source: counted on its first training samples
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy.stats import poisson

from dmt.distributed.idcodec import HEADER_BYTES, bits_for
from dmt.specs import FeatureSpec


class IdStatistics(Protocol):
    def unique(self, feature: FeatureSpec, samples: float) -> float:
        """Expected distinct ids of `feature` among `samples` samples."""
        ...

    def length_bits(self, features: Sequence[FeatureSpec], samples: float) -> float:
        """Expected bits per length of a message of `samples` samples of `features`."""
        ...


def message_bytes(
    features: Sequence[FeatureSpec], samples: float, stats: IdStatistics, weighted: bool = False
) -> float:
    """Bytes of one deduplicated message (the module docstring's sum); 0 for no features."""
    if not features:
        return 0.0
    bits = len(features) * samples * stats.length_bits(features, samples)
    weights = 0.0
    for f in features:
        n = samples * f.pooling_factor
        u = stats.unique(f, samples)
        bits += u * bits_for(f.num_embeddings) + n * bits_for(math.ceil(u - 1e-9))
        weights += 4.0 * n if weighted else 0.0
    return HEADER_BYTES * (1 + len(features)) + float(math.ceil(bits / 8 - 1e-9)) + weights


class SaturatedIds:
    """Lengths are the pooling factors exactly; every message holds every row (u = min(rows, ids))."""

    def unique(self, feature: FeatureSpec, samples: float) -> float:
        return float(min(feature.num_embeddings, samples * feature.pooling_factor))

    def length_bits(self, features: Sequence[FeatureSpec], samples: float) -> float:
        return float(bits_for(math.ceil(max(f.pooling_factor for f in features)) + 1))


class ZipfIds:
    """The synthetic source's id law (see the module docstring)."""

    def __init__(self, zipf_exponent: float, max_pooling: int) -> None:
        self.exponent, self.max_pooling = zipf_exponent, max_pooling
        self._cache: dict[tuple, float] = {}

    def _length_pmf(self, pooling: float) -> np.ndarray:
        """P(length = l) for l = 0 .. max_pooling: 1 + Poisson(pooling - 1), clipped."""
        pmf = np.zeros(self.max_pooling + 1)
        cdf = poisson.cdf(np.arange(self.max_pooling), pooling - 1.0)  # P(length <= l + 1)
        pmf[1 : self.max_pooling] = np.diff(np.concatenate(([0.0], cdf[: self.max_pooling - 1])))
        pmf[self.max_pooling] = 1.0 - pmf.sum()
        return pmf

    def unique(self, feature: FeatureSpec, samples: float) -> float:
        key = ("u", feature.num_embeddings, feature.pooling_factor, samples)
        if key not in self._cache:
            p = np.arange(1, feature.num_embeddings + 1, dtype=np.float64) ** -self.exponent
            p /= p.sum()
            pmf = self._length_pmf(feature.pooling_factor)
            miss_one = np.polynomial.polynomial.polyval(1.0 - p, pmf)  # E[(1 - p_k)^length] per row
            self._cache[key] = float(np.sum(1.0 - miss_one**samples))
        return self._cache[key]

    def length_bits(self, features: Sequence[FeatureSpec], samples: float) -> float:
        cdf = np.ones(self.max_pooling + 1)  # P(longest bag <= m)
        for f in features:
            cdf *= np.cumsum(self._length_pmf(f.pooling_factor)) ** samples
        pmf = np.diff(np.concatenate(([0.0], cdf)))
        return float(sum(pmf[m] * bits_for(m + 1) for m in range(self.max_pooling + 1)))


class MeasuredIds:
    """Distinct ids and the longest bag counted on a source's first `samples` training samples: per
    feature, windows of the message's sample count, averaged (all of them when a message holds more)."""

    def __init__(self, source, samples: int = 4096) -> None:
        batch = next(source.train_batches(samples))
        self._parts = {k: (v.numpy(), n.numpy()) for k, (v, n, _) in batch.sparse.per_key().items()}
        self._cache: dict[tuple, float] = {}

    def _windows(self, name: str, samples: float) -> list[tuple[np.ndarray, np.ndarray]]:
        values, lengths = self._parts[name]
        s = max(1, min(int(samples), lengths.size))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        return [(values[offsets[a] : offsets[a + s]], lengths[a : a + s]) for a in range(0, lengths.size - s + 1, s)]

    def unique(self, feature: FeatureSpec, samples: float) -> float:
        key = ("u", feature.name, samples)
        if key not in self._cache:
            self._cache[key] = float(np.mean([np.unique(v).size for v, _ in self._windows(feature.name, samples)]))
        return self._cache[key]

    def length_bits(self, features: Sequence[FeatureSpec], samples: float) -> float:
        longest = max(int(n.max(initial=0)) for f in features for _, n in self._windows(f.name, samples))
        return float(bits_for(longest + 1))
