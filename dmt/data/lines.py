"""Text files read by line number: a rank seeks to its own lines and never touches the others'.

A `LineIndex` holds, for every CHUNK bytes of a file, how many newlines come before that chunk.
Finding the first byte of line i is one binary search and one scan of a single chunk. Building the
index is one pass over the file that only counts newlines (no parsing); the index is tiny (8 bytes
per 256 KiB) and is kept in `data.index_dir` (default `~/.cache/dmt/line-index`), named by the
file's path, size and modification time, so it is built once per file and shared by every rank and
every later run.

Gzip files cannot be entered in the middle. Their index is just the line count, and a reader
decompresses the stream from the start, counting newlines to reach its lines without tokenizing
anyone else's (so every rank inflates the whole file: convert it once with `dmt data convert`
when that matters).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmt.errors import UserError

CHUNK = 1 << 18  # bytes per index entry


def default_index_dir() -> Path:
    """$DMT_INDEX_DIR, else ~/.cache/dmt/line-index (under $XDG_CACHE_HOME where that is set)."""
    if os.environ.get("DMT_INDEX_DIR"):
        return Path(os.environ["DMT_INDEX_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmt" / "line-index"


@dataclass
class LineIndex:
    """Where the lines of one file are."""

    size: int  # bytes (decompressed bytes are not known for gzip: 0)
    lines: int  # a last line without a newline counts
    newlines: np.ndarray  # int64 [chunks + 1]: newlines in bytes [0, k * CHUNK); gzip: empty

    @staticmethod
    def build(path: Path, gz: bool) -> LineIndex:
        counts, last = [], b"\n"
        try:
            with gzip.open(path, "rb") if gz else open(path, "rb") as f:  # noqa: SIM115
                while chunk := f.read(CHUNK):
                    counts.append(chunk.count(b"\n"))
                    last = chunk[-1:]
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        newlines = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        lines = int(newlines[-1]) + (last != b"\n")
        return LineIndex(0 if gz else path.stat().st_size, lines, np.zeros(0, np.int64) if gz else newlines)


def load_index(path: Path, index_dir: str = "") -> LineIndex:
    """The index of `path` from the cache, else built (and cached when the folder is writable)."""
    stat = path.stat()
    folder = Path(index_dir).expanduser() if index_dir else default_index_dir()
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]
    cached = folder / f"{key}-{stat.st_size}-{stat.st_mtime_ns}-{CHUNK}.npy"
    gz = path.suffix == ".gz"
    if cached.is_file():
        try:
            stored = np.load(cached)
            return LineIndex(0 if gz else stat.st_size, int(stored[0]), stored[1:])
        except (OSError, ValueError):
            pass  # unreadable: build it again
    index = LineIndex.build(path, gz)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            np.save(tmp, np.concatenate(([index.lines], index.newlines)).astype(np.int64))
        os.replace(tmp.name, cached)  # atomic: ranks building it at once all write the same content
    except OSError:
        pass  # a read-only cache: the index lives in memory only
    return index


class LineFile:
    """One text file and its index; `reader()` gives a cursor of one's own (streams do not share one)."""

    def __init__(self, path: Path, index_dir: str = "") -> None:
        self.path = path
        self.gzip = path.suffix == ".gz"
        self.index = load_index(path, index_dir)

    @property
    def lines(self) -> int:
        return self.index.lines

    def reader(self) -> LineReader:
        return GzipLineReader(self) if self.gzip else PlainLineReader(self)


class LineReader:
    """Reads ranges of whole lines of one file; counts the bytes it read (`bytes_read`)."""

    def __init__(self, file: LineFile) -> None:
        self.file = file
        self.bytes_read = 0

    def read(self, lo: int, hi: int) -> bytes:
        """Lines [lo, hi) as bytes, newlines included (the file's last line may lack one)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class PlainLineReader(LineReader):
    """Positioned reads (os.pread): the byte offset of a line comes from the index and one chunk."""

    def __init__(self, file: LineFile) -> None:
        super().__init__(file)
        try:
            self.fd = os.open(file.path, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"cannot read {file.path}: {e.strerror}") from None
        self._known = {0: 0, file.lines: file.index.size}  # line -> byte offset of its first byte

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        self.bytes_read += len(data)
        return data

    def offset(self, line: int) -> int:
        """Byte offset where line `line` starts (the file size for line == lines)."""
        if line in self._known:
            return self._known[line]
        newlines = self.file.index.newlines
        k = int(np.searchsorted(newlines, line - 1, side="right")) - 1  # chunk holding newline number line - 1
        chunk = np.frombuffer(self._pread(CHUNK, k * CHUNK), dtype=np.uint8)
        at = k * CHUNK + int(np.flatnonzero(chunk == 10)[line - 1 - newlines[k]]) + 1
        if len(self._known) > 64:
            self._known = {0: 0, self.file.lines: self.file.index.size}
        self._known[line] = at
        return at

    def read(self, lo: int, hi: int) -> bytes:
        if hi <= lo:
            return b""
        start, end = self.offset(lo), self.offset(hi)
        return self._pread(end - start, start)

    def close(self) -> None:
        os.close(self.fd)


class GzipLineReader(LineReader):
    """A forward stream: skipped lines are decompressed and counted, never split into fields."""

    def __init__(self, file: LineFile) -> None:
        super().__init__(file)
        self._open()

    def _open(self) -> None:
        self.stream = gzip.open(self.file.path, "rb")  # noqa: SIM115
        self.line, self.pending = 0, b""  # next line number; bytes read past it

    def _take(self, count: int, keep: bool) -> bytes:
        """The next `count` lines: their bytes if `keep`, else they are only counted."""
        parts = []

        def move(cut: int, lines: int) -> None:
            if keep:
                parts.append(self.pending[:cut])
            self.pending, self.line = self.pending[cut:], self.line + lines

        while count > 0:
            newlines = self.pending.count(b"\n")
            if newlines >= count:
                move(int(np.flatnonzero(np.frombuffer(self.pending, dtype=np.uint8) == 10)[count - 1]) + 1, count)
                break
            if newlines:
                move(self.pending.rfind(b"\n") + 1, newlines)
                count -= newlines
            more = self.stream.read(1 << 20)
            self.bytes_read += len(more)
            if not more:  # the end: what is left is a last line without a newline
                if self.pending:
                    move(len(self.pending), 1)
                break
            self.pending += more
        return b"".join(parts)

    def read(self, lo: int, hi: int) -> bytes:
        if lo < self.line:
            self.stream.close()
            self._open()
        self._take(lo - self.line, keep=False)
        return self._take(hi - lo, keep=True)

    def close(self) -> None:
        self.stream.close()
