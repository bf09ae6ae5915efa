"""Parquet files (`data.source = "parquet"`): label, dense and sparse columns named in the config.

    data.train_path / data.test_path   a file, a folder (its *.parquet files) or a glob; files sorted
    data.label_column                  0 / 1 (integer, float or boolean); a null is an error
    data.dense_columns                 numbers, used as stored (null -> 0; NaN or infinity is an error)
    data.sparse_columns                one feature (and table) each, sized by data.table_sizes:
        integers      ids as stored: `data.parquet_ids = "check"` needs 0 <= id < size, "modulo" reduces them
        strings       hashed with the Criteo TSV rule (dmt/data/tsv.py): hex value, else CRC-32, then
                      1 + value mod (size - 1); empty or null -> 0
        lists of either   multi-hot: every element as above; a null list is an empty bag
    data.weight_columns                {sparse column = its weights column}: lists of floats, one per id

Column names may be patterns (`"cat_*"`), expanded in the files' column order; the defaults name
the columns `dmt data convert` writes (label, dense_*, cat_*), so its output reads with
`data.source = "parquet"` and the paths alone.

Rows are the files' rows in order (row groups in order), one sequence sliced into global batches
exactly like the Criteo readers: global batch `step` is rows [step * W * B, (step + 1) * W * B) of
the endlessly repeated sequence and rank r takes [.. + r * B, + B). The row counts come from the
files' footers, so a rank finds its rows without reading anything else and decodes only the row
groups that hold them (the last one stays decoded for the next step). A row group holding several
ranks' rows is decoded by each of them; row groups of at most B rows (as `dmt data convert`
writes by default for B that are multiples of its row group size) keep each rank to its own rows.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dmt.config import DataConfig
from dmt.data.base import DataSource
from dmt.data.loader import ordered_map
from dmt.data.tsv import token_ids
from dmt.errors import UserError
from dmt.sparse import Batch, KeyedJagged
from dmt.specs import FeatureSpec


def parquet_paths(pattern: str, key: str) -> list[Path]:
    """A file, a folder's *.parquet files or a glob's files, sorted; UserError naming `key` if none."""
    p = Path(pattern).expanduser()
    if p.is_file():
        return [p]
    found = sorted(p.glob("*.parquet")) if p.is_dir() else sorted(Path(m) for m in glob.glob(str(p)))
    found = [f for f in found if f.is_file()]
    if not found:
        raise UserError(f"{key} = '{pattern}': no Parquet file (a file, a folder of *.parquet or a glob)")
    return found


def expand_columns(patterns: list[str], names: list[str], key: str) -> list[str]:
    """Column names matching `patterns` (each must match one), in the files' order within a pattern."""
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise UserError(f"{key}: no column matches '{pattern}'; the files have: {', '.join(names)}")
        out += [h for h in hits if h not in out]
    return out


def _is_id_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or (pa.types.is_dictionary(t) and _is_id_type(t.value_type))
    )


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


@dataclass
class Group:
    """One row group: which file, which group in it, its first row in the file and its rows."""

    file: int
    index: int
    first: int
    rows: int


class RowGroups:
    """The row groups of some files as one sequence of rows (footers only: nothing is decoded here)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.groups: list[Group] = []
        self.schema: pa.Schema | None = None
        for f, path in enumerate(paths):
            try:
                meta = pq.ParquetFile(path).metadata
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"{path}: not a readable Parquet file ({e})") from None
            schema = meta.schema.to_arrow_schema()
            if self.schema is None:
                self.schema = schema
            elif schema.names != self.schema.names:
                raise UserError(f"{path}: columns {schema.names} differ from {paths[0]}'s {self.schema.names}")
            first = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                self.groups.append(Group(f, g, first, rows))
                first += rows
        self.starts = np.cumsum([0] + [g.rows for g in self.groups])  # [groups + 1]
        self.total = int(self.starts[-1])

    def spans(self, lo: int, hi: int, cycle: bool) -> list[tuple[int, int, int]]:
        """Rows [lo, hi) as (group, first row, end row) spans inside row groups."""
        out = []
        while lo < hi:
            q = lo % self.total if cycle else lo
            g = int(np.searchsorted(self.starts, q, side="right")) - 1
            take = min(hi - lo, int(self.starts[g + 1]) - q)
            first = q - int(self.starts[g])
            out.append((g, first, first + take))
            lo += take
        return out


class Decoder:
    """Decodes row groups (the needed columns only); keeps each thread's last group for the next step."""

    def __init__(self, groups: RowGroups, columns: list[str], dictionary: list[str]) -> None:
        self.groups, self.columns, self.dictionary = groups, columns, dictionary
        self.decoded = 0  # row groups decoded (all threads)
        self._local = threading.local()

    def tables(self, wanted: list[int]) -> list[pa.Table]:
        """Row groups `wanted` (indices into groups.groups) as tables; consecutive groups of one file
        are decoded in one call, and the last one is kept for the next call of this thread."""
        local = self._local
        files = local.__dict__.setdefault("files", {})
        got: dict[int, pa.Table] = {}
        if getattr(local, "key", None) in wanted:
            got[local.key] = local.table
        missing = [g for g in wanted if g not in got]
        for _, run in itertools.groupby(missing, key=lambda g: self.groups.groups[g].file):
            run = list(run)
            file = self.groups.groups[run[0]].file
            if file not in files:
                if len(files) >= 4:
                    files.clear()
                files[file] = pq.ParquetFile(self.groups.paths[file], read_dictionary=self.dictionary)
            indices = [self.groups.groups[g].index for g in run]
            table = files[file].read_row_groups(indices, columns=self.columns, use_threads=False)
            self.decoded += len(run)
            start = 0
            for g in run:
                rows = self.groups.groups[g].rows
                got[g] = table.slice(start, rows)
                start += rows
        local.key, local.table = wanted[-1], got[wanted[-1]]
        return [got[g] for g in wanted]


