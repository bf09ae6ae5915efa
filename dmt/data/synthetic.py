"""Synthetic click data with a hidden teacher whose interactions live inside planted groups.

Structure (fixed by the data seed): F = sum(group_sizes) sparse features "f00", "f01", ...,
assigned to planted groups by a seeded permutation, so groups are interleaved in feature order.
Each group has its own mean pooling factor. Cardinalities cycle over `cardinalities`; the first
`shared_tables` disjoint same-group feature pairs read one shared table.

Samples: per feature, 1 + Poisson(pooling - 1) ids (at most `max_pooling`), each drawn from a
Zipf(zipf_exponent) law over the table and mapped through a fixed random permutation of the ids.
Every (table, id) has a latent u in R^latent_dim; v_f is the mean of its ids' latents. Then

    logit = bias + first_order_scale * z1 + dense_scale * zd + interaction_scale * zi
    z1 = sum_f <w_f, v_f>                                  (standardised)
    zd = <w_d, x>,  x ~ N(0, I_num_dense), |w_d| = 1
    zi = sum_g zg / sqrt(G),  zg = sum_{i<j in g} <v_i, v_j>  (each group standardised)

so each scale is the standard deviation of its part of the logit. Latents are centred under the
Zipf law, so E[v_f] = 0 and no pair term has an additive (per-feature) projection: a model without
feature interactions cannot see them. Label ~ Bernoulli(sigmoid(logit)).

Determinism: stream `s` is cut into chunks of CHUNK samples; chunk c is drawn from
Generator(SeedSequence([seed, s, c])), so sample i is the same whoever reads it, in any batch.
Streams: train (endless), test and validation (`eval_samples` each; `data.eval_split` picks the
one evaluated), and the calibration stream that standardises the teacher. All four share the
teacher, so validation and test measure the same task on different samples.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import poisson

from dmt.config import DataConfig, SyntheticConfig
from dmt.data.base import DataSource
from dmt.sparse import Batch, KeyedJagged
from dmt.specs import FeatureSpec

CHUNK = 256  # samples per deterministic generation unit
TRAIN, TEST, CALIBRATION, VALIDATION = 0, 1, 2, 3  # stream ids
_STRUCTURE_KEY = 1_000_003  # seeds the teacher; never a stream id
_CALIBRATION_CHUNKS = 64


@dataclass
class _Chunk:
    """CHUNK samples of one stream, in the batch layout (F features, n = CHUNK samples)."""

    lengths: np.ndarray  # int64 [F, n]
    offsets: np.ndarray  # int64 [F * n + 1], start of each (feature, sample) bag in values
    values: np.ndarray  # int64 [N] local ids, feature-major
    dense: np.ndarray  # float32 [n, num_dense]
    labels: np.ndarray  # float32 [n]
    probs: np.ndarray  # float64 [n]


def _shared_pairs(groups: list[np.ndarray], count: int) -> list[tuple[int, int]]:
    """The first `count` disjoint same-group feature pairs, taken round-robin over groups."""
    per_group = [[(int(m[i]), int(m[i + 1])) for i in range(0, len(m) - 1, 2)] for m in groups]
    order = [ps[j] for j in range(max(map(len, per_group))) for ps in per_group if j < len(ps)]
    if count > len(order):
        raise ValueError(f"shared_tables={count} but the groups only hold {len(order)} disjoint pairs")
    return order[:count]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each (s, e) pair, vectorised."""
    lens = ends - starts
    shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return shift + np.arange(int(lens.sum()))


def _structure_rng(data_cfg: DataConfig) -> np.random.Generator:
    """The generator of the data's structure: its first draw is the feature -> group permutation."""
    return np.random.default_rng(np.random.SeedSequence([data_cfg.seed, _STRUCTURE_KEY]))


