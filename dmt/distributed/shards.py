"""Tables cut into shards, and the two halves of a lookup of a cut table (docs/sharding.md).

A table [N, d] is held whole by one rank ("table"), or cut into blocks rows [r0, r1) x columns
[c0, c1), each block (a shard) held by one rank of a group of n ranks:

    kind         shards                                    ids a shard gets
    row          rows over the n ranks                     the ids in its rows, re-based to r0
    column       columns over the n ranks                  all of the feature's ids
    row_column   rows over n / C ranks x columns over C    the ids in its rows
    table_row    flat only: "row" over the ranks of the table's host (the SPTT path: ids cross
                 hosts once, the row partial sums are added inside the host before they cross)

The group is the world (flat) or the tower's host (SPTT). A rank holds at most one shard of a
table, so a shard keeps the one-device parameter name.

The exchange unit is the *feature shard*: key "f@k" for shard k of the table feature f reads (a
feature of a whole table keeps its key f). `split_ids` cuts a sender's ids into those units, the
owner pools its shard as a table of its own (a shard of part of the rows pools with "sum"), and
`combine` puts each feature back together on the receiving side: the row shards' partial sums
added per column range (mean pooling divides by the whole bag length after that sum, not per
shard), the column ranges side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from dmt.guard import allowed_sync
from dmt.sparse import KeyedJagged

SEPARATOR = "@"  # unit key = feature + SEPARATOR + shard index


@dataclass(frozen=True)
class Shard:
    """Block rows [rows[0], rows[1]) x columns [cols[0], cols[1]) of `table`, held by global `rank`."""

    table: str
    rows: tuple[int, int]
    cols: tuple[int, int]
    rank: int

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


def grid(kind: str, members: int, rows: int, dim: int) -> tuple[int, int]:
    """-> (row ranges R, column ranges C) of a table [rows, dim] cut `kind` over `members` ranks."""
    if kind in ("row", "table_row"):
        return min(members, rows), 1
    if kind == "column":
        return 1, min(members, dim)
    if kind == "row_column":
        c = max(k for k in range(1, math.isqrt(members) + 1) if members % k == 0)
        c = min(c, dim)
        return min(members // c, rows), c
    return 1, 1


def cut(table: str, rows: int, dim: int, kind: str, ranks: list[int], start: int = 0) -> tuple[Shard, ...]:
    """The shards of a table [rows, dim] cut `kind` over `ranks`: row range i and column range j
    (as even as integers allow) go to ranks[(start + i * C + j) % n]."""
    r, c = grid(kind, len(ranks), rows, dim)
    return tuple(
        Shard(
            table,
            (i * rows // r, (i + 1) * rows // r),
            (j * dim // c, (j + 1) * dim // c),
            ranks[(start + i * c + j) % len(ranks)],
        )
        for i in range(r)
        for j in range(c)
    )


def unit_key(feature: str, shard: int) -> str:
    return f"{feature}{SEPARATOR}{shard}"


def split_ids(kj: KeyedJagged, units: list[str], shards: Mapping[str, tuple[Shard, ...]], tables: dict[str, str]):
    """kj (S samples) -> a KeyedJagged keyed by `units` (in that order), S samples.

    A unit f is f's ids as they are; a unit "f@k" holds, per bag, the ids of f that fall in the
    rows of shard k of f's table (`tables[f]`), minus the shard's first row (a column shard of all
    rows gets every id). Weights follow their ids. Each feature cut into row ranges is sorted by
    range once (stable: a bag keeps its ids' order) and read once on the host for the split sizes."""
    if all(SEPARATOR not in u for u in units):
        return kj
    parts = kj.per_key()
    by_range: dict[str, dict[tuple[int, int], tuple]] = {}  # feature -> row range -> its part
    out = []
    for u in units:
        feature, sep, k = u.rpartition(SEPARATOR)
        if not sep:
            out.append(parts[u])
            continue
        table_shards = shards[tables[feature]]
        rows = table_shards[int(k)].rows
        if rows == (0, _table_rows(table_shards)):
            out.append(parts[feature])
            continue
        if feature not in by_range:
            by_range[feature] = _by_row_range(*parts[feature], sorted({s.rows for s in table_shards}))
        out.append(by_range[feature][rows])
    return KeyedJagged.concat_keys(out, units, kj.batch_size, kj.values.device)


def _by_row_range(values: Tensor, lengths: Tensor, weights: Tensor | None, ranges: list[tuple[int, int]]) -> dict:
    """One feature's ids (values [n], lengths [S], weights) -> row range -> (its ids re-based to the
    range's first row, lengths [S] of its ids per bag, their weights)."""
    starts = torch.tensor([r0 for r0, _ in ranges[1:]], dtype=values.dtype, device=values.device)
    which = torch.bucketize(values, starts, right=True)  # [n] row range of each id
    bags = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=values.numel()
    )
    counts = torch.bincount(bags * len(ranges) + which, minlength=lengths.numel() * len(ranges))
    per_bag = counts.view(lengths.numel(), len(ranges))  # [S, ranges]
    order = torch.sort(which, stable=True).indices  # ids grouped by range, bags in order inside
    with allowed_sync("ids per row shard: the sizes to split a cut feature's ids by"):
        sizes = per_bag.sum(0).tolist()
    values, weights = values[order].split(sizes), weights[order].split(sizes) if weights is not None else None
    return {
        r: (values[i] - r[0], per_bag[:, i].contiguous(), None if weights is None else weights[i])
        for i, r in enumerate(ranges)
    }


def _table_rows(shards: tuple[Shard, ...]) -> int:
    return max(s.rows[1] for s in shards)


def combine(
    pooled: dict[str, Tensor],
    features: list[str],
    shards: Mapping[str, tuple[Shard, ...]],
    tables: dict[str, str],
    mean: Mapping[str, bool],
    lengths: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """pooled: {unit: [S, width]} as the owners returned them -> {feature: [S, d_f]} for `features`.

    A feature of a whole table is its unit. Otherwise, per column range, the partial sums of its
    row shards are added (in shard order, so that every rank adds them alike); a feature whose
    table pools by mean (`mean[table]`) and is cut into row ranges is then divided by its whole bag
    length (`lengths[f]`, [S]; an empty bag stays zero); the column ranges are concatenated."""
    out: dict[str, Tensor] = {}
    for f in features:
        table = tables[f]
        if table not in shards:
            out[f] = pooled[f]
            continue
        by_cols: dict[tuple[int, int], Tensor] = {}
        for k, s in enumerate(shards[table]):
            part = pooled[unit_key(f, k)]
            by_cols[s.cols] = part if s.cols not in by_cols else by_cols[s.cols] + part
        whole = torch.cat([by_cols[c] for c in sorted(by_cols)], 1) if len(by_cols) > 1 else by_cols[s.cols]
        if mean[table] and len(shards[table]) > len(by_cols):  # row ranges were summed: now the mean
            whole = whole / lengths[f].clamp(min=1).unsqueeze(1).to(whole.dtype)
        out[f] = whole
    return out
