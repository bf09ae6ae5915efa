"""Feature-interaction matrices I [F, F] for the Tower Partitioner, and their normalisation.

Three sources, all returning a symmetric, non-negative [F, F] matrix in the source's feature order:

- `data_interactions` (model-free): a score statistic for pairwise interaction terms, from data.
  Each feature's ids are bucketed (its `buckets - 1` most frequent ids in the sample, plus one
  bucket for all others) and a sample's bag becomes a row of bucket frequencies x_f [M] (the bag
  mean of one-hot indicators). The label is first residualised on an additive (ridge) linear
  probability model over all buckets of all features: r = y - a - sum_f <b_f, x_f>. For a pair
  (i, j) the cross-moment C_ij = E[(x_i - E x_i) (x_j - E x_j)^T r]  [M, M] is the score (the
  gradient of the squared loss) for adding the bucket-pair terms x_ia x_jb to the additive model.
  It is zero in expectation when the label has no i-j interaction, whatever each feature explains
  alone: for independent features the centring alone removes additive effects, and the residual
  removes them (up to the fit) when features are correlated. The statistic is ||C_ij||_F^2 minus
  its expected sampling noise under no interaction (sum_ab Var x_ia Var x_jb var(r) / n), divided
  by var(r) tr Cov(x_i) tr Cov(x_j): a squared-correlation-like number, comparable across pairs.
  Cost: two weighted Gram matrices of the [n, F*M] design (about 3 s for n = 200k, F = 24).
- `dlrm_interactions`: a flat DLRM's mean absolute pooled-embedding dot products |<e_i, e_j>| over
  a data sample, each attributed to the logit: mean |d logit / d<e_i, e_j> * (<e_i, e_j> - mean)|
  (gradient times centred input, through the whole top MLP).
- `dcn_interactions`: a flat DCN's cross weights: sum over cross layers of the Frobenius norms of
  the blocks W[rows of feature i, columns of feature j] (low rank: W = U V^T), symmetrised.

`normalise` makes any of them a similarity in [0, 1]: symmetric, negatives clipped, zero diagonal,
largest entry 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from dmt.data.base import DataSource
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel
from dmt.models.dcn import DCN
from dmt.models.dlrm import DLRM
from dmt.modules.dense import pair_index, pairwise_dots
from dmt.sparse import Batch


def normalise(matrix: np.ndarray) -> np.ndarray:
    """[F, F] -> symmetric [F, F] in [0, 1] with zero diagonal and max 1 (all zero stays zero)."""
    m = np.asarray(matrix, dtype=np.float64)
    m = np.nan_to_num(0.5 * (m + m.T))
    m = np.clip(m, 0.0, None)
    np.fill_diagonal(m, 0.0)
    top = m.max(initial=0.0)
    return m / top if top > 0 else m


def sample_batch(source: DataSource, samples: int, batch_size: int = 8192) -> Batch:
    """The first `samples` training samples (fewer if a finite source runs out) as one Batch."""
    batches, count = [], 0
    for batch in source.train_batches(min(batch_size, samples)):
        batches.append(batch)
        count += batch.size
        if count >= samples:
            break
    if not batches:
        raise UserError("the data source yielded no training samples")
    whole = Batch.concat(batches)
    return whole.slice_samples(0, min(samples, whole.size))


def bucket_design(batch: Batch, buckets: int) -> sp.csr_matrix:
    """[n, F * buckets] CSR: per feature, the bag's frequencies over its top `buckets - 1` ids
    (by count in this batch) and one bucket for every other id; empty bags are all-zero rows."""
    keys = batch.sparse.keys
    n = batch.size
    lengths = batch.sparse.lengths_per_key().numpy()  # [F, n]
    values = batch.sparse.values.numpy()
    rows, cols, weights = [], [], []
    start = 0
    for f in range(len(keys)):
        ln = lengths[f]
        ids = values[start : start + int(ln.sum())]
        start += int(ln.sum())
        if ids.size and ids.min() >= 0 and ids.max() < 8 * ids.size + 1024:  # small id range: count directly
            counts = np.bincount(ids)
            inverse = ids
        else:
            _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        top = np.argsort(-counts, kind="stable")[: buckets - 1]
        top = top[counts[top] > 0]
        bucket = np.full(counts.size, buckets - 1)
        bucket[top] = np.arange(top.size)
        rows.append(np.repeat(np.arange(n), ln))
        cols.append(f * buckets + bucket[inverse])
        weights.append(np.repeat(1.0 / np.maximum(ln, 1), ln))
    z = sp.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, len(keys) * buckets)
    )
    return z.tocsr()  # duplicate (sample, bucket) entries are summed


def _weighted_gram(z: sp.csr_matrix, w: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Z^T diag(w) Z [m, m] for Z [n, m]: dense float32 products over row chunks (much faster than a
    sparse-sparse product here), summed in float64."""
    out = np.zeros((z.shape[1], z.shape[1]))
    for a in range(0, z.shape[0], chunk):
        block = z[a : a + chunk].toarray().astype(np.float32)
        out += (block * w[a : a + chunk, None].astype(np.float32)).T @ block
    return out


