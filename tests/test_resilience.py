"""Resume equals an uninterrupted run; losing a rank stops every rank with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmt.train.checkpoint import load_file
from dmt.train.run import _train_rank

from .dist_helpers import run_ranks, small_config

ROOT = Path(__file__).resolve().parents[1]


def test_resumed_sptt_run_equals_uninterrupted(tmp_path):
    cfg = small_config("dmt/configs/synthetic_dmt_dlrm.toml", "dist.mode=sptt", "train.steps=6")
    half = small_config("dmt/configs/synthetic_dmt_dlrm.toml", "dist.mode=sptt", "train.steps=3")
    run_ranks(2, 2, _train_rank, cfg, str(tmp_path / "full"), False)
    run_ranks(2, 2, _train_rank, half, str(tmp_path / "resumed"), False)
    run_ranks(2, 2, _train_rank, cfg, str(tmp_path / "resumed"), True)
    _, full = load_file(tmp_path / "full")
    _, resumed = load_file(tmp_path / "resumed")
    assert int(full["step"]) == int(resumed["step"]) == 6
    assert full.keys() == resumed.keys()
    assert any(k.startswith("optim/") for k in full)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0, msg=k)


def test_one_device_resume_equals_uninterrupted(tmp_path):
    from dmt.train.loop import train

    cfg = small_config("dmt/configs/synthetic_dlrm.toml", "train.steps=6")
    half = small_config("dmt/configs/synthetic_dlrm.toml", "train.steps=3")
    train(cfg, tmp_path / "full")
    train(half, tmp_path / "resumed")
    train(cfg, tmp_path / "resumed", resume=True)
    _, full = load_file(tmp_path / "full")
    _, resumed = load_file(tmp_path / "resumed")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0, msg=k)


def _dmt(*args: str, **popen) -> subprocess.Popen:
    """`python -m dmt ARGS` as a child process with one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dmt", *args], cwd=ROOT, env=env, **popen)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _workers(launcher: int) -> list[int]:
    """The launcher's worker processes (spawned interpreters, not its resource tracker)."""
    out = []
    for pid in _children(launcher):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(pid)
    return out


