"""Criteo click logs from files: raw TSV (streamed) and TorchRec's preprocessed npy day files.

Both sources give `num_sparse` one-hot features "cat_0", "cat_1", ... (each its own table, sized by
`data.table_sizes`) and `num_dense` dense values per sample.

Raw TSV (`data.source = "criteo_tsv"`), one row per line:

    label \\t I_1 ... I_num_dense \\t C_1 ... C_num_sparse      (defaults 13 and 26)

- Any field may be empty, and a row may stop early (real files drop trailing empty fields).
- label: "0" or "1". Dense: numbers (integers in Criteo); missing -> 0; value -> log(1 + max(x, 0)).
  Criteo's integer columns hold some -1 and -2: they are clamped to 0 before the log.
- Categorical: a hexadecimal token is read as its value, any other token as the CRC-32 of its bytes;
  then missing -> row 0 and value v -> 1 + v mod (size - 1), so row 0 is the learned "missing" row.
- Malformed rows (more fields than 1 + num_dense + num_sparse, a label that is not 0/1, a dense value
  that is not a finite number): `data.malformed = "skip"` drops and counts them (reported on stderr
  when the stream ends), `"error"` raises `UserError` naming file:line.
- Rows are lines, counted over `data.train_path` (a file or a glob, sorted; *.gz read as gzip), read
  in order and restarted at the end. Global batch `step` is lines [step * W * B, (step + 1) * W * B)
  of that endless sequence and rank r reads lines [step * W * B + r * B, + B). A skipped malformed
  line leaves its rank's batch one row short; no row is ever moved to another batch. (Training runs
  with such uneven batches; `dmt verify` needs full global batches, so check it on clean files.)
- Each rank reads only its own lines: a line index per file (dmt/data/lines.py, built once and
  cached in `data.index_dir`) turns line numbers into byte ranges, so the work per rank does not
  grow with the world size (gzip files are inflated in full by every rank: they cannot be entered
  in the middle). Parsing is columnar (dmt/data/tsv.py): pyarrow splits the fields, numpy converts
  them, with exactly the rules above; `data.reader_threads` parse several steps at once.

TorchRec npy (`data.source = "criteo_npy"`): in `data.train_path` (and `data.test_path`, default the
same folder), for each day N of `data.train_days` / `data.test_days`:

    day_N_dense.npy  [n, num_dense] float   used as stored: TorchRec's tsv_to_npys already maps missing
                                            to 0 and x to log(x + 3); a NaN or infinity is an error
    day_N_sparse.npy [n, num_sparse] int    TorchRec keeps the raw hashed ids here (and applies
                                            `id % hash_size` when it loads); `data.npy_ids = "check"`
                                            requires 0 <= id < table size, `"modulo"` does id mod size
    day_N_labels.npy [n] or [n, 1] int      0 or 1

Files are memory-mapped, so memory stays constant; rows are checked as they are read. The train days
are one sequence of rows, sliced into global batches exactly like the TSV lines.
"""

from __future__ import annotations

import glob
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmt.config import DataConfig
from dmt.data.base import DataSource
from dmt.data.lines import LineFile, LineReader
from dmt.data.loader import ordered_map
from dmt.data.tsv import CriteoTsvParser, ParsedRows
from dmt.errors import UserError
from dmt.sparse import Batch, KeyedJagged
from dmt.specs import FeatureSpec

DESCRIBE_LINES = 1 << 16  # lines parsed at a time by `describe`


def criteo_features(num_sparse: int, table_sizes: list[int]) -> list[FeatureSpec]:
    """Features "cat_0".. "cat_{num_sparse-1}", each reading its own table of table_sizes[i] (or [0]) rows."""
    sizes = table_sizes if len(table_sizes) == num_sparse else table_sizes * num_sparse
    return [FeatureSpec(f"cat_{i}", f"cat_{i}", int(sizes[i])) for i in range(num_sparse)]


def one_hot_batch(keys: list[str], dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> Batch:
    """dense [n, D] float32, ids [F, n] int64 (feature-major, one id per feature), labels [n] -> Batch."""
    n = labels.shape[0]
    sparse = KeyedJagged(
        keys=list(keys),
        values=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64).ravel()),
        lengths=torch.from_numpy(np.ones(len(keys) * n, dtype=np.int64)),  # numpy: no intra-op threads
    )
    return Batch(
        dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
        sparse=sparse,
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
    )


def _check_split(batch_size: int, rank: int, world: int) -> None:
    if batch_size < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")


# ---- raw TSV ----------------------------------------------------------------------------------


