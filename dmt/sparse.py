"""Sparse input: a keyed jagged batch, and the training batch that carries it.

Layout of `KeyedJagged` (feature-major, as in TorchRec's KeyedJaggedTensor):

    keys    = ["f0", "f1"]                 F features
    lengths = [2, 0, 1 | 1, 3, 1]          [F * B]: feature 0 for samples 0..B-1, then feature 1
    values  = [7, 9, 4 | 5, 1, 1, 2, 8]    [N] int64 ids, N = lengths.sum()
    weights = None or [N] float32          optional per-id weights (used by pooling)

All ids of one feature are contiguous, so selecting or shipping a subset of features is a
slice, never a gather over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dmt.guard import allowed_sync


@dataclass
class KeyedJagged:
    keys: list[str]
    values: Tensor  # int64 [N]
    lengths: Tensor  # int64 [F * B]
    weights: Tensor | None = None  # float32 [N]
    # ids of each feature, where the host knows them (a batch from the host, or cut from parts of
    # known size); else computed once on first use, which waits for the device
    id_counts: list[int] | None = None

    def __post_init__(self) -> None:
        if self.lengths.numel() % max(len(self.keys), 1) != 0:
            raise ValueError(f"lengths has {self.lengths.numel()} entries, not a multiple of {len(self.keys)} keys")

    @property
    def batch_size(self) -> int:
        return self.lengths.numel() // len(self.keys) if self.keys else 0

    def lengths_per_key(self) -> Tensor:
        """[F, B] lengths."""
        return self.lengths.view(len(self.keys), self.batch_size)

    def ids_per_key(self) -> list[int]:
        """Number of ids of each feature in this batch."""
        if self.id_counts is None:
            with allowed_sync("torch.split cuts the ids by feature with sizes on the host"):
                self.id_counts = self.lengths_per_key().sum(1).tolist()
        return self.id_counts

    def per_key(self) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
        """feature -> (values [n_f], lengths [B], weights [n_f] or None)."""
        counts = self.ids_per_key()
        values = torch.split(self.values, counts)
        lengths = self.lengths_per_key().unbind(0)
        weights = torch.split(self.weights, counts) if self.weights is not None else [None] * len(counts)
        return {k: (v, n, w) for k, v, n, w in zip(self.keys, values, lengths, weights, strict=True)}

    def select(self, keys: list[str]) -> KeyedJagged:
        """The same samples with only `keys`, in that order."""
        parts = self.per_key()
        missing = [k for k in keys if k not in parts]
        if missing:
            raise KeyError(f"features {missing} not in batch (have {self.keys})")
        return KeyedJagged.concat_keys([parts[k] for k in keys], keys, self.batch_size, self.values.device)

    @staticmethod
    def concat_keys(
        parts: list[tuple[Tensor, Tensor, Tensor | None]], keys: list[str], batch_size: int, device=None
    ) -> KeyedJagged:
        """Features side by side from (values, lengths, weights) parts; `device` places the
        empty batch when there are no parts (a rank that serves nothing)."""
        if not parts:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return KeyedJagged(keys=[], values=empty, lengths=empty, id_counts=[])
        values = torch.cat([p[0] for p in parts])
        lengths = torch.cat([p[1] for p in parts])
        has_w = [p[2] is not None for p in parts]
        weights = torch.cat([p[2] for p in parts]) if all(has_w) else None
        if any(has_w) and not all(has_w):
            raise ValueError("either every feature carries weights or none does")
        return KeyedJagged(list(keys), values, lengths, weights, id_counts=[p[0].numel() for p in parts])

    def slice_samples(self, start: int, stop: int) -> KeyedJagged:
        """Samples [start, stop) of every feature."""
        parts = []
        for v, ln, w in self.per_key().values():
            offsets = torch.zeros(ln.numel() + 1, dtype=torch.long, device=ln.device)
            torch.cumsum(ln, 0, out=offsets[1:])
            with allowed_sync("the id range of the samples, to slice the values"):
                a, b = int(offsets[start]), int(offsets[stop])
            parts.append((v[a:b], ln[start:stop], None if w is None else w[a:b]))
        return KeyedJagged.concat_keys(parts, self.keys, stop - start, self.values.device)

    @staticmethod
    def concat_samples(batches: list[KeyedJagged]) -> KeyedJagged:
        """Stack batches with the same keys along the sample axis."""
        keys = batches[0].keys
        per = [b.per_key() for b in batches]
        parts = []
        for k in keys:
            vs = [p[k] for p in per]
            w = [x[2] for x in vs]
            parts.append(
                (
                    torch.cat([x[0] for x in vs]),
                    torch.cat([x[1] for x in vs]),
                    torch.cat(w) if all(x is not None for x in w) else None,
                )
            )
        return KeyedJagged.concat_keys(parts, keys, sum(b.batch_size for b in batches), batches[0].values.device)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJagged:
        """A copy on `device`. Leaving the host, the batch takes its per-feature id counts along
        (counted on the host, so that nothing on the device has to be read back for them)."""
        counts = self.id_counts
        if counts is None and self.lengths.device.type == "cpu":
            with allowed_sync("counts of a host batch, before it moves"):
                counts = self.ids_per_key()
        return KeyedJagged(
            keys=self.keys,
            values=self.values.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            weights=None if self.weights is None else self.weights.to(device, non_blocking=non_blocking),
            id_counts=counts,
        )

    def pin_memory(self) -> KeyedJagged:
        return KeyedJagged(
            self.keys,
            self.values.pin_memory(),
            self.lengths.pin_memory(),
            None if self.weights is None else self.weights.pin_memory(),
            self.id_counts,
        )


def as_keyed_jagged(sparse) -> KeyedJagged:
    """A KeyedJagged as is; a TorchRec KeyedJaggedTensor converted (the same tensors, no copy
    of the ids: see dmt.interop.torchrec.from_kjt)."""
    if isinstance(sparse, KeyedJagged):
        return sparse
    if callable(getattr(sparse, "keys", None)) and callable(getattr(sparse, "lengths", None)):
        from dmt.interop.torchrec import from_kjt

        return from_kjt(sparse)
    raise TypeError(
        f"sparse input must be a dmt KeyedJagged or a TorchRec KeyedJaggedTensor, got {type(sparse).__name__}"
    )


@dataclass
class Batch:
    dense: Tensor  # float32 [B, num_dense]
    sparse: KeyedJagged  # B samples
    labels: Tensor  # float32 [B], 0 or 1
    probs: Tensor | None = None  # float32 [B] true click probability (synthetic data only)

    @property
    def size(self) -> int:
        return self.labels.numel()

    def slice_samples(self, start: int, stop: int) -> Batch:
        return Batch(
            dense=self.dense[start:stop],
            sparse=self.sparse.slice_samples(start, stop),
            labels=self.labels[start:stop],
            probs=None if self.probs is None else self.probs[start:stop],
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        probs = [b.probs for b in batches]
        return Batch(
            dense=torch.cat([b.dense for b in batches]),
            sparse=KeyedJagged.concat_samples([b.sparse for b in batches]),
            labels=torch.cat([b.labels for b in batches]),
            probs=torch.cat(probs) if all(p is not None for p in probs) else None,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy on `device`; non_blocking from pinned memory overlaps the copy with compute."""
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            probs=None if self.probs is None else self.probs.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory (for non_blocking copies to a GPU)."""
        return Batch(
            self.dense.pin_memory(),
            self.sparse.pin_memory(),
            self.labels.pin_memory(),
            None if self.probs is None else self.probs.pin_memory(),
        )
