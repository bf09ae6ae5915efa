"""In-memory tabular data sets: encoding helpers, a seeded split and epoch-shuffled streams.

A `Table` holds n samples: dense [n, D] float32, per sparse feature a padded id matrix [n, m_f]
(-1 = no id; m_f = the most ids one sample has) and labels [n]. `InMemorySource` serves a train and
an eval `Table` through the `DataSource` interface:

- train: an endless sequence of epochs; epoch e visits the train rows in the order of a permutation
  drawn from SeedSequence([data.seed, EPOCH_KEY, e]). Global batch `step` is positions
  [step * W * B, (step + 1) * W * B) of that sequence (epochs joined end to end), rank r takes
  [.. + r * B, + B): resuming at any step is index arithmetic.
- eval: rank r takes rows [r * n // W, (r + 1) * n // W) of the eval table.

Subclasses load their files and call `InMemorySource.__init__` with the encoded tables.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmt.config import DataConfig
from dmt.data.base import DataSource
from dmt.errors import UserError
from dmt.sparse import Batch, KeyedJagged
from dmt.specs import FeatureSpec

SPLIT_KEY = 7_001  # seeds the train / validation / test split
EPOCH_KEY = 7_002  # seeds the per-epoch shuffles


@dataclass
class Table:
    """n encoded samples."""

    dense: np.ndarray  # float32 [n, D]
    ids: list[np.ndarray]  # per feature int64 [n, m_f], -1 = no id
    labels: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: np.ndarray) -> Table:
        return Table(self.dense[rows], [m[rows] for m in self.ids], self.labels[rows])

    def batch(self, rows: np.ndarray, keys: list[str]) -> Batch:
        """Samples `rows` [b] -> Batch with b samples, features in `keys` order (fresh tensors)."""
        values, lengths = [], []
        for m in self.ids:
            sub = m[rows]  # [b, m_f]
            present = sub >= 0
            values.append(sub[present])  # row-major: sample by sample, ids in order
            lengths.append(present.sum(1))
        sparse = KeyedJagged(
            keys=list(keys),
            values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int64)),
        )
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(self.dense[rows])),
            sparse=sparse,
            labels=torch.from_numpy(np.ascontiguousarray(self.labels[rows])),
        )


# ---- encoding helpers ---------------------------------------------------------------------------


def package_folder(package: str, sub: str, data_dir: str, install: str) -> Path:
    """The data folder: `data_dir` if set, else `sub` inside the installed package (never imported)."""
    if data_dir:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"data.data_dir = '{data_dir}' is not a folder")
        return folder
    spec = importlib.util.find_spec(package)  # a top-level name: finds, does not import
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the '{package}' package is not installed; install it with: {install}")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not folder.is_dir():
        raise UserError(f"the installed '{package}' package has no {sub}/ folder; reinstall it with: {install}")
    return folder


def require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise UserError(f"missing data file {path}")
    return path


def split_rows(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Seeded random split of range(n) -> {"train", "validation", "test"} sorted row indices."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_KEY])).permutation(n)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {
        "train": np.sort(perm[n_test + n_val :]),
        "validation": np.sort(perm[n_test : n_test + n_val]),
        "test": np.sort(perm[:n_test]),
    }


def encode_categorical(column: np.ndarray, fit_rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Strings [n] -> ids [n, 1] int64 and the table size. Values seen in `fit_rows` get ids 1..K in
    sorted order; the empty string and values never seen there get 0 (missing / unknown)."""
    vocab = np.unique(column[fit_rows])
    vocab = vocab[vocab != ""]
    pos = np.searchsorted(vocab, column)
    pos = np.minimum(pos, max(len(vocab) - 1, 0))
    known = (vocab[pos] == column) if len(vocab) else np.zeros(len(column), dtype=bool)
    return np.where(known, pos + 1, 0).astype(np.int64)[:, None], len(vocab) + 1


def encode_multi(tokens: list[list[str]], fit_rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Token lists [n] -> padded ids [n, m] int64 (-1 = none) and the table size; the vocabulary is
    the tokens of `fit_rows` (ids 1..K, sorted); unseen tokens get 0."""
    vocab = {t: i + 1 for i, t in enumerate(sorted({t for r in fit_rows for t in tokens[r]}))}
    width = max((len(t) for t in tokens), default=0) or 1
    out = np.full((len(tokens), width), -1, dtype=np.int64)
    for i, toks in enumerate(tokens):
        out[i, : len(toks)] = [vocab.get(t, 0) for t in toks]
    return out, len(vocab) + 1


def standardize(x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """[n, D] float with NaN = missing -> float32, (x - mean) / std over `fit_rows`, missing -> 0 (the mean)."""
    fit = x[fit_rows]
    mean = np.nanmean(fit, 0)
    std = np.nanstd(fit, 0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


# ---- the source -------------------------------------------------------------------------------


class InMemorySource(DataSource):
    """Train / validation / test `Table`s with epoch-shuffled training; see the module docstring."""

    def __init__(
        self, cfg: DataConfig, features: list[FeatureSpec], dense_names: list[str], splits: dict[str, Table]
    ) -> None:
        self.cfg = cfg
        self.features = features
        self.keys = [f.name for f in features]
        self.dense_names = dense_names
        self.num_dense = len(dense_names)
        self.splits = splits
        self.train = splits["train"]
        self.eval = splits[cfg.eval_split]
        if len(self.train) == 0 or len(self.eval) == 0:
            raise UserError(f"empty split: {', '.join(f'{k}={len(v)}' for k, v in splits.items())}")
        self._perms: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Train rows [n] in the order epoch `epoch` visits them (the two latest drawn are cached)."""
        order = self._perms.get(epoch)
        if order is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, EPOCH_KEY, epoch]))
            order = self._perms[epoch] = rng.permutation(len(self.train))
            while len(self._perms) > 2:
                del self._perms[next(iter(self._perms))]  # the oldest drawn
        return order

    def train_rows(self, start: int, stop: int) -> np.ndarray:
        """Train rows at positions [start, stop) of the endless epoch sequence."""
        n = len(self.train)
        pos = np.arange(start, stop)
        epochs = pos // n
        rows = np.empty(len(pos), dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self.epoch_order(int(e))[pos[sel] - e * n]
        return rows

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless: step s holds positions [(s * world + rank) * B, +B) of the shuffled epochs."""
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")
        step = start_step
        while True:
            start = (step * world + rank) * batch_size
            yield self.train.batch(self.train_rows(start, start + batch_size), self.keys)
            step += 1

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Rows [rank * n // world, (rank + 1) * n // world) of the eval split, in [<= batch_size] batches."""
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")
        n = len(self.eval)
        lo, hi = rank * n // world, (rank + 1) * n // world
        for start in range(lo, hi, batch_size):
            yield self.eval.batch(np.arange(start, min(start + batch_size, hi)), self.keys)

    def describe(self) -> dict:
        out = super().describe()
        out["dense_features"] = self.dense_names
        out["rows"] = {k: len(v) for k, v in self.splits.items()}
        out["positive_rate"] = {k: float(v.labels.mean()) for k, v in self.splits.items()}
        out["eval_split"] = self.cfg.eval_split
        out["malformed_rows"] = 0
        return out


def pooling_factor(ids: np.ndarray) -> float:
    """Mean number of ids per sample of a padded [n, m] id matrix."""
    return float((ids >= 0).sum(1).mean()) if len(ids) else 0.0
