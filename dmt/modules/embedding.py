"""Embedding tables keyed by name; several features may read one table.

    ids of feature f (KeyedJagged)  --table of f-->  pooled [B, d_t]   (sum or mean over the ids)

`lookup` is the unit of work an owner does in distributed runs: pool any number of bags of one
table. The one-device `forward` calls it once per table.

Tables are created only where they are wanted, at the size they are held. Each table draws its
initial weights from generators of its own, never from the global stream: rows are drawn in
blocks of BLOCK_ROWS (2^20) rows, row-major, block b of the table at position i from a generator
seeded with (s * 1_000_003 + i + b * 2^40) mod 2^63, s = torch's initial seed at construction
(torch.manual_seed). Any block of rows x columns can so be drawn on its own: a table, or a
shard of it (`hold(..., shards=...)`), created late on the rank that owns it holds exactly the
one-device model's values, no rank ever allocates more than what it holds (plus one scratch of
at most SCRATCH_ROWS rows), and the dense layers built after the collection do not depend on
which tables exist. Inside `deferred_tables()` a collection is built with no table at all;
`hold` creates the ones a rank keeps (`dmt.shard` does that with the plan's tables and shards).
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
BLOCK_ROWS = 2**20  # rows drawn from one generator
SCRATCH_ROWS = 2**16  # rows of the scratch a column shard's (or a skipped prefix's) draws go through
Block = tuple[tuple[int, int], tuple[int, int]]  # rows [r0, r1), columns [c0, c1) of a table


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
        self.blocks: dict[str, Block] = {}  # held tables that are shards: table -> the block held
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

    def hold(self, tables: Collection[str], shards: Mapping[str, Block] | None = None) -> None:
        """Keep exactly `tables` whole and, of the tables in `shards`, the block each names (rows
        [r0, r1) x columns [c0, c1), under the table's own name): drop the others, create the
        missing ones (in declaration order)."""
        shards = dict(shards or {})
        unknown = (set(tables) | set(shards)) - set(self.specs)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        wanted = {t: self._whole(t) for t in tables} | shards
        kept = {name: t for name, t in self.tables.items() if name in wanted and self.block(name) == wanted[name]}
        self.tables = nn.ModuleDict()
        for i, spec in enumerate(self.specs.values()):
            if spec.name in kept:
                self.tables[spec.name] = kept[spec.name]
            elif spec.name in wanted:
                self.tables[spec.name] = self._new_table(i, spec, wanted[spec.name])
        self.blocks = {t: b for t, b in shards.items() if b != self._whole(t)}

    def _whole(self, table: str) -> Block:
        spec = self.specs[table]
        return (0, spec.num_embeddings), (0, spec.embedding_dim)

    def block(self, table: str) -> Block:
        """The rows and columns of `table` this collection holds."""
        return self.blocks.get(table, self._whole(table))

    def _new_table(self, index: int, spec: TableSpec, block: Block) -> nn.EmbeddingBag:
        weight = self.initial_block(index, spec, block)
        return nn.EmbeddingBag(*weight.shape, mode="sum", sparse=True, _weight=weight)

    def initial_block(self, index: int, spec: TableSpec, block: Block) -> Tensor:
        """Rows [r0, r1) x columns [c0, c1) of the initial values of the table declared at `index`
        (the same whoever creates them, and with either backend)."""
        (r0, r1), (c0, c1) = block
        if not (0 <= r0 < r1 <= spec.num_embeddings and 0 <= c0 < c1 <= spec.embedding_dim):
            raise ValueError(f"table {spec.name} [{spec.num_embeddings}, {spec.embedding_dim}] has no block {block}")
        # the initial values are drawn on the host, so that they are the same on every device
        weight = torch.empty(r1 - r0, c1 - c0, device="cpu")
        with torch.no_grad():
            self._draw(index, spec, block, weight)
        return weight

    def _draw(self, index: int, spec: TableSpec, block: Block, out: Tensor) -> None:
        """out [r1 - r0, c1 - c0] <- rows [r0, r1) x columns [c0, c1) of the table's initial values."""
        (r0, r1), (c0, c1) = block
        dim, bound = spec.embedding_dim, 1.0 / math.sqrt(spec.embedding_dim)
        scratch = torch.empty(0, dim, device="cpu")

        def draw(rows: int) -> Tensor:  # the next `rows` full rows of the generator, in the scratch
            nonlocal scratch
            if scratch.shape[0] < rows:
                scratch = torch.empty(rows, dim, device="cpu")
            return scratch[:rows].uniform_(-bound, bound, generator=generator)

        for b in range(r0 // BLOCK_ROWS, (r1 - 1) // BLOCK_ROWS + 1):
            first = b * BLOCK_ROWS
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index + b * 2**40) % 2**63)
            lo, hi = max(r0, first), min(r1, first + BLOCK_ROWS)
            for start in range(first, lo, SCRATCH_ROWS):  # the block's rows before ours: drawn, dropped
                draw(min(SCRATCH_ROWS, lo - start))
            if (c0, c1) == (0, dim):
                out[lo - r0 : hi - r0].uniform_(-bound, bound, generator=generator)
                continue
            for start in range(lo, hi, SCRATCH_ROWS):
                n = min(SCRATCH_ROWS, hi - start)
                out[start - r0 : start - r0 + n] = draw(n)[:, c0:c1]

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
        A shard pools its columns [n_bags, c1 - c0]; a shard of part of the rows always sums (its
        bags hold only some of the ids: the mean comes after the partial sums are added).
        """
        spec = self.specs[table]
        (r0, r1), (c0, c1) = self.block(table)
        if lengths.numel() == 0:
            return self.tables[table].weight.new_zeros(0, c1 - c0)
        offsets = torch.zeros(lengths.numel(), dtype=torch.long, device=lengths.device)
        if lengths.numel() > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        pooled = self.tables[table](values, offsets, per_sample_weights=weights)
        if spec.pooling == "mean" and r1 - r0 == spec.num_embeddings:
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled

    def pool(self, ids: KeyedJagged, key_table: Mapping[str, str] | None = None) -> Tensor:
        """The unit of work of a table owner: ids keyed by features (or by exchange units that
        `key_table` maps to their table) whose tables this collection holds, any number of samples
        S -> [S, sum of their widths], in ids.keys order."""
        if not ids.keys:
            return torch.zeros(0, 0, device=ids.values.device)
        per_feature = self(ids, key_table)
        return torch.cat([per_feature[f] for f in ids.keys], 1)

    def forward(self, sparse: KeyedJagged, key_table: Mapping[str, str] | None = None) -> dict[str, Tensor]:
        """sparse with B samples -> {feature: pooled [B, d_f]} for the features of the tables held
        (key_table: the table of each key, default the features' own)."""
        key_table = self.feature_table if key_table is None else key_table
        parts = sparse.per_key()
        out: dict[str, Tensor] = {}
        by_table: dict[str, list[str]] = {t: [] for t in self.tables}
        for key in sparse.keys:
            if key_table.get(key) in by_table:
                by_table[key_table[key]].append(key)
        for table, names in by_table.items():
            if not names:
                continue
            chunk = KeyedJagged.concat_keys([parts[n] for n in names], names, sparse.batch_size, sparse.values.device)
            pooled = self.lookup(table, chunk.values, chunk.lengths, chunk.weights)
            out.update(zip(names, pooled.split(sparse.batch_size), strict=True))
        return out
