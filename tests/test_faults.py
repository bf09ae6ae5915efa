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
    "data.synthetic.eval_samples=1024",
]


@needs_root
def test_a_short_outage_is_ridden_through(tmp_path):
    args = [*SMALL, "train.steps=40", "train.log_every=2", "--out", str(tmp_path)]
    summary = emu.emulate(2, 1, 400, args, port=29631, faults=[parse_fault("outage:host=0,start=1,duration=3")])
    f = summary["faults"]
    assert [(a["on"], round(a["at_s"])) for a in f["applied"]] == [(True, 1), (False, 4)]
    assert 2.5 < f["stalled_s"] < 15, f  # at least most of the outage, at most a few TCP back-offs more
    assert summary["steps"] == 40 and summary["auc"] > 0.5
    assert _left_behind() == ([], [])


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
def test_a_killed_rank_restarts_from_the_last_checkpoint(tmp_path):
    """Killed at step 30 with checkpoints every 20: 10 steps redone, and the final parameters are
    exactly an uninterrupted run's (the resume test proves that resuming equals not stopping)."""
    from dmt.config import load_config
    from dmt.distributed.launch import launch
    from dmt.train.run import _train_rank

    settings = [*SMALL[3:], "train.steps=36", "train.checkpoint_every=20"]
    summary = emu.emulate(
        2,
        1,
        400,
        [*SMALL[:3], *settings, "--out", str(tmp_path / "killed")],
        port=29651,
        faults=[parse_fault("kill:rank=1,step=30")],
        max_restarts=1,
    )
    f = summary["faults"]
    assert f["killed"] == {"rank": 1, "step": 30, "last_checkpoint_step": 20} and f["steps_redone"] == 10
    assert len(f["restarts"]) == 1 and "rank 1 (host 1" in f["restarts"][0]["error"]
    assert "killed by signal SIGKILL" in f["restarts"][0]["error"]
    cfg = load_config("demo", settings)
    launch(2, _train_rank, cfg, 1, str(tmp_path / "straight"), False, start_method="fork")
    _, killed = load_file(tmp_path / "killed")
    _, straight = load_file(tmp_path / "straight")
    assert int(killed["step"]) == int(straight["step"]) == 36 and killed.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(killed[k], straight[k], rtol=0, atol=0, msg=k)
    assert _left_behind() == ([], [])
