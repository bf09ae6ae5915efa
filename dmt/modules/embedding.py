"""Embedding tables keyed by name; several features may read one table.

    ids of feature f (KeyedJagged)  --table of f-->  pooled [B, d_t]   (sum or mean over the ids)

`lookup` is the unit of work an owner does in distributed runs: pool any number of bags of one
table. The one-device `forward` calls it once per table.

Tables are created only where they are wanted. Each table draws its initial weights from its own
generator, seeded by torch's initial seed at construction (torch.manual_seed) and the table's
position, never from the global stream; so a table created late, on the rank that owns it, holds
exactly the one-device model's values, and the dense layers built after the collection do not
depend on which tables exist. Inside `deferred_tables()` a collection is built with no table at
all; `hold` creates the ones a rank keeps (`dmt.shard` does that with the plan's tables).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Collection, Iterator, Mapping

import torch
from torch import Tensor, nn

from dmt.sparse import KeyedJagged
from dmt.specs import FeatureSpec, TableSpec, table_specs

_DEFERRED = contextvars.ContextVar("dmt_deferred_tables", default=False)


@contextlib.contextmanager
def deferred_tables() -> Iterator[None]:
    """Collections built inside create no table until `hold` names them: build a model here
    before sharding it, so that no rank ever allocates a table it does not own.

    >>> with deferred_tables():
    ...     ebc = EmbeddingBagCollection.from_features([FeatureSpec("f", "t", 10**9)], dim=64)
    >>> list(ebc.tables)
    []
    """
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


class EmbeddingBagCollection(nn.Module):
    """Tables `tables` read by `features`; forward pools each feature's bags with its table.

    Gradients are sparse (only the looked-up rows), which the row-wise optimizers use.

    >>> feats = [FeatureSpec("user", "users", 100), FeatureSpec("item", "catalog", 50)]
    >>> ebc = EmbeddingBagCollection([TableSpec("users", 100, 8), TableSpec("catalog", 50, 4, "sum")], feats)
    >>> sparse = KeyedJagged(["user", "item"], torch.tensor([3, 7, 1]), torch.tensor([1, 1, 0, 1]))
    >>> {f: tuple(v.shape) for f, v in ebc(sparse).items()}  # 2 samples; item of sample 0 is empty
    {'user': (2, 8), 'item': (2, 4)}
    """

    def __init__(self, tables: list[TableSpec], features: list[FeatureSpec]) -> None:
        super().__init__()
        self.specs: dict[str, TableSpec] = {t.name: t for t in tables}
        if len(self.specs) != len(tables):
            raise ValueError("two tables share one name")
        for name in self.specs:
            if not name or "." in name or hasattr(nn.ModuleDict(), name):
                raise ValueError(
                    f"table name {name!r} cannot name a submodule (empty, with a dot, or an attribute of "
                    f"nn.ModuleDict such as 'items' or 'keys'): rename the table, e.g. {name + '_table'!r}"
                )
        self.features = list(features)
        for f in features:
            spec = self.specs.get(f.table)
            if spec is None:
                raise ValueError(f"feature {f.name} reads table {f.table}, which is not among {list(self.specs)}")
            if spec.num_embeddings != f.num_embeddings:
                raise ValueError(
                    f"feature {f.name} expects {f.num_embeddings} rows in table {f.table}, "
                    f"which has {spec.num_embeddings}"
                )
        self.feature_table = {f.name: f.table for f in features}
        self.seed = torch.initial_seed()
        self.tables = nn.ModuleDict()
        if not _DEFERRED.get():
            self.hold(self.specs)

    @staticmethod
    def from_features(
        features: list[FeatureSpec], dim: int, pooling: str = "mean", dims: Mapping[str, int] | None = None
    ) -> EmbeddingBagCollection:
        """Tables of width `dim` (or `dims[table]`) and one pooling, for the tables `features` read."""
        return EmbeddingBagCollection(table_specs(features, dim, pooling, dims), features)

    @property
    def feature_dims(self) -> dict[str, int]:
        """feature -> width of its pooled output."""
        return {f: self.specs[t].embedding_dim for f, t in self.feature_table.items()}

    def hold(self, tables: Collection[str]) -> None:
        """Keep exactly `tables`: drop the others, create the missing ones (in declaration order)."""
        unknown = set(tables) - set(self.specs)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        kept = {name: t for name, t in self.tables.items() if name in tables}
        self.tables = nn.ModuleDict()
        for i, spec in enumerate(self.specs.values()):
            if spec.name in kept:
                self.tables[spec.name] = kept[spec.name]
            elif spec.name in tables:
                self.tables[spec.name] = self._new_table(i, spec)

    def _new_table(self, index: int, spec: TableSpec) -> nn.EmbeddingBag:
        weight = self.initial_weight(index, spec)
        return nn.EmbeddingBag(*weight.shape, mode="sum", sparse=True, _weight=weight)

    def initial_weight(self, index: int, spec: TableSpec) -> Tensor:
        """The initial values [rows, d] of the table declared at `index`: uniform in +-1/sqrt(d), from
        the table's own generator (the same whoever creates it, and with either backend)."""
        rows, dim = spec.num_embeddings, spec.embedding_dim
        bound = 1.0 / math.sqrt(dim)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        # drawn on the host, so that they are the same on every device
        return torch.empty(rows, dim, device="cpu").uniform_(-bound, bound, generator=generator)

    def table_features(self) -> dict[str, list[str]]:
        """table -> the features that read it, in feature order (only tables this collection holds)."""
        out: dict[str, list[str]] = {t: [] for t in self.tables}
        for f in self.features:
            if f.table in out:
                out[f.table].append(f.name)
        return out

    def lookup(self, table: str, values: Tensor, lengths: Tensor, weights: Tensor | None) -> Tensor:
        """Pool bags of one table.

        values [N] int64, lengths [n_bags] (bag i holds the next lengths[i] ids), weights [N] or None
        -> [n_bags, d_table]. Mean pooling divides by the bag length (an empty bag pools to zero).
        """
        spec = self.specs[table]
        if lengths.numel() == 0:
            return self.tables[table].weight.new_zeros(0, spec.embedding_dim)
        offsets = torch.zeros(lengths.numel(), dtype=torch.long, device=lengths.device)
        if lengths.numel() > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        pooled = self.tables[table](values, offsets, per_sample_weights=weights)
        if spec.pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled

    def pool(self, ids: KeyedJagged) -> Tensor:
        """The unit of work of a table owner: ids of features whose tables this collection holds
        (any number of samples S) -> [S, sum of their widths], in ids.keys order."""
        if not ids.keys:
            return torch.zeros(0, 0, device=ids.values.device)
        per_feature = self(ids)
        return torch.cat([per_feature[f] for f in ids.keys], 1)

    def forward(self, sparse: KeyedJagged) -> dict[str, Tensor]:
        """sparse with B samples -> {feature: pooled [B, d_f]} for the features of the tables held."""
        parts = sparse.per_key()
        out: dict[str, Tensor] = {}
        for table, names in self.table_features().items():
            names = [n for n in names if n in parts]
            if not names:
                continue
            chunk = KeyedJagged.concat_keys([parts[n] for n in names], names, sparse.batch_size, sparse.values.device)
            pooled = self.lookup(table, chunk.values, chunk.lengths, chunk.weights)
            out.update(zip(names, pooled.split(sparse.batch_size), strict=True))
        return out