def resolve_paths(pattern: str, key: str) -> list[Path]:
    """A file, or the sorted matches of a glob; UserError naming `key` when there is none."""
    p = Path(pattern).expanduser()
    if p.is_file():
        return [p]
    matches = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
    if not matches:
        raise UserError(f"{key} = '{pattern}': no such file (a file or a glob pattern is expected)")
    return matches


@dataclass
class MalformedCount:
    """Malformed rows met by one stream, and the first of them."""

    rows: int = 0
    first: str = ""


@dataclass
class Piece:
    """Parsed lines [lo, lo + lines) of one file."""

    path: Path
    lo: int
    rows: ParsedRows


class LineSequence:
    """Files read as one sequence of lines, in order; positions past the end wrap around (`cycle`)."""

    def __init__(self, paths: list[Path], index_dir: str) -> None:
        self.files = [LineFile(p, index_dir) for p in paths]
        self.starts = np.cumsum([0] + [f.lines for f in self.files])  # [files + 1]
        self.total = int(self.starts[-1])

    def spans(self, lo: int, hi: int, cycle: bool) -> list[tuple[int, int, int]]:
        """Positions [lo, hi) as (file, first line, end line) spans of whole files' lines."""
        out = []
        while lo < hi:
            q = lo % self.total if cycle else lo
            f = int(np.searchsorted(self.starts, q, side="right")) - 1
            take = min(hi - lo, int(self.starts[f + 1]) - q)
            first = q - int(self.starts[f])
            out.append((f, first, first + take))
            lo += take
        return out

    def readers(self) -> Readers:
        return Readers(self)


class Readers:
    """One stream's cursors into a LineSequence's files, opened as needed."""

    def __init__(self, seq: LineSequence) -> None:
        self.seq = seq
        self.open: dict[int, LineReader] = {}

    def read(self, f: int, lo: int, hi: int) -> bytes:
        if f not in self.open:
            self.open[f] = self.seq.files[f].reader()
        return self.open[f].read(lo, hi)

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.open.values())

    def close(self) -> None:
        for r in self.open.values():
            r.close()
        self.open.clear()


