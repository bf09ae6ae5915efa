"""Criteo file readers: TSV parsing rules, malformed rows, sharding without loss or repeat, resume, npy days."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dmt.cli import main
from dmt.config import DataConfig, config_from_dict
from dmt.data import make_source
from dmt.data.criteo import CriteoNpySource, CriteoTsvSource
from dmt.errors import UserError
from dmt.sparse import Batch

D, S = 3, 4  # small column counts: the readers take any


def tsv_cfg(train: Path, test: Path | None = None, **kw) -> DataConfig:
    base = dict(source="criteo_tsv", train_path=str(train), test_path=str(test or train), num_dense=D, num_sparse=S)
    return DataConfig(**{**base, "table_sizes": [97], **kw})


def write_rows(path: Path, n: int, bad: dict[int, str] | None = None, offset: int = 0) -> Path:
    """n rows whose first dense value is the row number (offset + i); `bad` replaces some lines."""
    rng = np.random.default_rng(n + offset)
    lines = []
    for i in range(n):
        sparse = [f"{rng.integers(1 << 32):08x}" if rng.random() < 0.8 else "" for _ in range(S)]
        fields = [str(int(rng.random() < 0.3)), str(offset + i), str(rng.integers(-2, 50)), "", *sparse]
        while fields[-1] == "" and i % 3 == 0:  # some rows drop their trailing empty fields
            fields.pop()
        lines.append((bad or {}).get(i, "\t".join(fields)))
    path.write_text("\n".join(lines) + "\n")
    return path


def row_numbers(batch: Batch) -> list[int]:
    """The row number each sample carries in dense column 0 (stored as log1p)."""
    return np.rint(np.expm1(batch.dense[:, 0].double().numpy())).astype(int).tolist()


def test_parse_rules(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text(
        "1\t5\t-2\t\ta\tzz\t\t7fffffff\n"  # negative clamped, empty dense, hex / non-hex / empty ids
        "0\t\t3\n"  # trailing empty fields dropped
        "0\t1.5\t0\t2\t\t\t\t\r\n"  # float dense, CRLF, all ids missing
    )
    src = CriteoTsvSource(tsv_cfg(path, table_sizes=[11, 11, 11, 1000]))
    b = next(src.train_batches(3))
    assert b.labels.tolist() == [1.0, 0.0, 0.0]
    want = np.log1p([[5, 0, 0], [0, 3, 0], [1.5, 0, 2]]).astype(np.float32)
    np.testing.assert_allclose(b.dense.numpy(), want, rtol=1e-6)
    ids = b.sparse.values.view(S, 3).T.tolist()  # feature-major -> [sample, feature]
    assert ids[0] == [1 + 10 % 10, 1 + zlib.crc32(b"zz") % 10, 0, 1 + 0x7FFFFFFF % 999]
    assert ids[1] == ids[2] == [0, 0, 0, 0]
    assert b.sparse.lengths.tolist() == [1] * (S * 3)
    assert [f.num_embeddings for f in src.features] == [11, 11, 11, 1000]
    assert [f.name for f in src.features] == ["cat_0", "cat_1", "cat_2", "cat_3"]


def test_ids_stay_inside_tables(tmp_path: Path) -> None:
    src = CriteoTsvSource(tsv_cfg(write_rows(tmp_path / "a.tsv", 200), table_sizes=[2, 3, 5, 7]))
    parts = next(src.eval_batches(1000)).sparse.per_key()
    for f in src.features:
        values = parts[f.name][0]
        assert int(values.min()) >= 0 and int(values.max()) < f.num_embeddings


BAD = {
    3: "0\t1\t2\t3\ta\tb\tc\td\textra",  # too many fields
    7: "2\t7\t0",  # label not 0/1
    11: "1\tabc\t0",  # dense not a number
    12: "1\tnan\t0",  # dense not finite
    20: "",  # blank line: no label
}


def test_malformed_rows_skipped_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_rows(tmp_path / "a.tsv", 30, bad=BAD)
    src = CriteoTsvSource(tsv_cfg(path))
    stream = src.train_batches(10)
    seen = [row_numbers(next(stream)) for _ in range(3)]
    stream.close()  # the end of a stream reports what it skipped
    assert sum(seen, []) == [i for i in range(30) if i not in BAD]
    assert src.malformed["train"].rows == len(BAD)
    err = capsys.readouterr().err
    assert f"skipped {len(BAD)} malformed train rows" in err and f"{path}:4:" in err
    info = src.describe()
    assert info["rows"] == {"train": 30 - len(BAD), "test": 30 - len(BAD)}
    assert info["malformed_rows"] == 2 * len(BAD)


@pytest.mark.parametrize(
    ("line", "reason"), [(i + 1, r) for i, r in zip(BAD, ["fields", "label", "number", "finite", "label"], strict=True)]
)
def test_malformed_row_error_names_file_and_line(tmp_path: Path, line: int, reason: str) -> None:
    bad_index = line - 1
    path = write_rows(tmp_path / "a.tsv", 30, bad={bad_index: BAD[bad_index]})
    src = CriteoTsvSource(tsv_cfg(path, malformed="error"))
    with pytest.raises(UserError, match=rf"{path}:{line}: malformed Criteo row: .*{reason}"):
        list(src.eval_batches(8))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [4, 7])
def test_rank_shards_neither_drop_nor_repeat(tmp_path: Path, world: int, batch: int) -> None:
    n = 50  # divisible by neither world * batch: global batches straddle the end of the file
    train = write_rows(tmp_path / "train.tsv", n, bad={17: "x"})
    src = CriteoTsvSource(tsv_cfg(train))
    streams = [src.train_batches(batch, rank=r, world=world) for r in range(world)]
    steps = -(-3 * n // (world * batch))  # three epochs
    got = []
    for step in range(steps):
        ranks = [row_numbers(next(s)) for s in streams]
        union = sum(ranks, [])
        start = step * world * batch
        assert union == [p % n for p in range(start, start + world * batch) if p % n != 17]
        got += union
    assert sorted(got[: n - 1]) == [i for i in range(n) if i != 17]  # the first epoch: every good row once


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_split_over_ranks(tmp_path: Path, world: int) -> None:
    test = write_rows(tmp_path / "test.tsv", 23, offset=1000)
    src = CriteoTsvSource(tsv_cfg(write_rows(tmp_path / "train.tsv", 5), test))
    rows = [row_numbers(b) for r in range(world) for b in src.eval_batches(4, rank=r, world=world)]
    assert sum(rows, []) == list(range(1000, 1023))
    assert all(len(r) <= 4 for r in rows)


@pytest.mark.parametrize("start", [0, 3, 11, 40])
def test_resume_at_start_step(tmp_path: Path, start: int) -> None:
    src = CriteoTsvSource(tsv_cfg(write_rows(tmp_path / "a.tsv", 19)))
    fresh = src.train_batches(5, rank=1, world=2)
    for _ in range(start):
        next(fresh)
    for _ in range(3):
        assert row_numbers(next(src.train_batches(5, 1, 2, start_step=start))) == row_numbers(next(fresh))
        start += 1


def test_glob_and_gzip(tmp_path: Path) -> None:
    write_rows(tmp_path / "day_0.tsv", 6)
    write_rows(tmp_path / "day_1.tsv", 4, offset=6)
    gz = tmp_path / "day_2.tsv.gz"
    with gzip.open(gz, "wb") as f:
        f.write(write_rows(tmp_path / "x", 5, offset=10).read_bytes())
    (tmp_path / "x").unlink()
    src = CriteoTsvSource(tsv_cfg(tmp_path / "day_*"))
    assert row_numbers(next(src.train_batches(15))) == list(range(15))
    assert src.test_rows() == 15


def test_missing_files_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.train_path = .*no such file"):
        CriteoTsvSource(tsv_cfg(tmp_path / "nope.tsv"))
    with pytest.raises(UserError, match="data.test_path must be set"):
        config_from_dict({"data": {"source": "criteo_tsv", "train_path": "x"}})
    with pytest.raises(UserError, match="data.table_sizes needs 1 or data.num_sparse=26"):
        config_from_dict({"data": {"source": "criteo_tsv", "train_path": "x", "test_path": "y", "table_sizes": [5, 5]}})
    with pytest.raises(UserError, match="data.table_sizes must all be >= 2"):
        config_from_dict({"data": {"source": "criteo_npy", "train_path": "x", "table_sizes": [1]}})


def test_default_columns_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """13 + 26 columns by default; `dmt data describe` and a short training run on a TSV file."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(64):
        dense = [str(rng.integers(-1, 9)) for _ in range(13)]
        sparse = [f"{rng.integers(1 << 32):08x}" for _ in range(26)]
        lines.append("\t".join([str(i % 2), *dense, *sparse]))
    path = tmp_path / "c.tsv"
    path.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\nsource = "criteo_tsv"\ntrain_path = "{path}"\ntest_path = "{path}"\ntable_sizes = [50]\n'
        "[model]\nbottom_mlp = [8, 4]\ntop_mlp = [8]\nembedding_dim = 4\n"
        "[train]\nsteps = 3\nbatch_size = 16\nprogress = false\n"
    )
    assert main(["data", "describe", "--config", str(cfg), "--out", str(tmp_path / "d.json")]) == 0
    info = json.loads((tmp_path / "d.json").read_text())
    assert info["rows"] == {"train": 64, "test": 64} and info["malformed_rows"] == 0
    assert len(info["features"]) == 26 and info["num_dense"] == 13
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_samples"] == 64
    capsys.readouterr()
    assert main(["data", "describe", "--config", str(cfg), "--set", "data.train_path=/nope", "--out", "x"]) == 2
    assert "data.train_path = '/nope'" in capsys.readouterr().err


