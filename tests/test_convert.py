"""`dmt data convert`: TSV -> Parquet / npy reads back as the same batches, resumes, refuses other input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dmt.cli import main
from dmt.config import DataConfig, load_config
from dmt.data import convert as convert_module
from dmt.data import make_source
from dmt.data.convert import convert
from dmt.errors import UserError
from tests.test_tsv_columnar import BAD, criteo_rows, same

SIZES = [1000, 97] * 13


def tsv_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(source="criteo_tsv", train_path=str(path), test_path=str(path), table_sizes=SIZES, **kw)


def read_back(read_with: list[str]):
    return make_source(load_config(None, read_with).data)


@pytest.mark.parametrize("to", ["parquet", "npy"])
def test_converted_files_read_as_the_same_batches(tmp_path: Path, to: str) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(700, seed=2))
    done = convert(tsv_cfg(path), tmp_path / "out", to, rows_per_part=300, row_group_rows=64, progress=False)
    assert done.rows == {"train": 700, "test": 700} and done.malformed_rows == {"train": 0, "test": 0}
    tsv, back = make_source(tsv_cfg(path)), read_back(done.read_with)
    for world in (1, 3):
        for r in range(world):
            a, b = tsv.train_batches(64, r, world), back.train_batches(64, r, world)
            assert all(same(next(a), next(b)) for _ in range(5))
    assert all(same(x, y) for x, y in zip(tsv.eval_batches(200), back.eval_batches(200), strict=True))
    if to == "parquet":
        assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
            f"part-0000{k}.parquet" for k in range(3)
        ]
        meta = pq.ParquetFile(tmp_path / "out" / "train" / "part-00000.parquet").metadata
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [64] * 4 + [44]


def test_convert_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(500, bad=BAD))
    real, calls = convert_module._write_part, []

    def stop_after_two(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(convert_module, "_write_part", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        convert(tsv_cfg(path), tmp_path / "out", rows_per_part=200, progress=False)
    monkeypatch.setattr(convert_module, "_write_part", real)
    done = convert(tsv_cfg(path), tmp_path / "out", rows_per_part=200, progress=False)
    assert calls == ["train/part-00000.parquet", "train/part-00001.parquet"]
    assert done.skipped == calls and done.written == ["train/part-00002.parquet"] + [
        f"test/part-0000{k}.parquet" for k in range(3)
    ]
    assert done.rows["train"] == 500 - 5 and done.malformed_rows["train"] == 5
    fresh = convert(tsv_cfg(path), tmp_path / "fresh", rows_per_part=200, progress=False)
    for a, b in zip(
        read_back(done.read_with).eval_batches(128), read_back(fresh.read_with).eval_batches(128), strict=True
    ):
        assert same(a, b)
    with pytest.raises(UserError, match="holds a conversion of other input or settings"):
        convert(tsv_cfg(path), tmp_path / "out", rows_per_part=100, progress=False)


def test_convert_errors_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(100, bad={41: BAD[41]}))
    with pytest.raises(
        UserError, match=rf"{path}:42: malformed Criteo row: dense column 1 value '1e400' is not finite"
    ):
        convert(tsv_cfg(path, malformed="error"), tmp_path / "out", progress=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nsource = "criteo_tsv"\ntrain_path = "{path}"\ntest_path = "{path}"\n')
    assert main(["data", "convert", "--config", str(cfg), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert "read it with: --set data.source=parquet" in capsys.readouterr().out
    assert main(["data", "convert", "--config", "demo", "--out", str(tmp_path / "q")]) == 2
    assert "dmt data convert reads data.source = 'criteo_tsv' files, got 'synthetic'" in capsys.readouterr().err