class CriteoTsvSource(DataSource):
    """Criteo TSV files, each rank reading only its own lines; see the module docstring."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.num_dense = cfg.num_dense
        self.features = criteo_features(cfg.num_sparse, cfg.table_sizes)
        self.keys = [f.name for f in self.features]
        self.parser = CriteoTsvParser(cfg.num_dense, cfg.num_sparse, cfg.table_sizes)
        self.train_paths = resolve_paths(cfg.train_path, "data.train_path")
        self.test_paths = resolve_paths(cfg.test_path, "data.test_path")
        self.train = LineSequence(self.train_paths, cfg.index_dir)
        self._test: LineSequence | None = None
        self.malformed: dict[str, MalformedCount] = {"train": MalformedCount(), "test": MalformedCount()}
        self.last_readers: Readers | None = None  # the latest stream's cursors (their bytes_read)

    @property
    def test(self) -> LineSequence:
        if self._test is None:
            self._test = LineSequence(self.test_paths, self.cfg.index_dir)
        return self._test

    def read(self, seq: LineSequence, readers: Readers, lo: int, hi: int, cycle: bool) -> list[Piece]:
        """Positions [lo, hi) read and parsed (whole lines of each file in one go)."""
        return [
            Piece(seq.files[f].path, a, self.parser.parse(readers.read(f, a, b), b - a))
            for f, a, b in seq.spans(lo, hi, cycle)
        ]

    def _batch(self, pieces: list[Piece], count: MalformedCount) -> Batch:
        """The pieces' good rows as one Batch; malformed rows counted, or an error at the first."""
        self.account(pieces, count)
        if len(pieces) == 1:
            r = pieces[0].rows
            return one_hot_batch(self.keys, r.dense, r.ids, r.labels)
        rows = [p.rows for p in pieces] or [self.parser.parse(b"", 0)]
        return one_hot_batch(
            self.keys,
            np.concatenate([r.dense for r in rows]),
            np.concatenate([r.ids for r in rows], axis=1),
            np.concatenate([r.labels for r in rows]),
        )

    def account(self, pieces: list[Piece], count: MalformedCount) -> None:
        """Apply data.malformed to the pieces' malformed lines: count them, or raise at the first."""
        for p in pieces:
            if p.rows.bad.size:
                where = f"{p.path}:{p.lo + int(p.rows.bad[0]) + 1}: malformed Criteo row: {p.rows.first_reason}"
                if self.cfg.malformed == "error":
                    raise UserError(where + " (data.malformed = 'skip' drops such rows)")
                count.rows += int(p.rows.bad.size)
                count.first = count.first or where

    def _report(self, split: str, rank: int, count: MalformedCount, before: int) -> None:
        if count.rows > before:
            skipped = count.rows - before
            print(
                f"dmt: warning: skipped {skipped} malformed {split} rows on rank {rank}; first: {count.first}",
                file=sys.stderr,
            )

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless: step s holds lines [(s * world + rank) * B, +B) of the cycled train files (minus malformed).

        The rank reads those lines alone (byte ranges from the line index), `data.reader_threads`
        steps at a time.
        """
        _check_split(batch_size, rank, world)
        if self.train.total == 0:
            raise UserError(f"no rows in {', '.join(map(str, self.train_paths))}")
        count = self.malformed["train"]
        before = count.rows
        readers = self.last_readers = self.train.readers()
        gz = any(f.gzip for f in self.train.files)  # a gzip cursor moves forward only: one thread

        def read(step: int) -> list[Piece]:
            lo = (step * world + rank) * batch_size
            return self.read(self.train, readers, lo, lo + batch_size, cycle=True)

        parsed = ordered_map(read, itertools.count(start_step), 1 if gz else self.cfg.reader_threads)
        try:
            for pieces in parsed:
                yield self._batch(pieces, count)
        finally:
            parsed.close()
            readers.close()
            self._report("train", rank, count, before)

    def test_rows(self) -> int:
        """Lines of the test files."""
        return self.test.total

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Lines [rank * n // world, (rank + 1) * n // world) of the test files, n = their line count."""
        _check_split(batch_size, rank, world)
        n = self.test.total
        lo, hi = rank * n // world, (rank + 1) * n // world
        count = self.malformed["test"]
        before = count.rows
        readers = self.test.readers()
        try:
            for start in range(lo, hi, batch_size):
                batch = self._batch(self.read(self.test, readers, start, min(start + batch_size, hi), False), count)
                if batch.size:
                    yield batch
        finally:
            readers.close()
            self._report("test", rank, count, before)

    def describe(self) -> dict:
        """Features, and rows / malformed rows of train and test from one full parsing pass over each."""
        out = super().describe()
        rows, rate, bad = {}, {}, 0
        for split, seq in (("train", self.train), ("test", self.test)):
            count, n, positives = MalformedCount(), 0, 0.0
            readers = seq.readers()
            for start in range(0, seq.total, DESCRIBE_LINES):
                pieces = self.read(seq, readers, start, min(start + DESCRIBE_LINES, seq.total), cycle=False)
                batch = self._batch(pieces, count)
                n += batch.size
                positives += float(batch.labels.sum())
            readers.close()
            rows[split], rate[split], bad = n, positives / max(n, 1), bad + count.rows
        out["rows"] = rows  # good rows
        out["positive_rate"] = rate
        out["malformed_rows"] = bad
        out["files"] = {"train": list(map(str, self.train_paths)), "test": list(map(str, self.test_paths))}
        return out


# ---- TorchRec npy day files ---------------------------------------------------------------------


@dataclass
class NpyDay:
    """One day's memory-mapped arrays."""

    day: int
    paths: dict[str, Path]  # "dense", "sparse", "labels" -> file
    dense: np.ndarray  # [n, num_dense] float
    sparse: np.ndarray  # [n, num_sparse] int
    labels: np.ndarray  # [n] or [n, 1]

    @property
    def rows(self) -> int:
        return self.labels.shape[0]


def _load_day(folder: Path, day: int, num_dense: int, num_sparse: int) -> NpyDay:
    paths = {k: folder / f"day_{day}_{k}.npy" for k in ("dense", "sparse", "labels")}
    arrays = {}
    for k, p in paths.items():
        if not p.is_file():
            raise UserError(f"missing Criteo npy file {p} (data.train_path / data.test_path and the day lists)")
        try:
            arrays[k] = np.load(p, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise UserError(f"{p}: not a readable .npy file ({e})") from None
    dense, sparse, labels = arrays["dense"], arrays["sparse"], arrays["labels"]
    n = labels.shape[0] if labels.ndim else -1
    checks = [
        ("dense", dense.ndim == 2 and dense.shape == (n, num_dense), f"[{n}, {num_dense}] (data.num_dense)"),
        ("dense", np.issubdtype(dense.dtype, np.floating), "a float dtype"),
        ("sparse", sparse.ndim == 2 and sparse.shape == (n, num_sparse), f"[{n}, {num_sparse}] (data.num_sparse)"),
        ("sparse", np.issubdtype(sparse.dtype, np.integer), "an integer dtype"),
        ("labels", labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1), "[n] or [n, 1]"),
    ]
    for k, ok, want in checks:
        if not ok:
            a = arrays[k]
            raise UserError(f"{paths[k]}: shape {list(a.shape)} dtype {a.dtype}, expected {want}")
    return NpyDay(day, paths, dense, sparse, labels)


