"""The columnar Criteo TSV reader against the line-by-line reader it replaces (benchmarks/data/legacy_tsv.py):
the same rows, values, order and malformed-row reports; each rank reading only its own bytes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.data.legacy_tsv import LegacyCriteoTsvSource, TsvParser
from dmt.config import DataConfig
from dmt.data import lines as lines_module
from dmt.data.criteo import CriteoTsvSource
from dmt.data.tsv import CriteoTsvParser
from dmt.errors import UserError
from dmt.sparse import Batch


def criteo_rows(n: int, seed: int = 0, bad: dict[int, str] | None = None) -> bytes:
    """n rows in the Criteo layout (label, 13 integers, 26 hex tokens): missing values, -1 and -2,
    dropped trailing fields, CRLF endings, tokens of other lengths; `bad` replaces some lines."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dense = ["" if rng.random() < 0.2 else str(int(rng.geometric(0.02)) - 3) for _ in range(13)]
        sparse = ["" if rng.random() < 0.15 else f"{rng.integers(1 << 32):08x}" for _ in range(26)]
        if i % 17 == 0:
            sparse[3] = f"{rng.integers(1 << 20):x}"  # shorter token
        if i % 29 == 0:
            sparse[5] = f"{rng.integers(1 << 60):x}"  # longer token
        fields = [str(int(rng.random() < 0.25)), *dense, *sparse]
        if i % 11 == 0:
            while fields[-1] == "":
                fields.pop()
            fields = fields[:30]
        end = "\r\n" if i % 13 == 0 else "\n"
        out.append((bad or {}).get(i, "\t".join(fields)) + end)
    return "".join(out).encode()


BAD = {
    5: "0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13" + "\ta" * 27,  # 41 fields
    9: "2\t1",  # label
    40: "1\tx1",  # dense not a number
    41: "1\t1e400",  # dense not finite
    77: "",  # blank
    78: "\t".join([" 1 ", " 2", "+3", "1_0", "-0", ".5", "1e3", "\x0b4", *[""] * 6, "0x1f", "-a", " ", "zz", "1_f"]),
}


def cfg(train: Path, test: Path | None = None, **kw) -> DataConfig:
    return DataConfig(
        source="criteo_tsv", train_path=str(train), test_path=str(test or train), table_sizes=[1000, 97] * 13, **kw
    )


def same(a: Batch, b: Batch) -> bool:
    return (
        torch.equal(a.labels, b.labels)
        and torch.equal(a.dense, b.dense)
        and torch.equal(a.sparse.values, b.sparse.values)
        and torch.equal(a.sparse.lengths, b.sparse.lengths)
        and a.sparse.keys == b.sparse.keys
    )


@pytest.fixture(scope="module")
def criteo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("criteo") / "rows.tsv"
    path.write_bytes(criteo_rows(1500, bad=BAD))
    return path


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_train_batches_equal_the_legacy_reader(criteo_file: Path, world: int, capsys: pytest.CaptureFixture) -> None:
    new, old = CriteoTsvSource(cfg(criteo_file)), LegacyCriteoTsvSource(cfg(criteo_file))
    b = 97  # global batches straddle the end of the file
    steps = -(-1800 // (world * b))
    for r in range(world):
        a, c = new.train_batches(b, r, world), old.train_batches(b, r, world)
        for _ in range(steps):
            assert same(next(a), next(c))
        a.close()
        c.close()
    assert new.malformed["train"] == old.malformed["train"]
    assert new.malformed["train"].rows > len(BAD) - 1  # the file's bad rows, some read twice
    err = capsys.readouterr().err
    assert f"{criteo_file}:6: malformed Criteo row: 41 fields, at most 40 allowed" in err


def test_eval_resume_and_describe_equal_the_legacy_reader(criteo_file: Path) -> None:
    new, old = CriteoTsvSource(cfg(criteo_file)), LegacyCriteoTsvSource(cfg(criteo_file))
    for world in (1, 3):
        for r in range(world):
            pairs = list(zip(new.eval_batches(256, r, world), old.eval_batches(256, r, world), strict=True))
            assert pairs and all(same(x, y) for x, y in pairs)
    for start in (0, 7, 40):
        assert same(next(new.train_batches(64, 1, 2, start)), next(old.train_batches(64, 1, 2, start)))
    info = new.describe()
    assert info["rows"] == {"train": 1500 - 5, "test": 1500 - 5} and info["malformed_rows"] == 10


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (6, "41 fields"),
        (10, "label '2'"),
        (41, "'x1' is not a number"),
        (42, "'1e400' is not finite"),
        (78, "label ''"),
    ],
)
def test_malformed_error_names_file_line_and_reason(tmp_path: Path, line: int, reason: str) -> None:
    bad = {line - 1: BAD[line - 1]}
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(100, bad=bad))
    with pytest.raises(UserError, match=rf"{path}:{line}: malformed Criteo row: .*{reason}") as new:
        list(CriteoTsvSource(cfg(path, malformed="error")).eval_batches(30))
    with pytest.raises(UserError) as old:
        list(LegacyCriteoTsvSource(cfg(path, malformed="error")).eval_batches(30))
    assert str(new.value) == str(old.value)


