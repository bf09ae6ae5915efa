"""Embedding tables keyed by feature; several features may read one table.

    ids of feature f (KeyedJagged)  --table of f-->  pooled [B, d]  (sum or mean over the ids)

`lookup` is the unit of work an owner does in distributed runs: pool any number of bags of one
table. The one-device `forward` calls it once per table.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import Tensor, nn

from dmt.sparse import KeyedJagged
from dmt.specs import FeatureSpec


class EmbeddingBagCollection(nn.Module):
    """Tables of width `dim`; `features` decides which table each feature reads.

    Gradients are sparse (only the looked-up rows), which the row-wise optimizers use.

    Each table draws its initial weights from its own generator, seeded by torch's initial seed
    (torch.manual_seed) and the table's position, never from the global stream: a rank that
    creates only the tables it owns (`tables`, `hold`) gets exactly the one-device model's values
    and never holds the whole model, and the dense layers built afterwards do not depend on it.
    """

    def __init__(
        self, features: list[FeatureSpec], dim: int, pooling: str = "mean", tables: Collection[str] | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.dim = dim
        self.pooling = pooling
        self.features = list(features)
        self.feature_table = {f.name: f.table for f in features}
        self.rows: dict[str, int] = {}
        for f in features:
            if self.rows.setdefault(f.table, f.num_embeddings) != f.num_embeddings:
                raise ValueError(f"table {f.table} is declared with two sizes")
        self.seed = torch.initial_seed()
        self.tables = nn.ModuleDict()
        self.hold(self.rows if tables is None else tables)

    def hold(self, tables: Collection[str]) -> None:
        """Keep exactly `tables`: drop the others, create the missing ones (in declaration order)."""
        unknown = set(tables) - set(self.rows)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        for name in list(self.tables):
            if name not in tables:
                del self.tables[name]
        kept = dict(self.tables.items())
        self.tables = nn.ModuleDict()
        for i, (name, n) in enumerate(self.rows.items()):
            if name in kept:
                self.tables[name] = kept[name]
            elif name in tables:
                self.tables[name] = self._new_table(i, n)

    def _new_table(self, index: int, rows: int) -> nn.EmbeddingBag:
        table = nn.EmbeddingBag(rows, self.dim, mode="sum", sparse=True, _weight=torch.empty(rows, self.dim))
        bound = 1.0 / math.sqrt(self.dim)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        with torch.no_grad():
            table.weight.uniform_(-bound, bound, generator=generator)
        return table

    def table_features(self) -> dict[str, list[str]]:
        """table -> the features that read it, in feature order."""
        out: dict[str, list[str]] = {t: [] for t in self.tables}
        for f in self.features:
            if f.table in out:  # a sharded collection holds only some tables
                out[f.table].append(f.name)
        return out

    def lookup(self, table: str, values: Tensor, lengths: Tensor, weights: Tensor | None) -> Tensor:
        """Pool bags of one table.

        values [N] int64, lengths [n_bags] (bag i holds the next lengths[i] ids), weights [N] or None
        -> [n_bags, dim]. Mean pooling divides by the bag length (an empty bag pools to zero).
        """
        if lengths.numel() == 0:
            return self.tables[table].weight.new_zeros(0, self.dim)
        offsets = torch.zeros(lengths.numel(), dtype=torch.long, device=lengths.device)
        if lengths.numel() > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        pooled = self.tables[table](values, offsets, per_sample_weights=weights)
        if self.pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled

    def forward(self, sparse: KeyedJagged) -> dict[str, Tensor]:
        """sparse with B samples -> {feature: pooled [B, dim]}."""
        parts = sparse.per_key()
        out: dict[str, Tensor] = {}
        for table, names in self.table_features().items():
            names = [n for n in names if n in parts]
            if not names:
                continue
            chunk = KeyedJagged.concat_keys([parts[n] for n in names], names, sparse.batch_size)
            pooled = self.lookup(table, chunk.values, chunk.lengths, chunk.weights)
            out.update(zip(names, pooled.split(sparse.batch_size), strict=True))
        return out
