"""Bytes of a deduplicated id message (dmt/distributed/idcodec.py), and what they depend on in the data.

One message carries S samples of features F (a member's share of an input exchange):

    4 (1 + |F|)                              header: bits per length, distinct ids per feature
    ceil((|F| S b_len                        one bit stream: lengths, b_len = bits_for(max length + 1),
          + sum over f of u_f bits_for(rows_f) + n_f bits_for(u_f)) / 8)
                                             then the distinct ids and the inverse index
    4 N                                      weights, only for weighted features

Each f is an `IdUnit`: a feature's ids that fall in rows [lo, hi) of its table (all rows for a
table placed whole; one row shard's range otherwise, dmt/distributed/shards.py), so that
rows_f = hi - lo and a bag's length is the count of its ids in the range. n_f = S * pooling factor *
share ids (share = rows_f / table rows), u_f of them distinct. u_f and the longest bag are
properties of the data, not of the model; `IdStatistics` gives their expectation:

    SaturatedIds   one-hot or fixed lengths (the pooling factor), every row of a unit in every
                   message (u_f = min(rows_f, n_f)): exact for data whose ids are known, as in tests
    ZipfIds        the synthetic source (dmt/data/synthetic.py): ids from a Zipf law over each
                   table, lengths 1 + Poisson(pooling - 1) clipped at max_pooling; computed, not
                   sampled: E[u_f] = sum over rows k of 1 - G(1 - p_k)^S, G(z) = E[z^length]
                   (the exact expectation; bits_for(u_f) is taken at that expectation). The source
                   maps Zipf ranks to ids through a random permutation, so a row range holds each
                   rank with probability share: a shard's E[u_f] is share times the table's, and its
                   bag lengths are the table's thinned by share (each id in the range with that
                   probability, independently)
    MeasuredIds    any source: counted on its first training samples, in the unit's rows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.stats import binom, poisson

from dmt.distributed.idcodec import HEADER_BYTES, bits_for
from dmt.specs import FeatureSpec


@dataclass(frozen=True)
class IdUnit:
    """The ids of `feature` that fall in rows [rows[0], rows[1]) of its table, renumbered from 0."""

    feature: FeatureSpec
    rows: tuple[int, int]

    @classmethod
    def whole(cls, feature: FeatureSpec) -> IdUnit:
        return cls(feature, (0, feature.num_embeddings))

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def share(self) -> float:
        return self.num_rows / self.feature.num_embeddings

    @property
    def pooling_factor(self) -> float:
        """Expected ids of one sample's bag that fall in the unit."""
        return self.feature.pooling_factor * self.share


class IdStatistics(Protocol):
    def unique(self, unit: IdUnit, samples: float) -> float:
        """Expected distinct ids of `unit` among `samples` samples."""
        ...

    def length_bits(self, units: Sequence[IdUnit], samples: float) -> float:
        """Expected bits per length of a message of `samples` samples of `units`."""
        ...


def message_bytes(units: Sequence[IdUnit], samples: float, stats: IdStatistics, weighted: bool = False) -> float:
    """Bytes of one deduplicated message (the module docstring's sum); 0 for no units."""
    if not units:
        return 0.0
    bits = len(units) * samples * stats.length_bits(units, samples)
    weights = 0.0
    for f in units:
        n = samples * f.pooling_factor
        u = stats.unique(f, samples)
        bits += u * bits_for(f.num_rows) + n * bits_for(math.ceil(u - 1e-9))
        weights += 4.0 * n if weighted else 0.0
    return HEADER_BYTES * (1 + len(units)) + float(math.ceil(bits / 8 - 1e-9)) + weights


class SaturatedIds:
    """Lengths are the pooling factors exactly; every message holds every row of a unit (u = min(rows,
    ids)); a bag may fall wholly in one row range, so its length takes the whole pooling factor's bits."""

    def unique(self, unit: IdUnit, samples: float) -> float:
        return float(min(unit.num_rows, samples * unit.pooling_factor))

    def length_bits(self, units: Sequence[IdUnit], samples: float) -> float:
        return float(bits_for(math.ceil(max(u.feature.pooling_factor for u in units)) + 1))