def data_interactions(source: DataSource, samples: int = 200_000, buckets: int = 16, ridge: float = 1.0) -> np.ndarray:
    """Model-free pairwise interaction statistic (see module docstring) -> [F, F], not normalised."""
    if buckets < 2:
        raise UserError(f"interaction buckets must be >= 2, got {buckets}")
    batch = sample_batch(source, samples)
    z = bucket_design(batch, buckets)  # [n, F*M]
    y = batch.labels.numpy().astype(np.float64)
    n, width = z.shape
    mu = np.asarray(z.mean(0)).ravel()  # [F*M]
    cov = _weighted_gram(z, np.ones(n)) / n - np.outer(mu, mu)  # [F*M, F*M]
    # additive ridge fit on centred buckets, then the residual label
    beta = np.linalg.solve(n * cov + ridge * np.eye(width), z.T @ y - n * mu * y.mean())
    r = y - y.mean() - (z @ beta - mu @ beta)  # [n]
    # C = Zc^T diag(r) Zc / n with Zc = Z - mu, expanded so that Z stays sparse
    zr = z.T @ r
    cross = _weighted_gram(z, r)
    cross = (cross - np.outer(mu, zr) - np.outer(zr, mu) + np.outer(mu, mu) * r.sum()) / n
    var_r = float(r @ r) / n
    noise = np.outer(np.diag(cov), np.diag(cov)) * var_r / n  # E_null[C_ab^2] per entry
    num = len(batch.sparse.keys)
    blocks = (cross**2 - noise).reshape(num, buckets, num, buckets).sum((1, 3))  # [F, F]
    spread = np.diag(cov).reshape(num, buckets).sum(1)  # tr Cov(x_f)  [F]
    scale = var_r * np.outer(spread, spread)
    out = np.divide(blocks, scale, out=np.zeros_like(blocks), where=scale > 0)
    np.fill_diagonal(out, 0.0)
    return out


def _loaded_feature_index(model: MultiTowerModel, names: list[str]) -> list[int]:
    """Position of each name of `names` in the model's head order."""
    order = model.feature_order()
    if sorted(order) != sorted(names):
        raise UserError(f"checkpoint features {sorted(order)[:5]}... differ from the data's {sorted(names)[:5]}...")
    position = {f: i for i, f in enumerate(order)}
    return [position[f] for f in names]


def dlrm_interactions(model: DLRM, batch: Batch) -> np.ndarray:
    """Flat DLRM: mean_b |g_ij(b) * (<e_i, e_j>(b) - mean_b <e_i, e_j>)| -> [F, F] in
    `batch.sparse.keys` order, where g_ij = d logit / d <e_i, e_j> through the whole top MLP.

    This is the mean absolute dot product of the pooled embeddings, each attributed (gradient times
    centred input: a first-order estimate of how far that dot product moves the logit) so that
    dot products the top MLP ignores, and the constant part of a dot product that the bias absorbs,
    do not count. (Weighting mean |<e_i, e_j>| by the norm of the top MLP's first-layer column of
    the pair separated the planted groups much less well after a short training.) Vector 0 of the
    interaction is the dense vector when the model has dense features, so the feature at head
    position p is vector p + 1."""
    if not model.is_flat:
        raise UserError("the dlrm interaction source needs a flat DLRM checkpoint (no towers)")
    model.eval()
    names = batch.sparse.keys
    head = _loaded_feature_index(model, names)
    with torch.no_grad():
        pooled = model.embeddings(batch.sparse)
        vectors = [pooled[f] for f in model.feature_order()]  # head order
        lead = []
        if model.head.bottom is not None:
            z = model.head.bottom(batch.dense)
            vectors.insert(0, z)
            lead.append(z)
        dots = pairwise_dots(torch.stack(vectors, 1))  # [B, P]
    dots.requires_grad_(True)
    with torch.enable_grad():
        logits = model.head.top(torch.cat([*lead, dots], 1)).squeeze(1)
        (grad,) = torch.autograd.grad(logits.sum(), dots)
    centred = dots.detach().double() - dots.detach().double().mean(0)
    attribution = (grad.double() * centred).abs().mean(0)  # [P]
    shift = int(model.head.has_dense)
    columns = pair_index(model.head.num_vectors)
    num = len(names)
    out = np.zeros((num, num))
    for a in range(num):
        for b in range(a + 1, num):
            pa, pb = sorted((head[a] + shift, head[b] + shift))
            out[a, b] = out[b, a] = float(attribution[columns[(pa, pb)]])
    return out


@torch.no_grad()
def dcn_interactions(model: DCN, names: list[str]) -> np.ndarray:
    """Flat DCN: sum over cross layers of ||W_l[block i, block j]||_F, symmetrised -> [F, F] in
    `names` order. x0 = [dense part (head.dense_width), then each feature's d_f columns in
    model.feature_order()]; a low-rank layer's W is U V^T."""
    if not model.is_flat:
        raise UserError("the dcn interaction source needs a flat DCN checkpoint (no towers)")
    cross = model.head.cross
    layers = len(cross.biases)
    if layers == 0:
        raise UserError("the dcn interaction source needs a checkpoint with cross layers (model.cross_layers > 0)")
    num = len(names)
    head = _loaded_feature_index(model, names)
    dims = model.embeddings.feature_dims
    bounds = np.cumsum([model.head.dense_width] + [dims[f] for f in model.feature_order()])
    spans = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]  # head order
    out = np.zeros((num, num))
    for layer in range(layers):
        w = (cross.weights[layer] if cross.rank == 0 else cross.u[layer] @ cross.v[layer].T).double()  # [D, D]
        for a in range(num):
            (ra, rb) = spans[head[a]]
            for b in range(num):
                (ca, cb) = spans[head[b]]
                out[a, b] += float(w[ra:rb, ca:cb].pow(2).sum().sqrt())
    out = 0.5 * (out + out.T)
    np.fill_diagonal(out, 0.0)
    return out