def _feature_structure(s: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """-> group_of [F] (planted groups, interleaved in feature order), owner [F] (feature f reads
    table f unless it is the second of a shared pair) and card [F] (rows of that table)."""
    num_features = sum(s.group_sizes)
    group_of = rng.permutation(np.repeat(np.arange(len(s.group_sizes)), s.group_sizes))
    groups = [np.flatnonzero(group_of == g) for g in range(len(s.group_sizes))]
    card = np.array([s.cardinalities[f % len(s.cardinalities)] for f in range(num_features)])
    owner = np.arange(num_features)
    for a, b in _shared_pairs(groups, s.shared_tables):
        owner[b], card[b] = a, card[a]
    return group_of, owner, card


def _feature_specs(s: SyntheticConfig, group_of: np.ndarray, owner: np.ndarray, card: np.ndarray) -> list[FeatureSpec]:
    pooling = np.asarray(s.group_pooling, dtype=np.float64)[group_of]
    return [FeatureSpec(f"f{f:02d}", f"t{owner[f]:02d}", int(card[f]), float(pooling[f])) for f in range(len(group_of))]


def synthetic_features(data_cfg: DataConfig) -> list[FeatureSpec]:
    """`SyntheticSource(data_cfg).features` without drawing the tables or the teacher."""
    s = data_cfg.synthetic
    return _feature_specs(s, *_feature_structure(s, _structure_rng(data_cfg)))


class SyntheticSource(DataSource):
    """Endless deterministic train stream plus an `eval_samples` eval stream; see module docstring."""

    def __init__(self, data_cfg: DataConfig) -> None:
        s = data_cfg.synthetic
        self.cfg = s
        self.seed = data_cfg.seed
        self.num_dense = data_cfg.num_dense
        self.eval_stream = VALIDATION if data_cfg.eval_split == "validation" else TEST
        rng = _structure_rng(data_cfg)
        num_groups, num_features = len(s.group_sizes), sum(s.group_sizes)

        group_of, owner, card = _feature_structure(s, rng)
        self._groups = [np.flatnonzero(group_of == g) for g in range(num_groups)]
        self._membership = np.zeros((num_groups, num_features))  # [G, F] 0/1
        self._membership[group_of, np.arange(num_features)] = 1.0
        self._pooling = np.asarray(s.group_pooling, dtype=np.float64)[group_of]  # [F]
        # [F, max_pooling - 1] cdf of 1 + Poisson(pooling - 1) at 1, 2, ..., max_pooling - 1
        self._len_cdf = poisson.cdf(np.arange(s.max_pooling - 1), self._pooling[:, None] - 1.0)
        owners = np.unique(owner)
        self._table_of = np.searchsorted(owners, owner)  # [F] table index of each feature
        self.features = _feature_specs(s, group_of, owner, card)

        # per table: Zipf law over ranks, guide table, rank -> id permutation, centred latents
        sizes = card[owners]  # [T]
        buckets = 4 << np.ceil(np.log2(sizes)).astype(np.int64)  # powers of two: u * M is exact
        self._row_off = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # [T]
        self._guide_off = np.concatenate(([0], np.cumsum(buckets)[:-1]))  # [T]
        self._buckets = buckets
        cdfs, guides, rank_to_row, latents = [], [], [], []
        for t, size in enumerate(sizes):
            p = np.arange(1, size + 1, dtype=np.float64) ** -s.zipf_exponent
            p /= p.sum()
            cdf = np.cumsum(p)
            cdf[-1] = 1.0
            perm = rng.permutation(size)
            u = rng.standard_normal((size, s.latent_dim))
            u -= p @ u[perm]  # centre under the id law: E[latent] = 0
            cdfs.append(cdf)
            edges = np.arange(buckets[t]) / buckets[t]
            guides.append(self._row_off[t] + np.searchsorted(cdf, edges, "right"))
            rank_to_row.append(self._row_off[t] + perm)
            latents.append(u)
        self._cdf = np.concatenate(cdfs)  # [R] per-table cdf over ranks
        self._guide = np.concatenate(guides)  # [sum M] first rank of each u-bucket
        self._rank_to_row = np.concatenate(rank_to_row)  # [R]
        self._latent_t = np.ascontiguousarray(np.concatenate(latents).T)  # [latent_dim, R]

        self._w_first = rng.standard_normal((num_features, s.latent_dim))  # [F, d]
        w_dense = rng.standard_normal(self.num_dense)
        self._w_dense = (w_dense / max(np.linalg.norm(w_dense), 1e-12)).astype(np.float32)  # [D]

        # standardise the teacher's terms on a calibration stream
        self._norm = (0.0, 1.0, np.zeros((num_groups, 1)), np.ones((num_groups, 1)))
        raw = []
        for c in range(_CALIBRATION_CHUNKS):
            lengths, _, rows, _, _ = self._draw(CALIBRATION, c)
            raw.append(self._terms(lengths, rows))
        first = np.concatenate([r[0] for r in raw])
        pairs = np.concatenate([r[1] for r in raw], axis=1)
        self._norm = (
            first.mean(),
            first.std() + 1e-12,
            pairs.mean(1, keepdims=True),
            pairs.std(1, keepdims=True) + 1e-12,
        )
        self._cache: OrderedDict[tuple[int, int], _Chunk] = OrderedDict()
        self._eval_truth: tuple[np.ndarray, np.ndarray] | None = None
        self._optimal: dict[str, float] | None = None

    # ---- generation -------------------------------------------------------------------------

    @property
    def planted_groups(self) -> list[list[str]]:
        return [[self.features[f].name for f in g] for g in self._groups]

    def _zipf_rows(self, table: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Latent rows [N] of Zipf-distributed ids: table [N] table index, u [N] uniform in [0, 1)."""
        bucket = np.take(self._guide_off, table) + (u * np.take(self._buckets, table)).astype(np.int64)
        k = np.take(self._guide, bucket)  # first rank whose cdf may exceed u
        todo = np.flatnonzero(np.take(self._cdf, k) <= u)
        while todo.size:  # walk forward inside the bucket: rarely more than one step
            k[todo] += 1
            todo = todo[np.take(self._cdf, k[todo]) <= u[todo]]
        return np.take(self._rank_to_row, k)

    def _draw(self, stream: int, chunk: int) -> tuple[np.ndarray, ...]:
        """Raw chunk: lengths [F, n], table [N] and latent row [N] of each id, dense [n, D], coin [n]."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, chunk]))
        u = rng.random((len(self.features), CHUNK))
        lengths = np.ones(u.shape, dtype=np.int64)
        for k in range(self._len_cdf.shape[1]):  # inverse cdf of 1 + Poisson(pooling - 1), clipped
            lengths += u > self._len_cdf[:, k : k + 1]
        table = np.repeat(self._table_of, lengths.sum(1))  # [N]
        rows = self._zipf_rows(table, rng.random(table.size))
        dense = rng.standard_normal((CHUNK, self.num_dense), dtype=np.float32)
        coin = rng.random(CHUNK)
        return lengths, table, rows, dense, coin

    def _terms(self, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw first-order term [n] and per-group pair terms [G, n] of the teacher."""
        nf, n = lengths.shape
        flat = lengths.ravel()
        bag = np.repeat(np.arange(flat.size), flat)  # [N] (feature, sample) bag of each id
        lat = np.take(self._latent_t, rows, axis=1)  # [d, N]
        v = np.stack([np.bincount(bag, weights=x, minlength=flat.size) for x in lat]) / flat  # [d, F*n]
        v = v.reshape(-1, nf, n)  # [d, F, n] mean-pooled latents
        first = np.einsum("dfn,fd->n", v, self._w_first)
        gsum = self._membership @ v  # [d, G, n]
        squares = self._membership @ np.einsum("dfn,dfn->fn", v, v)  # [G, n] sum_i |v_i|^2
        pairs = 0.5 * (np.einsum("dgn,dgn->gn", gsum, gsum) - squares)  # sum_{i<j} <v_i, v_j>
        return first, pairs

    def _chunk(self, stream: int, chunk: int) -> _Chunk:
        key = (stream, chunk)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        lengths, table, rows, dense, coin = self._draw(stream, chunk)
        first, pairs = self._terms(lengths, rows)
        m1, s1, mp, spp = self._norm
        c = self.cfg
        logit = (
            c.bias
            + c.first_order_scale * (first - m1) / s1
            + c.dense_scale * (dense @ self._w_dense)
            + c.interaction_scale * ((pairs - mp) / spp).sum(0) / math.sqrt(len(self._groups))
        )
        probs = 1.0 / (1.0 + np.exp(-logit))
        out = _Chunk(
            lengths=lengths,
            offsets=np.concatenate(([0], np.cumsum(lengths.ravel()))),
            values=rows - np.take(self._row_off, table),
            dense=dense,
            labels=(coin < probs).astype(np.float32),
            probs=probs,
        )
        self._cache[key] = out
        if len(self._cache) > 8:
            self._cache.popitem(last=False)
        return out

    def _samples(self, stream: int, start: int, stop: int) -> Batch:
        """Samples [start, stop) of a stream as one Batch (fresh tensors, never cache views)."""
        pieces = []
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            a, b = max(start - c * CHUNK, 0), min(stop - c * CHUNK, CHUNK)
            pieces.append((self._chunk(stream, c), a, b))
        base = np.cumsum([0] + [p[0].values.size for p in pieces[:-1]])
        bag0 = np.arange(len(self.features)) * CHUNK  # [F] first bag of each feature in a chunk
        # [F, K] value spans of each (feature, piece); read feature-major
        lo = np.stack([k + ch.offsets[bag0 + a] for (ch, a, _), k in zip(pieces, base, strict=True)], 1)
        hi = np.stack([k + ch.offsets[bag0 + b] for (ch, _, b), k in zip(pieces, base, strict=True)], 1)
        values = np.concatenate([p[0].values for p in pieces])[_ranges(lo.ravel(), hi.ravel())]
        lengths = np.concatenate([ch.lengths[:, a:b] for ch, a, b in pieces], 1)
        sparse = KeyedJagged(
            keys=[f.name for f in self.features],
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths.ravel()),
        )
        return Batch(
            dense=torch.from_numpy(np.concatenate([ch.dense[a:b] for ch, a, b in pieces])),
            sparse=sparse,
            labels=torch.from_numpy(np.concatenate([ch.labels[a:b] for ch, a, b in pieces])),
            probs=torch.from_numpy(np.concatenate([ch.probs[a:b] for ch, a, b in pieces]).astype(np.float32)),
        )

    # ---- DataSource ---------------------------------------------------------------------------

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless batches: step s holds train samples [(s * world + rank) * B, +B), B = batch_size."""
        _check_split(batch_size, rank, world)
        step = start_step
        while True:
            start = (step * world + rank) * batch_size
            yield self._samples(TRAIN, start, start + batch_size)
            step += 1

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """This rank's contiguous share of the eval stream's `eval_samples`, in [<= batch_size] batches."""
        _check_split(batch_size, rank, world)
        total = self.cfg.eval_samples
        lo, hi = rank * total // world, (rank + 1) * total // world
        for start in range(lo, hi, batch_size):
            yield self._samples(self.eval_stream, start, min(start + batch_size, hi))

    def eval_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """True probabilities [E] float64 and labels [E] float32 of the whole eval set (cached)."""
        if self._eval_truth is None:
            n = self.cfg.eval_samples
            chunks = [self._chunk(self.eval_stream, c) for c in range(-(-n // CHUNK))]
            probs, labels = (np.concatenate([getattr(c, k) for c in chunks])[:n] for k in ("probs", "labels"))
            self._eval_truth = probs, labels
        return self._eval_truth

    def optimal_metrics(self) -> dict[str, float]:
        """Bayes-optimal AUC and log loss on the eval set (the true probs scored on its labels)."""
        if self._optimal is None:
            from sklearn.metrics import log_loss, roc_auc_score

            probs, labels = self.eval_truth()
            self._optimal = {
                "optimal_auc": float(roc_auc_score(labels, probs)),
                "optimal_logloss": float(log_loss(labels, probs, labels=[0, 1])),
            }
        return self._optimal

    def describe(self) -> dict:
        out = super().describe()
        out.update(self.optimal_metrics())
        out["planted_groups"] = self.planted_groups
        out["positive_rate"] = float(self.eval_truth()[1].mean())
        out["rows"] = {"train": None, "test": self.cfg.eval_samples}
        out["malformed_rows"] = 0
        return out


def _check_split(batch_size: int, rank: int, world: int) -> None:
    if batch_size < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")


def one_hot(batch: Batch, features: list[FeatureSpec]) -> sp.csr_matrix:
    """[B, sum(cardinalities) + num_dense] CSR: per-feature one-hot ids weighted 1/bag size, then dense."""
    lengths = batch.sparse.lengths.numpy()
    nf, b = len(features), batch.size
    col_off = np.concatenate(([0], np.cumsum([f.num_embeddings for f in features])))
    feat = np.repeat(np.repeat(np.arange(nf), b), lengths)
    sample = np.repeat(np.tile(np.arange(b), nf), lengths)
    weight = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
    ids = sp.csr_matrix((weight, (sample, col_off[feat] + batch.sparse.values.numpy())), shape=(b, int(col_off[-1])))
    return sp.hstack([ids, sp.csr_matrix(batch.dense.numpy().astype(np.float64))], format="csr")


def additive_baseline_auc(
    source: SyntheticSource, train_samples: int = 200_000, c: float = 0.03, max_iter: int = 300
) -> float:
    """Eval AUC of a model without feature interactions: logistic regression on `one_hot` inputs
    fitted on the first `train_samples` train samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train = source._samples(TRAIN, 0, train_samples)
    test = source._samples(source.eval_stream, 0, source.cfg.eval_samples)
    model = LogisticRegression(C=c, max_iter=max_iter)
    model.fit(one_hot(train, source.features), train.labels.numpy())
    return float(roc_auc_score(test.labels.numpy(), model.decision_function(one_hot(test, source.features))))
