"""Faults on the emulated cluster (root, like the emulator tests): a short outage is ridden
through, a long one ends every rank with one clear line, a killed rank restarts from the last
checkpoint and ends where an uninterrupted run ends; nothing is left behind."""

from __future__ import annotations

import time

import pytest
import torch

from dmt import emulate as emu
from dmt.distributed.launch import RankFailure
from dmt.emulate.faults import parse_fault
from dmt.train.checkpoint import load_file

from .test_emulate import _left_behind, needs_root

SMALL = [
    "--config",
    "demo",
    "--set",
    "train.batch_size=64",
    "train.progress=false",
    "train.tensorboard=false",
    "data.synthetic.eval_samples=512",
]


@needs_root
def test_a_long_outage_ends_every_rank_within_the_timeout(tmp_path):
    args = [*SMALL, "train.steps=100000", "dist.timeout_s=4", "--out", str(tmp_path)]
    start = time.time()
    with pytest.raises(RankFailure) as e:
        emu.emulate(2, 1, 400, args, port=29641, faults=[parse_fault("outage:host=1,start=1,duration=200")])
    took = time.time() - start
    message = str(e.value)
    assert "a collective waited longer than dist.timeout_s of 4 s" in message and "\n" not in message
    assert message.startswith("rank ") and "(host " in message
    assert took < 60, took  # set-up, 1 s, the 4 s timeout and the stop: nowhere near 200 s
    assert _left_behind() == ([], [])


@needs_root
def test_a_short_outage_is_ridden_through_and_a_killed_rank_restarts_from_its_checkpoint(tmp_path):
    """One run (to keep the suite short): host 0's link is cut from 0.2 s to 3.2 s of training, and
    the run rides it through; later rank 1 is killed at step 110, with checkpoints every 20 steps,
    and restarts from step 100. It finishes; its final parameters are exactly an uninterrupted run's
    (resuming equals not stopping: test_resilience), so also those of one resumed from step 100.
    The kill comes 110 steps in so that the outage has begun well before it even where a step
    takes only 3 ms (CI's take about 9 ms). The outage may hold a checkpoint save rather than a
    step; the stall count takes the windows' wall time, so it sees either."""
    from dmt.config import load_config
    from dmt.distributed.launch import launch
    from dmt.train.run import _train_rank

    settings = [*SMALL[3:], "train.steps=120", "train.batch_size=32", "train.checkpoint_every=20", "train.log_every=2"]
    faults = [parse_fault("outage:host=0,start=0.2,duration=3"), parse_fault("kill:rank=1,step=110")]
    summary = emu.emulate(
        2, 1, 400, [*SMALL[:3], *settings, "--out", str(tmp_path / "faulty")], port=29651, faults=faults, max_restarts=1
    )
    f = summary["faults"]
    assert [(a["kind"], a["on"]) for a in f["applied"]] == [("outage", True), ("outage", False)]
    assert [a["at_s"] for a in f["applied"]] == [pytest.approx(0.2, abs=0.3), pytest.approx(3.2, abs=0.3)]
    (first,) = f["restarts"]  # the outage stopped nothing; the kill did, once
    assert "rank 1 (host 1" in first["error"] and "killed by signal SIGKILL" in first["error"]
    assert 2.5 < first["stalls"]["stalled_s"] < 15, first  # most of the outage, at most some TCP back-offs more
    assert f["killed"] == {"rank": 1, "step": 110, "last_checkpoint_step": 100} and f["steps_redone"] == 10
    cfg = load_config("demo", settings)
    launch(2, _train_rank, cfg, 1, str(tmp_path / "straight"), False, start_method="fork")
    _, faulty = load_file(tmp_path / "faulty")
    _, straight = load_file(tmp_path / "straight")
    assert int(faulty["step"]) == int(straight["step"]) == 120 and faulty.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(faulty[k], straight[k], rtol=0, atol=0, msg=k)
    assert _left_behind() == ([], [])
