"""Today's Criteo TSV reader before the columnar one: pure-Python parsing, field by field.

Kept out of the package as the reference that the tests compare the library's reader with (same
rows, values and order) and that `benchmarks/data` measures. Every rank reads all lines of the
files and drops the other ranks' ones. The rules are those of `dmt/data/criteo.py`.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from dmt.config import DataConfig
from dmt.data.base import DataSource
from dmt.data.criteo import MalformedCount, criteo_features, resolve_paths
from dmt.errors import UserError
from dmt.sparse import Batch, KeyedJagged


def _open(path: Path) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def count_lines(paths: list[Path]) -> int:
    """Number of lines (a last line without a newline counts) of all files."""
    total = 0
    for path in paths:
        last = b"\n"
        with _open(path) as f:
            while chunk := f.read(1 << 22):
                total += chunk.count(b"\n")
                last = chunk[-1:]
        total += last != b"\n"
    return total


def lines(paths: list[Path], skip: int = 0, cycle: bool = False) -> Iterator[tuple[Path, int, bytes]]:
    """(file, 1-based line number, line) from line `skip` of the files read in order; endless if `cycle`."""
    while True:
        seen = 0
        for path in paths:
            with _open(path) as f:
                for lineno, line in enumerate(f, 1):
                    seen += 1
                    if skip:
                        skip -= 1
                        continue
                    yield path, lineno, line
        if not cycle:
            return
        if seen == 0:
            raise UserError(f"no rows in {', '.join(map(str, paths))}")
        skip %= seen  # a resume point many epochs ahead: only the remainder needs reading


class TsvParser:
    """Turns Criteo TSV lines into arrays, one field at a time."""

    def __init__(self, num_dense: int, num_sparse: int, table_sizes: list[int]) -> None:
        self.num_dense, self.num_sparse = num_dense, num_sparse
        self.width = 1 + num_dense + num_sparse
        self.moduli = [f.num_embeddings - 1 for f in criteo_features(num_sparse, table_sizes)]

    def row(self, line: bytes) -> tuple[float, list[float], list[int]]:
        """One line -> (label, dense values [D] before the log, ids [S]); ValueError says what is wrong."""
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) > self.width:
            raise ValueError(f"{len(fields)} fields, at most {self.width} allowed")
        fields += [b""] * (self.width - len(fields))
        label = fields[0].strip()
        if label not in (b"0", b"1"):
            raise ValueError(f"label {label.decode(errors='replace')!r} is not 0 or 1")
        dense = []
        for j, tok in enumerate(fields[1 : 1 + self.num_dense]):
            try:
                x = float(tok) if tok.strip() else 0.0
            except ValueError:
                raise ValueError(
                    f"dense column {j + 1} value {tok.decode(errors='replace')!r} is not a number"
                ) from None
            if not np.isfinite(x):
                raise ValueError(f"dense column {j + 1} value {tok.decode(errors='replace')!r} is not finite")
            dense.append(x)
        ids = []
        for tok, m in zip(fields[1 + self.num_dense :], self.moduli, strict=True):
            if not tok:
                ids.append(0)
                continue
            try:
                v = int(tok, 16)
            except ValueError:
                v = zlib.crc32(tok)
            ids.append(1 + v % m)
        return float(label == b"1"), dense, ids

    def arrays(self, dense: list[list[float]], ids: list[list[int]], labels: list[float]) -> tuple[np.ndarray, ...]:
        """Parsed rows -> dense [n, D] float32 = log(1 + max(x, 0)), ids [n, S] int64, labels [n] float32."""
        d = np.asarray(dense, dtype=np.float64).reshape(len(labels), self.num_dense)
        return (
            np.log1p(np.maximum(d, 0.0)).astype(np.float32),
            np.asarray(ids, dtype=np.int64).reshape(len(labels), self.num_sparse),
            np.asarray(labels, dtype=np.float32),
        )


def one_hot_batch(keys: list[str], dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> Batch:
    """dense [n, D] float32, ids [n, F] int64 (one id per feature), labels [n] -> Batch (fresh tensors)."""
    n = labels.shape[0]
    sparse = KeyedJagged(
        keys=list(keys),
        values=torch.from_numpy(np.ascontiguousarray(ids.T, dtype=np.int64).ravel()),  # feature-major
        lengths=torch.ones(len(keys) * n, dtype=torch.long),
    )
    return Batch(
        dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
        sparse=sparse,
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
    )


class LegacyCriteoTsvSource(DataSource):
    """The streaming reader as it was: every rank iterates over every line."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.num_dense = cfg.num_dense
        self.features = criteo_features(cfg.num_sparse, cfg.table_sizes)
        self.keys = [f.name for f in self.features]
        self.parser = TsvParser(cfg.num_dense, cfg.num_sparse, cfg.table_sizes)
        self.train_paths = resolve_paths(cfg.train_path, "data.train_path")
        self.test_paths = resolve_paths(cfg.test_path, "data.test_path")
        self._test_rows: int | None = None
        self.malformed: dict[str, MalformedCount] = {"train": MalformedCount(), "test": MalformedCount()}

    def _parse(self, chunk: list[tuple[Path, int, bytes]], count: MalformedCount) -> Batch:
        """Parse lines into one Batch, skipping (and counting) or raising on malformed ones."""
        dense, ids, labels = [], [], []
        for path, lineno, line in chunk:
            try:
                y, x, c = self.parser.row(line)
            except ValueError as e:
                where = f"{path}:{lineno}: malformed Criteo row: {e}"
                if self.cfg.malformed == "error":
                    raise UserError(where + " (data.malformed = 'skip' drops such rows)") from None
                count.rows += 1
                count.first = count.first or where
                continue
            labels.append(y)
            dense.append(x)
            ids.append(c)
        return one_hot_batch(self.keys, *self.parser.arrays(dense, ids, labels))

    def _report(self, split: str, rank: int, count: MalformedCount, before: int) -> None:
        if count.rows > before:
            skipped = count.rows - before
            print(
                f"dmt: warning: skipped {skipped} malformed {split} rows on rank {rank}; first: {count.first}",
                file=sys.stderr,
            )

    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless: step s holds lines [(s * world + rank) * B, +B) of the cycled train files (minus malformed)."""
        count = self.malformed["train"]
        before = count.rows
        stream = lines(self.train_paths, skip=start_step * world * batch_size, cycle=True)
        after = (world - 1 - rank) * batch_size
        try:
            while True:
                mine = list(islice(stream, rank * batch_size, (rank + 1) * batch_size))
                yield self._parse(mine, count)
                next(islice(stream, after, after), None)  # the later ranks' lines
        finally:
            self._report("train", rank, count, before)

    def test_rows(self) -> int:
        if self._test_rows is None:
            self._test_rows = count_lines(self.test_paths)
        return self._test_rows

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Lines [rank * n // world, (rank + 1) * n // world) of the test files, n = their line count."""
        n = self.test_rows()
        lo, hi = rank * n // world, (rank + 1) * n // world
        count = self.malformed["test"]
        before = count.rows
        stream = islice(lines(self.test_paths, skip=lo), hi - lo)
        try:
            while chunk := list(islice(stream, batch_size)):
                batch = self._parse(chunk, count)
                if batch.size:
                    yield batch
        finally:
            self._report("test", rank, count, before)