class CriteoNpySource(DataSource):
    """TorchRec's preprocessed Criteo day files, memory-mapped; see the module docstring."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.num_dense = cfg.num_dense
        self.features = criteo_features(cfg.num_sparse, cfg.table_sizes)
        self.keys = [f.name for f in self.features]
        self.sizes = np.array([f.num_embeddings for f in self.features], dtype=np.int64)  # [S]
        train_dir = Path(cfg.train_path).expanduser()
        test_dir = Path(cfg.test_path or cfg.train_path).expanduser()
        for key, folder in (("data.train_path", train_dir), ("data.test_path", test_dir)):
            if not folder.is_dir():
                raise UserError(f"{key} = '{folder}' is not a folder (criteo_npy reads day_N_*.npy files in one)")
        self.train = [_load_day(train_dir, d, cfg.num_dense, cfg.num_sparse) for d in cfg.train_days]
        self.test = [_load_day(test_dir, d, cfg.num_dense, cfg.num_sparse) for d in cfg.test_days]
        self._train_starts = np.cumsum([0] + [d.rows for d in self.train])  # [days + 1]
        self._test_starts = np.cumsum([0] + [d.rows for d in self.test])
        if self._train_starts[-1] == 0:
            raise UserError(f"the train days {cfg.train_days} in {train_dir} hold no rows")

    def _checked(self, day: NpyDay, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [lo, hi) of one day -> dense [n, D] float32, ids [n, S] int64, labels [n] float32, validated."""
        dense = np.asarray(day.dense[lo:hi], dtype=np.float32)
        ids = np.asarray(day.sparse[lo:hi], dtype=np.int64)
        labels = np.asarray(day.labels[lo:hi], dtype=np.float32).reshape(-1)
        bad = ~np.isfinite(dense)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise UserError(f"{day.paths['dense']}: row {lo + i} (0-based), column {j}: dense value {dense[i, j]}")
        if self.cfg.npy_ids == "modulo":
            ids = np.mod(ids, self.sizes)
        else:
            bad = (ids < 0) | (ids >= self.sizes)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise UserError(
                    f"{day.paths['sparse']}: row {lo + i} (0-based), column {j}: id {ids[i, j]} is outside "
                    f"[0, {self.sizes[j]}) (data.table_sizes); data.npy_ids = 'modulo' reduces raw hashed ids"
                )
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{day.paths['labels']}: row {lo + i} (0-based): label {labels[i]} is not 0 or 1")
        return dense, ids, labels

    def _rows(self, days: list[NpyDay], starts: np.ndarray, lo: int, hi: int, cycle: bool) -> Batch:
        """Rows [lo, hi) of the days' concatenation (positions mod its length when `cycle`) as one Batch."""
        total = int(starts[-1])
        parts = []
        while lo < hi:
            q = lo % total if cycle else lo
            d = int(np.searchsorted(starts, q, side="right")) - 1
            take = min(hi - lo, int(starts[d + 1]) - q)
            parts.append(self._checked(days[d], q - int(starts[d]), q - int(starts[d]) + take))
            lo += take
        if not parts:
            parts.append(self._checked(days[0], 0, 0))
        dense, ids, labels = (np.concatenate([p[k] for p in parts]) for k in range(3))
        return one_hot_batch(self.keys, dense, ids.T, labels)

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless: step s holds rows [(s * world + rank) * B, +B) of the train days, cycled."""
        _check_split(batch_size, rank, world)
        step = start_step
        while True:
            start = (step * world + rank) * batch_size
            yield self._rows(self.train, self._train_starts, start, start + batch_size, cycle=True)
            step += 1

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Rows [rank * n // world, (rank + 1) * n // world) of the test days, in [<= batch_size] batches."""
        _check_split(batch_size, rank, world)
        n = int(self._test_starts[-1])
        lo, hi = rank * n // world, (rank + 1) * n // world
        for start in range(lo, hi, batch_size):
            yield self._rows(self.test, self._test_starts, start, min(start + batch_size, hi), cycle=False)

    def describe(self) -> dict:
        """Features and row counts from the files' headers (rows are validated when read, not here)."""
        out = super().describe()
        out["rows"] = {"train": int(self._train_starts[-1]), "test": int(self._test_starts[-1])}
        out["malformed_rows"] = 0
        out["days"] = {"train": self.cfg.train_days, "test": self.cfg.test_days}
        return out