FIELD = st.sampled_from(
    [b"", b"0", b"1", b"7", b"-3", b"12", b"+4", b" 5", b"6 ", b"1_0", b"0x1f", b"1.5", b"1e3", b"inf", b"nan",
     b"-", b"ab", b"DEADbeef", b"12345678", b"ffffffffffffffffff", b"\x0b1", b"zz", b"\xff", b"\xef\xbb\xbf1", b"\r"]
)  # fmt: skip
LINE = st.lists(FIELD, min_size=1, max_size=7).map(b"\t".join)
ENDING = st.sampled_from([b"\n", b"\r\n", b"\r\r\n", b"\r\n"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LINE, ENDING), min_size=1, max_size=12), st.booleans())
def test_parser_equals_line_by_line_rules(rows: list[tuple[bytes, bytes]], last_newline: bool) -> None:
    """Any mix of odd fields, widths and line endings: the same good rows, values and malformed lines."""
    data = b"".join(line + end for line, end in rows)
    if not last_newline:
        data = data.rstrip(b"\n")
    old, new = TsvParser(2, 3, [11, 5, 1000]), CriteoTsvParser(2, 3, [11, 5, 1000])
    good, bad, first = [], [], ""
    for i, line in enumerate(io.BytesIO(data)):
        try:
            good.append(old.row(line))
        except ValueError as e:
            bad.append(i)
            first = first or str(e)
    got = new.parse(data)
    dense, ids, labels = old.arrays([g[1] for g in good], [g[2] for g in good], [g[0] for g in good])
    assert got.bad.tolist() == bad and got.first_reason == first
    assert np.array_equal(got.labels, labels) and np.array_equal(got.ids, ids.T) and np.array_equal(got.dense, dense)


def test_gzip_files_equal_the_legacy_reader(tmp_path: Path) -> None:
    for k, n in enumerate((300, 250)):
        with gzip.open(tmp_path / f"day_{k}.tsv.gz", "wb") as f:
            f.write(criteo_rows(n, seed=k).rstrip(b"\n") if k else criteo_rows(n, seed=k))  # one lacks a last newline
    new, old = CriteoTsvSource(cfg(tmp_path / "day_*")), LegacyCriteoTsvSource(cfg(tmp_path / "day_*"))
    for r in range(2):
        a, c = new.train_batches(64, r, 2, start_step=1), old.train_batches(64, r, 2, start_step=1)
        for _ in range(6):  # past the end of both files: the gzip cursors start again
            assert same(next(a), next(c))
    assert new.test_rows() == 550


def test_a_rank_reads_only_its_own_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "CHUNK", 4096)
    path = tmp_path / "big.tsv"
    path.write_bytes(criteo_rows(3000, seed=3))
    src, world, batch, steps = CriteoTsvSource(cfg(path)), 16, 40, 4
    stream = src.train_batches(batch, rank=0, world=world)
    for _ in range(steps):
        next(stream)
    own = sum(
        len(line) for s in range(steps) for line in path.read_bytes().splitlines(True)[s * world * batch :][:batch]
    )
    read = src.last_readers.bytes_read
    assert own <= read <= own + 2 * steps * 4096  # its lines, plus one index chunk per line it looked up
    assert read < path.stat().st_size / 6


def test_line_index_is_cached_and_rebuilt_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(50))
    index_dir = tmp_path / "index"
    assert CriteoTsvSource(cfg(path, index_dir=str(index_dir))).test_rows() == 50
    assert len(list(index_dir.glob("*.npy"))) == 1
    assert CriteoTsvSource(cfg(path, index_dir=str(index_dir))).test_rows() == 50  # from the cache
    with path.open("ab") as f:
        f.write(criteo_rows(5, seed=9))
    assert CriteoTsvSource(cfg(path, index_dir=str(index_dir))).test_rows() == 55
    assert len(list(index_dir.glob("*.npy"))) == 2