class ZipfIds:
    """The synthetic source's id law (see the module docstring)."""

    def __init__(self, zipf_exponent: float, max_pooling: int) -> None:
        self.exponent, self.max_pooling = zipf_exponent, max_pooling
        self._cache: dict[tuple, float] = {}

    def _length_pmf(self, pooling: float, share: float = 1.0) -> np.ndarray:
        """P(length = l) for l = 0 .. max_pooling: 1 + Poisson(pooling - 1), clipped, then thinned by
        `share` (Binomial(length, share) of a bag's ids in a row range)."""
        pmf = np.zeros(self.max_pooling + 1)
        cdf = poisson.cdf(np.arange(self.max_pooling), pooling - 1.0)  # P(length <= l + 1)
        pmf[1 : self.max_pooling] = np.diff(np.concatenate(([0.0], cdf[: self.max_pooling - 1])))
        pmf[self.max_pooling] = 1.0 - pmf.sum()
        if share >= 1.0:
            return pmf
        m = np.arange(self.max_pooling + 1)
        return np.array([np.dot(pmf, binom.pmf(k, m, share)) for k in m])

    def unique(self, unit: IdUnit, samples: float) -> float:
        f = unit.feature
        key = ("u", f.num_embeddings, f.pooling_factor, samples)
        if key not in self._cache:
            p = np.arange(1, f.num_embeddings + 1, dtype=np.float64) ** -self.exponent
            p /= p.sum()
            pmf = self._length_pmf(f.pooling_factor)
            miss_one = np.polynomial.polynomial.polyval(1.0 - p, pmf)  # E[(1 - p_k)^length] per row
            self._cache[key] = float(np.sum(1.0 - miss_one**samples))
        return unit.share * self._cache[key]

    def length_bits(self, units: Sequence[IdUnit], samples: float) -> float:
        cdf = np.ones(self.max_pooling + 1)  # P(longest bag <= m)
        for u in units:
            cdf *= np.cumsum(self._length_pmf(u.feature.pooling_factor, u.share)) ** samples
        pmf = np.diff(np.concatenate(([0.0], cdf)))
        return float(sum(pmf[m] * bits_for(m + 1) for m in range(self.max_pooling + 1)))


class MeasuredIds:
    """Distinct ids and the longest bag counted on a source's first `samples` training samples: per
    feature, windows of the message's sample count, averaged (all of them when a message holds more)."""

    def __init__(self, source, samples: int = 4096) -> None:
        batch = next(source.train_batches(samples))
        self._parts = {k: (v.numpy(), n.numpy()) for k, (v, n, _) in batch.sparse.per_key().items()}
        self._cache: dict[tuple, float] = {}
        self._windows_cache: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}

    def _windows(self, unit: IdUnit, samples: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per window of `samples` samples: the unit's ids and each bag's count of them (cached: both
        statistics read them, for every message of the unit)."""
        key = ("w", unit, samples)
        if key not in self._windows_cache:
            self._windows_cache[key] = self._cut(unit, samples)
        return self._windows_cache[key]

    def _cut(self, unit: IdUnit, samples: float) -> list[tuple[np.ndarray, np.ndarray]]:
        values, lengths = self._parts[unit.feature.name]
        inside = (values >= unit.rows[0]) & (values < unit.rows[1])
        bag = np.repeat(np.arange(lengths.size), lengths)
        lengths = np.bincount(bag[inside], minlength=lengths.size)
        values = values[inside]
        s = max(1, min(int(samples), lengths.size))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        return [(values[offsets[a] : offsets[a + s]], lengths[a : a + s]) for a in range(0, lengths.size - s + 1, s)]

    def unique(self, unit: IdUnit, samples: float) -> float:
        key = ("u", unit, samples)
        if key not in self._cache:
            self._cache[key] = float(np.mean([np.unique(v).size for v, _ in self._windows(unit, samples)]))
        return self._cache[key]

    def length_bits(self, units: Sequence[IdUnit], samples: float) -> float:
        longest = max(int(n.max(initial=0)) for u in units for _, n in self._windows(u, samples))
        return float(bits_for(longest + 1))
