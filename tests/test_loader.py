"""Background loading: same batches in order, a bounded queue, a worker's error raised in the consumer
(a user error stops `dmt train` with exit code 2 and its message), clean shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from dmt.cli import main
from dmt.data.loader import Prefetcher, ordered_map, prefetch
from dmt.errors import UserError
from tests.helpers import random_batch, tiny_features
from tests.test_tsv_columnar import BAD, criteo_rows


class Counting:
    """A batch iterator that counts what was taken from it, may fail at batch `fail_at`, and notes closing."""

    def __init__(self, n: int, fail_at: int = -1, error: Exception | None = None) -> None:
        self.taken, self.closed, self.n, self.fail_at, self.error = 0, False, n, fail_at, error
        self.features = tiny_features()

    def __iter__(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise self.error
                self.taken += 1
                yield random_batch(self.features, 4, 3, seed=i)
        finally:
            self.closed = True


def test_same_batches_in_order_then_the_end() -> None:
    source = Counting(7)
    got = list(Prefetcher(iter(source), depth=2))
    want = [random_batch(source.features, 4, 3, seed=i) for i in range(7)]
    assert len(got) == 7 and all(torch.equal(a.dense, b.dense) for a, b in zip(got, want, strict=True))
    assert source.closed
    assert prefetch(iter(source), 0) is not None and isinstance(prefetch(iter(source), 3), Prefetcher)


def test_the_queue_is_bounded_and_close_stops_the_worker() -> None:
    source = Counting(1000)
    stream = Prefetcher(iter(source), depth=3)
    next(stream)
    time.sleep(0.5)
    assert source.taken == 1 + 3 + 1  # consumed, queued, and one in the worker's hands
    stream.close()
    assert not stream.running and source.closed
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("error", [UserError("data.train_path: bad row 7"), RuntimeError("disk gone")])
def test_a_worker_error_is_raised_in_the_consumer(error: Exception) -> None:
    source = Counting(10, fail_at=4, error=error)
    stream = Prefetcher(iter(source), depth=2)
    for _ in range(4):
        next(stream)
    with pytest.raises(type(error), match=str(error)):
        next(stream)
    assert not stream.running and source.closed


def test_ordered_map_keeps_order_and_raises_in_turn() -> None:
    def slow_square(x: int) -> int:
        time.sleep(0.01 * (5 - x % 5))
        if x == 7:
            raise ValueError("seven")
        return x * x

    it = ordered_map(slow_square, range(10), threads=3)
    assert [next(it) for _ in range(7)] == [x * x for x in range(7)]
    with pytest.raises(ValueError, match="seven"):
        next(it)
    assert list(ordered_map(slow_square, range(5), threads=1)) == [0, 1, 4, 9, 16]


def test_bad_data_in_the_background_stops_training_with_exit_code_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes(criteo_rows(200, bad={150: BAD[9]}))  # in the fifth batch of 32
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\nsource = "criteo_tsv"\ntrain_path = "{path}"\ntest_path = "{path}"\nmalformed = "error"\n'
        "table_sizes = [50]\nprefetch = 2\n[model]\nbottom_mlp = [8, 4]\ntop_mlp = [8]\nembedding_dim = 4\n"
        "[train]\nsteps = 10\nbatch_size = 32\nprogress = false\ntensorboard = false\n"
    )
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert f"{path}:151: malformed Criteo row: label '2' is not 0 or 1" in capsys.readouterr().err
    assert not [t for t in threading.enumerate() if t.name.startswith("dmt-")]  # the worker is gone


def test_training_with_and_without_the_loader_is_identical(tmp_path: Path) -> None:
    from dmt.config import load_config
    from dmt.train.loop import train

    base = ["train.steps=12", "train.log_every=4", "train.progress=false", "train.tensorboard=false",
            "data.synthetic.eval_samples=2048", "train.batch_size=64"]  # fmt: skip
    runs = [train(load_config("synthetic_dlrm", [*base, f"data.prefetch={d}"]), tmp_path / str(d)) for d in (0, 3)]
    assert [r["train_logloss"] for r in runs[0]["train_log"]] == [r["train_logloss"] for r in runs[1]["train_log"]]
    assert runs[0]["auc"] == runs[1]["auc"]
