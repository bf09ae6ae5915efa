"""What a model's sparse side is made of: features and the embedding tables they read.

    FeatureSpec   one sparse input (a key of the jagged batch): which table it reads, how many
                  rows that table has, how many ids a sample carries on average
    TableSpec     one embedding table: rows, width (embedding dim) and pooling

Several features may read one table (a shared table); every feature reads exactly one. Data
sources describe their features; a model decides each table's width and pooling.

    >>> features = [FeatureSpec("user", "users", 1000), FeatureSpec("item", "items", 50, 2.0)]
    >>> [t.embedding_dim for t in table_specs(features, dim=16, dims={"items": 8})]
    [16, 8]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

POOLINGS = ("sum", "mean")
# how a table is held across ranks (dmt/distributed/shards.py); "auto": the planner decides
SHARDINGS = ("table", "row", "column", "row_column", "table_row")
SHARDING_CHOICES = (*SHARDINGS, "auto")


@dataclass(frozen=True)
class FeatureSpec:
    """One sparse feature.

    name: feature name (a key of the jagged batch).
    table: embedding table it reads; several features may share one table.
    num_embeddings: rows of that table (ids are in [0, num_embeddings)).
    pooling_factor: mean number of ids per sample (1.0 for one-hot); the planner and the cost
        model use it to predict bytes on the wire.
    """

    name: str
    table: str
    num_embeddings: int
    pooling_factor: float = 1.0


@dataclass(frozen=True)
class TableSpec:
    """One embedding table [num_embeddings, embedding_dim]; a bag of ids pools to
    [embedding_dim] by `pooling`: "sum", or "mean" (sum / bag length; an empty bag pools to 0)."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError(
                f"table {self.name}: num_embeddings and embedding_dim must be >= 1, "
                f"got {self.num_embeddings} and {self.embedding_dim}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"table {self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")


def table_specs(
    features: list[FeatureSpec], dim: int, pooling: str = "mean", dims: Mapping[str, int] | None = None
) -> list[TableSpec]:
    """The tables `features` read, in order of first use: width `dim` unless `dims` names the
    table, rows from the features (which must agree on a shared table's size)."""
    rows: dict[str, int] = {}
    for f in features:
        if rows.setdefault(f.table, f.num_embeddings) != f.num_embeddings:
            raise ValueError(f"table {f.table} is declared with two sizes ({rows[f.table]} and {f.num_embeddings})")
    unknown = sorted(set(dims or {}) - set(rows))
    if unknown:
        raise ValueError(f"dims name unknown tables {unknown}; tables are {list(rows)}")
    return [TableSpec(t, n, (dims or {}).get(t, dim), pooling) for t, n in rows.items()]