# ---- npy --------------------------------------------------------------------------------------


def write_days(folder: Path, rows: dict[int, int], sizes: int = 50, label_2d: bool = True) -> Path:
    """day_N files whose dense column 0 is log1p of a global row number (days in key order)."""
    folder.mkdir(exist_ok=True)
    start = 0
    for day, n in rows.items():
        rng = np.random.default_rng(day)
        dense = rng.random((n, D)).astype(np.float32)
        dense[:, 0] = np.log1p(np.arange(start, start + n))
        np.save(folder / f"day_{day}_dense.npy", dense)
        np.save(folder / f"day_{day}_sparse.npy", rng.integers(0, sizes, (n, S)).astype(np.int32))
        labels = rng.integers(0, 2, n).astype(np.int32)
        np.save(folder / f"day_{day}_labels.npy", labels[:, None] if label_2d else labels)
        start += n
    return folder


def npy_cfg(folder: Path, **kw) -> DataConfig:
    base = dict(source="criteo_npy", train_path=str(folder), num_dense=D, num_sparse=S, table_sizes=[50])
    return DataConfig(**{**base, "train_days": [0, 1], "test_days": [2], **kw})


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_npy_shards_resume_and_eval(tmp_path: Path, world: int) -> None:
    folder = write_days(tmp_path, {0: 13, 1: 8, 2: 10})
    src = make_source(npy_cfg(folder))
    assert isinstance(src, CriteoNpySource)
    assert src.describe()["rows"] == {"train": 21, "test": 10}
    b = 4
    streams = [src.train_batches(b, r, world) for r in range(world)]
    for step in range(12):
        union = sum((row_numbers(next(s)) for s in streams), [])
        assert union == [p % 21 for p in range(step * world * b, (step + 1) * world * b)]
        resumed = sum((row_numbers(next(src.train_batches(b, r, world, start_step=step))) for r in range(world)), [])
        assert resumed == union
    evals = [row_numbers(x) for r in range(world) for x in src.eval_batches(3, r, world)]
    assert sum(evals, []) == list(range(21, 31))


