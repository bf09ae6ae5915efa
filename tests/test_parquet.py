"""Parquet source: the same batches as the TSV reader on the same data, multi-hot lists with weights,
row-group sharding without loss or repeat, resume, and clear errors for bad columns and values."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmt.config import DataConfig, config_from_dict
from dmt.data import make_source
from dmt.data.criteo import CriteoTsvSource
from dmt.data.parquet import ParquetSource
from dmt.errors import UserError
from tests.test_tsv_columnar import criteo_rows, same


def pq_cfg(train: Path, test: Path | None = None, **kw) -> DataConfig:
    return DataConfig(source="parquet", train_path=str(train), test_path=str(test or train), **kw)


def tsv_as_parquet(tsv: bytes, path: Path, row_group_rows: int) -> None:
    """The TSV rows with their raw tokens: label int, dense as log(1 + max(x, 0)), each sparse token a
    one-element list of strings (so the Parquet reader hashes them)."""
    rows = [line.rstrip(b"\r\n").split(b"\t") for line in tsv.splitlines()]
    rows = [r + [b""] * (40 - len(r)) for r in rows]
    cols = {"label": pa.array([int(r[0]) for r in rows], pa.int8())}
    for j in range(13):
        x = np.array([float(r[1 + j]) if r[1 + j] else 0.0 for r in rows])
        cols[f"dense_{j}"] = pa.array(np.log1p(np.maximum(x, 0.0)).astype(np.float32))
    for j in range(26):
        cols[f"cat_{j}"] = pa.array([[r[14 + j].decode()] for r in rows], pa.list_(pa.string()))
    pq.write_table(pa.table(cols), path, row_group_size=row_group_rows)


def test_multi_hot_parquet_equals_the_same_rows_read_from_tsv(tmp_path: Path) -> None:
    data = criteo_rows(600, seed=5)
    (tmp_path / "a.tsv").write_bytes(data)
    tsv_as_parquet(data, tmp_path / "a.parquet", row_group_rows=37)
    sizes = [1000, 97] * 13
    tsv = CriteoTsvSource(
        DataConfig(
            source="criteo_tsv",
            train_path=str(tmp_path / "a.tsv"),
            test_path=str(tmp_path / "a.tsv"),
            table_sizes=sizes,
        )
    )
    par = make_source(pq_cfg(tmp_path / "a.parquet", table_sizes=sizes))
    assert isinstance(par, ParquetSource) and [f.name for f in par.features] == [f.name for f in tsv.features]
    for world in (1, 2, 3, 4):
        for r in range(world):
            a, b = tsv.train_batches(50, r, world), par.train_batches(50, r, world)
            assert all(same(next(a), next(b)) for _ in range(-(-700 // (50 * world))))
            pairs = zip(tsv.eval_batches(128, r, world), par.eval_batches(128, r, world), strict=True)
            assert all(same(x, y) for x, y in pairs)


def test_lists_strings_integers_and_weights(tmp_path: Path) -> None:
    table = pa.table(
        {
            "y": pa.array([1, 0, 1], pa.int32()),
            "price": pa.array([0.5, None, 2.0]),
            "tags": pa.array([["ff", "zz"], None, []], pa.list_(pa.string())),
            "tag_w": pa.array([[0.5, 2.0], None, []], pa.list_(pa.float32())),
            "shop": pa.array([3, None, 9], pa.int64()),
            "items": pa.array([[1, 2, 3], [4], None], pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    c = pq_cfg(
        tmp_path / "t.parquet",
        label_column="y",
        dense_columns=["price"],
        sparse_columns=["tags", "shop", "items"],
        weight_columns={"tags": "tag_w"},
        table_sizes=[11, 10, 5],
    )
    src = make_source(c)
    b = next(src.eval_batches(10))
    assert b.labels.tolist() == [1.0, 0.0, 1.0] and b.dense[:, 0].tolist() == [0.5, 0.0, 2.0]
    parts = b.sparse.per_key()
    tags, lengths, weights = parts["tags"]
    assert tags.tolist() == [1 + 0xFF % 10, 1 + zlib.crc32(b"zz") % 10] and lengths.tolist() == [2, 0, 0]
    assert weights.tolist() == [0.5, 2.0]
    assert parts["shop"][0].tolist() == [3, 0, 9] and parts["shop"][2].tolist() == [1.0, 1.0, 1.0]
    assert parts["items"][0].tolist() == [1, 2, 3, 4] and parts["items"][1].tolist() == [3, 1, 0]
    assert [f.pooling_factor for f in src.features] == [2 / 3, 1.0, 4 / 3]
    shop = dict(label_column="y", dense_columns=[], sparse_columns=["shop"], table_sizes=[5])
    with pytest.raises(UserError, match=r"t.parquet: row 2: column 'shop' id 9 is outside \[0, 5\)"):
        next(make_source(pq_cfg(tmp_path / "t.parquet", **shop)).eval_batches(10))
    modulo = make_source(pq_cfg(tmp_path / "t.parquet", **shop, parquet_ids="modulo"))
    assert next(modulo.eval_batches(10)).sparse.values.tolist() == [3, 0, 4]


def write_numbered(folder: Path, sizes: list[int], group: int) -> None:
    """Files whose dense column 'n' is the global row number; row groups of `group` rows."""
    folder.mkdir(exist_ok=True)
    start = 0
    for k, n in enumerate(sizes):
        rows = np.arange(start, start + n)
        pq.write_table(
            pa.table({"label": rows % 2, "n": rows.astype(np.float64), "cat_0": rows % 7}),
            folder / f"part-{k}.parquet",
            row_group_size=group,
        )
        start += n


def numbers(batch) -> list[int]:
    return batch.dense[:, 0].long().tolist()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_row_group_sharding_neither_drops_nor_repeats(tmp_path: Path, world: int) -> None:
    write_numbered(tmp_path / "train", [23, 18], group=7)
    write_numbered(tmp_path / "test", [19], group=4)
    src = make_source(pq_cfg(tmp_path / "train", tmp_path / "test", dense_columns=["n"], table_sizes=[7]))
    b, n = 5, 41
    streams = [src.train_batches(b, r, world) for r in range(world)]
    for step in range(-(-3 * n // (world * b))):
        union = sum((numbers(next(s)) for s in streams), [])
        assert union == [p % n for p in range(step * world * b, (step + 1) * world * b)]
        resumed = sum((numbers(next(src.train_batches(b, r, world, start_step=step))) for r in range(world)), [])
        assert resumed == union
    evals = [numbers(x) for r in range(world) for x in src.eval_batches(3, r, world)]
    assert sum(evals, []) == list(range(19))


def test_a_rank_decodes_only_its_row_groups(tmp_path: Path) -> None:
    write_numbered(tmp_path / "train", [400], group=10)
    src = make_source(pq_cfg(tmp_path / "train", dense_columns=["n"], table_sizes=[7]))
    stream = src.train_batches(10, rank=2, world=8)
    assert [numbers(next(stream))[0] for _ in range(4)] == [20, 100, 180, 260]
    assert src.last_decoder.decoded == 4  # 4 of the 40 row groups


def test_bad_columns_and_values(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"label": [0, 2], "x": [1.0, float("nan")], "c": [1.5, 2.5], "s": ["a", "b"]}), tmp_path / "b.parquet"
    )
    path = tmp_path / "b.parquet"
    with pytest.raises(UserError, match=r"b.parquet: row 1: label 'label' = 2.0 is not 0 or 1"):
        next(make_source(pq_cfg(path, dense_columns=[], sparse_columns=["s"])).eval_batches(5))
    with pytest.raises(UserError, match=r"column 'c' has type double; integers, strings, or lists of them expected"):
        make_source(pq_cfg(path, dense_columns=["x"], sparse_columns=["c"]))
    with pytest.raises(
        UserError, match=r"data.sparse_columns: no column matches 'cat_\*'; the files have: label, x, c, s"
    ):
        make_source(pq_cfg(path, dense_columns=["x"]))
    with pytest.raises(UserError, match=r"data.table_sizes needs 1 or 1 values"):
        make_source(pq_cfg(path, dense_columns=[], sparse_columns=["s"], table_sizes=[5, 5]))
    with pytest.raises(UserError, match="no Parquet file"):
        make_source(pq_cfg(tmp_path / "nope"))
    with pytest.raises(UserError, match="data.train_path and data.test_path must be set"):
        config_from_dict({"data": {"source": "parquet", "train_path": str(path)}})
    pq.write_table(pa.table({"label": [0, 1], "x": [1.0, float("inf")], "s": ["a", "b"]}), path)
    with pytest.raises(UserError, match=r"b.parquet: row 1: dense column 'x' = inf is not finite"):
        next(make_source(pq_cfg(path, dense_columns=["x"], sparse_columns=["s"])).eval_batches(5))