def test_killing_a_rank_stops_every_rank(tmp_path):
    proc = _dmt(
        "train",
        "--config",
        "dmt/configs/synthetic_dlrm.toml",
        "--nproc",
        "2",
        "--set",
        "train.steps=1000000",
        "train.batch_size=64",
        "train.log_every=5",
        "train.progress=false",
        "--out",
        str(tmp_path / "run"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        workers: list[int] = []
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.5)
            workers = _workers(proc.pid)
        assert len(workers) == 2, "workers did not start"
        metrics = tmp_path / "run" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text()) and time.time() < deadline:
            time.sleep(0.2)  # until rank 0 has logged training steps
        assert proc.poll() is None and metrics.read_text(), "training did not start"
        os.kill(workers[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)  # raises if the other rank hangs
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert f"(pid {workers[1]}, signal SIGKILL)" in err and "dmt: error: lost rank" in err, err[-2000:]
    assert not Path(f"/proc/{workers[0]}").exists(), "the surviving rank was left running"


def _killed_and_a_survivor(cfg, topo):
    """Rank 1 is killed; rank 0 fails 50 ms later, as a survivor's collective fails on the reset
    connection."""
    if topo.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    raise RuntimeError("Connection reset by peer (planted)")


def test_the_rank_named_is_the_one_that_died_first_not_a_survivor_that_failed_after_it():
    """Both ranks are dead by the launcher's next poll; without run_rank's grace before a failed
    rank leaves, the launcher names the lower rank, the survivor."""
    from dmt.distributed.launch import RankFailure, launch

    with pytest.raises(RankFailure) as e:
        launch(2, _killed_and_a_survivor, small_config(), 1, start_method="fork")
    message = str(e.value)
    assert message.startswith("lost rank 1 (pid ") and "signal SIGKILL" in message, message


def _groups_wait_the_timeout(cfg, topo):
    """Rank body on 2x2 with a column-cut model: every group dmt made (the topology's and the
    column shards') and its collective timeout; then rank 0 all-reduces on the dense group, which
    the other ranks never join: they leave only after PEERS_LEAVE_S. -> (timeouts, rank 0's error,
    the timeout a user's `Topology.from_env()` reads off the default group)"""
    from datetime import timedelta

    import dmt
    from dmt.distributed.topology import group_timeout

    from .helpers import tiny_features

    with dmt.deferred_tables():
        model = dmt.DLRM(tiny_features(), num_dense=3, towers=[["f0", "f1", "f3"], ["f2", "f4", "f5"]], dim=4)
    sharded = dmt.shard(model, topo, "flat", sharding=dmt.plan(model, topo.layout, "flat", {"*": "column"}))
    groups = [topo.group(name) for name in topo.groups] + [g for g, _ in sharded.column_shards().values()]
    timeouts = [group_timeout(g) / timedelta(seconds=1) for g in groups]
    error = ""
    if topo.rank == 0:
        try:
            torch.distributed.all_reduce(torch.ones(1), group=topo.dense_group)
        except RuntimeError as e:
            error = str(e)
    else:
        time.sleep(PEERS_LEAVE_S)
    return timeouts, error, group_timeout() / timedelta(seconds=1)


PEERS_LEAVE_S = 10.0


def test_every_group_waits_dist_timeout_s_not_torchs_default():
    """torch gives a new group a 30-minute timeout of its own; a cut link met in the dense
    all-reduce would hang that long (until the peers left, here) instead of dist.timeout_s."""
    cfg = small_config("dmt/configs/synthetic_dlrm.toml", "dist.timeout_s=2")
    results = run_ranks(2, 2, _groups_wait_the_timeout, cfg)
    for timeouts, _, read in results.values():
        assert len(timeouts) == 13 and set(timeouts) == {2.0}, timeouts  # world + 7 of the topology's + 5 columns
        assert read == 2.0
    error = results[0][1]
    assert "Timed out" in error and "2000ms" in error, error  # not the closed connection of peers that left


def test_sharded_checkpoint_exports_to_one_device_eval(tmp_path):
    """The one-device model.pt exported from DCP shards evaluates exactly as the sharded run did."""
    import json

    from dmt.cli import main

    cfg = small_config("dmt/configs/synthetic_dmt_dcn.toml", "dist.mode=sptt", "train.steps=4")
    run_ranks(2, 1, _train_rank, cfg, str(tmp_path), False)
    sharded = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "checkpoint" / ".metadata").is_file()
    assert main(["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "eval.json")]) == 0
    one_device = json.loads((tmp_path / "eval.json").read_text())
    assert one_device["auc"] == pytest.approx(sharded["auc"], abs=1e-6)
    assert one_device["logloss"] == pytest.approx(sharded["logloss"], abs=1e-6)


def test_kill_during_checkpointing_leaves_a_loadable_checkpoint(tmp_path):
    """kill -9 at random moments of a run that checkpoints every step: model.pt always loads."""
    import random

    rng = random.Random(0)
    args = [
        "train",
        "--config",
        "dmt/configs/synthetic_dlrm.toml",
        "--set",
        "train.steps=1000000",
        "train.batch_size=32",
        "train.checkpoint_every=1",
        "train.progress=false",
        "train.tensorboard=false",
        "--out",
        str(tmp_path),
        "--resume",
    ]
    steps = []
    for _ in range(3):
        proc = _dmt(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (tmp_path / "model.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 2.0))
        proc.kill()
        proc.wait()
        _, state = load_file(tmp_path)
        steps.append(int(state["step"]))
    assert steps[0] > 0 and steps == sorted(steps), steps  # each run resumed from the last good checkpoint

    # finishing the killed run reaches exactly what an uninterrupted run of the same length reaches
    from dmt.train.loop import train

    total = steps[-1] + 3
    finish = small_config("dmt/configs/synthetic_dlrm.toml", f"train.steps={total}", "train.batch_size=32")
    resumed = train(finish, tmp_path, resume=True)
    straight = train(finish, tmp_path / "straight")
    _, a = load_file(tmp_path)
    _, b = load_file(tmp_path / "straight")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed["auc"] == straight["auc"] and resumed["logloss"] == straight["logloss"]


def test_same_seed_and_topology_give_identical_metrics(tmp_path):
    import json

    cfg = small_config("dmt/configs/synthetic_dmt_dlrm.toml", "dist.mode=sptt", "train.steps=5")
    for name in ("a", "b"):
        run_ranks(2, 1, _train_rank, cfg, str(tmp_path / name), False)
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    for key in ("auc", "logloss", "ne"):
        assert a[key] == b[key], key
    timings = ("time_ms",)  # wall-clock times inside collectives differ run to run; the counts do not
    assert {k: v for k, v in a["comm"].items() if k not in timings} == {
        k: v for k, v in b["comm"].items() if k not in timings
    }