@dataclass
class Part:
    """Rows [lo, hi) of row group `group`, as a table."""

    group: Group
    lo: int
    table: pa.Table


class ParquetSource(DataSource):
    """Parquet files, each rank decoding only the row groups that hold its rows; see the module docstring."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.train = RowGroups(parquet_paths(cfg.train_path, "data.train_path"))
        self._test: RowGroups | None = None
        names = self.train.schema.names
        self.label = expand_columns([cfg.label_column], names, "data.label_column")[0]
        self.dense = expand_columns(cfg.dense_columns, names, "data.dense_columns") if cfg.dense_columns else []
        self.sparse = expand_columns(cfg.sparse_columns, names, "data.sparse_columns")
        self.weights = dict(cfg.weight_columns)
        for col, w in self.weights.items():
            if col not in self.sparse:
                raise UserError(f"data.weight_columns: '{col}' is not one of the sparse columns {self.sparse}")
            expand_columns([w], names, f"data.weight_columns.{col}")
        sizes = cfg.table_sizes
        if len(sizes) not in (1, len(self.sparse)):
            raise UserError(
                f"data.table_sizes needs 1 or {len(self.sparse)} values (one per sparse column), got {len(sizes)}"
            )
        self.sizes = [int(s) for s in (sizes if len(sizes) == len(self.sparse) else sizes * len(self.sparse))]
        self._check_types(self.train.schema, self.train.paths[0])
        self.num_dense = len(self.dense)
        self.columns = [self.label, *self.dense, *self.sparse, *self.weights.values()]
        schema = self.train.schema
        self.dictionary = [c for c in self.sparse if pa.types.is_string(schema.field(c).type)]
        pooling = self._pooling()
        self.features = [FeatureSpec(c, c, n, pooling[c]) for c, n in zip(self.sparse, self.sizes, strict=True)]
        self.last_decoder: Decoder | None = None  # the latest stream's decoder (its `decoded` count)
        self._memo: dict[str, dict[bytes, int]] = {}  # string column -> token -> id (row groups repeat tokens)

    @property
    def test(self) -> RowGroups:
        if self._test is None:
            self._test = RowGroups(parquet_paths(self.cfg.test_path, "data.test_path"))
            if self._test.schema.names != self.train.schema.names:
                raise UserError(
                    f"data.test_path files have columns {self._test.schema.names}, train files have "
                    f"{self.train.schema.names}"
                )
        return self._test

    def _check_types(self, schema: pa.Schema, path: Path) -> None:
        def bad(col: str, want: str) -> UserError:
            return UserError(f"{path}: column '{col}' has type {schema.field(col).type}; {want} expected")

        label = schema.field(self.label).type
        if not (pa.types.is_integer(label) or pa.types.is_floating(label) or pa.types.is_boolean(label)):
            raise bad(self.label, "an integer, float or boolean label")
        for col in self.dense:
            t = schema.field(col).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise bad(col, "a number")
        for col in self.sparse:
            t = schema.field(col).type
            if not (_is_id_type(t) or (_is_list(t) and _is_id_type(t.value_type))):
                raise bad(col, "integers, strings, or lists of them")
        for col, w in self.weights.items():
            t = schema.field(w).type
            if not (_is_list(t) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))):
                raise bad(w, f"a list of numbers (the weights of '{col}')")

    def _pooling(self) -> dict[str, float]:
        """Mean ids per sample of each sparse column, from the first row group (1 for plain columns)."""
        out = {c: 1.0 for c in self.sparse}
        lists = [c for c in self.sparse if _is_list(self.train.schema.field(c).type)]
        if lists and self.train.groups:
            g = self.train.groups[0]
            table = pq.ParquetFile(self.train.paths[g.file]).read_row_group(g.index, columns=lists)
            for c in lists:
                lengths = pc.list_value_length(table.column(c)).fill_null(0)
                out[c] = float(pc.mean(lengths).as_py() or 0.0)
        return out

    # ---- rows -> batches ------------------------------------------------------------------------

    def _read(self, groups: RowGroups, decoder: Decoder, lo: int, hi: int, cycle: bool) -> Batch:
        spans = groups.spans(lo, hi, cycle)
        tables = decoder.tables([g for g, _, _ in spans]) if spans else []
        parts = [Part(groups.groups[g], a, t.slice(a, b - a)) for (g, a, b), t in zip(spans, tables, strict=True)]
        return self._batch(parts, groups)

    def _where(self, parts: list[Part], groups: RowGroups, i: int) -> str:
        """'file: row N' of batch row i (rows counted from 0 in each file)."""
        for p in parts:
            if i < p.table.num_rows:
                return f"{groups.paths[p.group.file]}: row {p.group.first + p.lo + i}"
            i -= p.table.num_rows
        raise IndexError(i)

    def _batch(self, parts: list[Part], groups: RowGroups) -> Batch:
        """The parts' rows -> one Batch; bad values raise UserError naming file, row and column."""
        if len(parts) == 1:
            table = parts[0].table
        elif parts:
            table = pa.concat_tables([p.table for p in parts])
        else:
            table = groups_empty(self.train.schema, self.columns)
        n = table.num_rows

        def column(name: str) -> pa.Array:
            col = table.column(name)
            return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)

        def fail(i: int, what: str) -> UserError:
            return UserError(f"{self._where(parts, groups, int(i))}: {what}")

        label = column(self.label)
        if label.null_count:
            raise fail(np.flatnonzero(~label.is_valid().to_numpy(zero_copy_only=False))[0], f"'{self.label}' is null")
        labels = np.asarray(label.to_numpy(zero_copy_only=False), dtype=np.float32)
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            raise fail(bad[0], f"label '{self.label}' = {labels[bad[0]]} is not 0 or 1")
        dense = np.zeros((len(self.dense), n), dtype=np.float32)  # filled column by column, then transposed
        for j, name in enumerate(self.dense):
            col = table.column(name)
            dense[j] = col.fill_null(0).to_numpy() if col.null_count else col.to_numpy()
        bad = np.argwhere(~np.isfinite(dense))
        if bad.size:
            j, i = bad[0]
            raise fail(i, f"dense column '{self.dense[j]}' = {dense[j, i]} is not finite")
        dense = np.ascontiguousarray(dense.T)
        plain = self._plain_ids(table, n, fail)  # [S, n] for integer columns without nulls, else None
        if plain is not None and len(plain) == len(self.sparse) and not self.weights:  # one-hot integers: done
            sparse = KeyedJagged(
                keys=list(self.sparse),
                values=torch.from_numpy(plain.ravel()),
                lengths=torch.from_numpy(np.ones(plain.size, dtype=np.int64)),
            )
            return Batch(dense=torch.from_numpy(dense), sparse=sparse, labels=torch.from_numpy(labels))
        if isinstance(plain, np.ndarray):
            plain = dict(enumerate(plain))
        values, lengths, weights = [], [], []
        for j, (name, size) in enumerate(zip(self.sparse, self.sizes, strict=True)):
            if plain is not None and j in plain:
                v, ln = plain[j], np.ones(n, dtype=np.int64)
            else:
                v, ln = self._ids(table.column(name).chunks, size, name, fail)
            values.append(v)
            lengths.append(ln)
            if self.weights:
                if name in self.weights:
                    weights.append(self._weights(column(self.weights[name]), ln, name, fail))
                else:
                    weights.append(np.ones(v.size, dtype=np.float32))
        sparse = KeyedJagged(
            keys=list(self.sparse),
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int64)),
            weights=torch.from_numpy(np.concatenate(weights)) if self.weights else None,
        )
        return Batch(dense=torch.from_numpy(dense), sparse=sparse, labels=torch.from_numpy(labels.astype(np.float32)))

    def _plain_ids(self, table: pa.Table, n: int, fail) -> np.ndarray | dict[int, np.ndarray] | None:
        """The sparse columns that are integers without nulls, converted together: ids [S, n] if all are,
        else {column index: ids [n]}; None if none is."""
        cols = [
            j for j, name in enumerate(self.sparse)
            if pa.types.is_integer(table.schema.field(name).type) and table.column(name).null_count == 0
        ]  # fmt: skip
        if not cols:
            return None
        ids = np.empty((len(cols), n), dtype=np.int64)
        for k, j in enumerate(cols):
            ids[k] = table.column(self.sparse[j]).to_numpy()
        sizes = np.asarray([self.sizes[j] for j in cols], dtype=np.int64)[:, None]
        if self.cfg.parquet_ids == "modulo":
            ids %= sizes
        elif ids.size and (ids.min() < 0 or (ids >= sizes).any()):
            k, i = np.argwhere((ids < 0) | (ids >= sizes))[0]
            name, size = self.sparse[cols[k]], self.sizes[cols[k]]
            raise fail(
                i,
                f"column '{name}' id {ids[k, i]} is outside [0, {size}) (data.table_sizes); "
                "data.parquet_ids = 'modulo' reduces raw ids",
            )
        return ids if len(cols) == len(self.sparse) else {j: ids[k] for k, j in enumerate(cols)}

    def _ids(self, chunks: list[pa.Array], size: int, name: str, fail) -> tuple[np.ndarray, np.ndarray]:
        """One sparse column's chunks (n rows) -> (ids [N] int64, lengths [n] int64), chunk by chunk
        (row groups' string dictionaries differ)."""
        all_ids, all_lengths, seen = [], [], 0
        for arr in chunks:
            n = len(arr)
            if _is_list(arr.type):
                lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
                elements = arr.flatten()
            else:
                lengths = np.ones(n, dtype=np.int64)
                elements = arr
            if pa.types.is_integer(elements.type):
                ids = elements.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).copy()
                if self.cfg.parquet_ids == "modulo":
                    ids %= size
                else:
                    bad = np.flatnonzero((ids < 0) | (ids >= size))
                    if bad.size:
                        row = seen + int(np.repeat(np.arange(n), lengths)[bad[0]])
                        raise fail(
                            row,
                            f"column '{name}' id {ids[bad[0]]} is outside [0, {size}) (data.table_sizes); "
                            "data.parquet_ids = 'modulo' reduces raw ids",
                        )
            else:
                ids = token_ids(elements, size - 1, self._memo.setdefault(name, {}))
            all_ids.append(ids)
            all_lengths.append(lengths)
            seen += n
        if not chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(all_ids), np.concatenate(all_lengths)

    def _weights(self, arr: pa.Array, lengths: np.ndarray, name: str, fail) -> np.ndarray:
        """The weights column of sparse column `name` -> weights [N] float32, one per id."""
        wl = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = np.flatnonzero(wl != lengths)
        if bad.size:
            raise fail(bad[0], f"'{self.weights[name]}' has {wl[bad[0]]} weights for {lengths[bad[0]]} ids of '{name}'")
        flat = arr.flatten()
        if flat.null_count:
            i = np.flatnonzero(~flat.is_valid().to_numpy(zero_copy_only=False))[0]
            raise fail(np.repeat(np.arange(len(arr)), wl)[i], f"'{self.weights[name]}' holds a null weight")
        return flat.cast(pa.float32()).to_numpy(zero_copy_only=False)

    # ---- the DataSource interface ---------------------------------------------------------------

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless: step s holds rows [(s * world + rank) * B, +B) of the train files, cycled."""
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")
        if self.train.total == 0:
            raise UserError(f"no rows in {', '.join(map(str, self.train.paths))}")
        decoder = self.last_decoder = Decoder(self.train, self.columns, self.dictionary)

        def read(step: int) -> Batch:
            lo = (step * world + rank) * batch_size
            return self._read(self.train, decoder, lo, lo + batch_size, cycle=True)

        yield from ordered_map(read, itertools.count(start_step), self.cfg.reader_threads)

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Rows [rank * n // world, (rank + 1) * n // world) of the test files, in [<= batch_size] batches."""
        groups = self.test
        n = groups.total
        lo, hi = rank * n // world, (rank + 1) * n // world
        decoder = Decoder(groups, self.columns, self.dictionary)
        for start in range(lo, hi, batch_size):
            yield self._read(groups, decoder, start, min(start + batch_size, hi), cycle=False)

    def describe(self) -> dict:
        """Features, columns and row counts from the footers (values are checked when read)."""
        out = super().describe()
        out["rows"] = {"train": self.train.total, "test": self.test.total}
        out["malformed_rows"] = 0
        out["columns"] = {"label": self.label, "dense": self.dense, "sparse": self.sparse, "weights": self.weights}
        out["row_groups"] = {"train": len(self.train.groups), "test": len(self.test.groups)}
        out["files"] = {"train": list(map(str, self.train.paths)), "test": list(map(str, self.test.paths))}
        return out


def groups_empty(schema: pa.Schema, columns: list[str]) -> pa.Table:
    """A table with no rows and the given columns."""
    return pa.schema([schema.field(c) for c in columns]).empty_table()