def test_npy_values_and_checks(tmp_path: Path) -> None:
    folder = write_days(tmp_path, {0: 6, 1: 6, 2: 6}, label_2d=False)
    src = make_source(npy_cfg(folder))
    b = next(src.train_batches(6))
    sparse = np.load(folder / "day_0_sparse.npy")
    assert torch.equal(b.sparse.values.view(S, 6).T, torch.from_numpy(sparse.astype(np.int64)))
    assert torch.equal(b.labels, torch.from_numpy(np.load(folder / "day_0_labels.npy").astype(np.float32)))

    big = sparse.copy()
    big[4, 2] = 50
    np.save(folder / "day_0_sparse.npy", big)
    with pytest.raises(UserError, match=r"day_0_sparse.npy: row 4 \(0-based\), column 2: id 50 is outside \[0, 50\)"):
        next(make_source(npy_cfg(folder)).train_batches(6))
    modulo = next(make_source(npy_cfg(folder, npy_ids="modulo")).train_batches(6))
    assert modulo.sparse.values.view(S, 6)[2, 4] == 0

    dense = np.load(folder / "day_1_dense.npy")
    dense[3, 1] = np.nan
    np.save(folder / "day_1_dense.npy", dense)
    with pytest.raises(UserError, match=r"day_1_dense.npy: row 3 \(0-based\), column 1: dense value nan"):
        next(make_source(npy_cfg(folder, npy_ids="modulo")).train_batches(12))


def test_npy_bad_files(tmp_path: Path) -> None:
    folder = write_days(tmp_path, {0: 5, 2: 5})
    with pytest.raises(UserError, match="missing Criteo npy file .*day_1_dense.npy"):
        make_source(npy_cfg(folder))
    np.save(folder / "day_0_dense.npy", np.zeros((5, D + 1), dtype=np.float32))
    with pytest.raises(UserError, match=r"day_0_dense.npy: shape \[5, 4\] dtype float32, expected \[5, 3\]"):
        make_source(npy_cfg(folder, train_days=[0]))
    with pytest.raises(UserError, match="not a folder"):
        make_source(npy_cfg(tmp_path / "nope"))
