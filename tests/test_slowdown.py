"""The emulator's slowed compute (dmt/slowdown.py): work stretched to s times its CPU time, waits
not stretched, numbers unchanged."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dmt import slowdown

from .dist_helpers import run_ranks, small_config


def _burn(cpu_s: float) -> None:
    t = time.thread_time()
    while time.thread_time() - t < cpu_s:
        pass


def _in_thread(fn):
    """fn() in a fresh thread (a fresh clock) -> its result."""
    out = []
    th = threading.Thread(target=lambda: out.append(fn()))
    th.start()
    th.join()
    return out[0]


def _paced_work(cpu_s: float, wait_s: float) -> tuple[float, float]:
    """cpu_s of work, a wait of wait_s, cpu_s of work, each followed by a pace. -> (wall of the
    first stretch, wall of the whole)"""
    slowdown.pace()  # starts this thread's clock
    w0 = time.perf_counter()
    _burn(cpu_s)
    slowdown.pace()
    first = time.perf_counter() - w0
    with slowdown.waiting():
        time.sleep(wait_s)
    _burn(cpu_s)
    slowdown.pace()
    return first, time.perf_counter() - w0


def test_work_takes_s_times_its_cpu_time_and_waits_are_not_stretched(monkeypatch):
    monkeypatch.setenv(slowdown.ENV, "4")
    first, whole = _in_thread(lambda: _paced_work(0.05, 0.1))
    assert 0.2 <= first < 0.3  # 0.05 s of CPU, paced to 4 x
    assert 0.5 <= whole < 0.65  # 0.2 + the 0.1 s wait as it was + 0.2


def test_without_a_slowdown_nothing_sleeps(monkeypatch):
    monkeypatch.delenv(slowdown.ENV, raising=False)
    first, whole = _in_thread(lambda: _paced_work(0.05, 0.1))
    assert first < 0.1 and whole < 0.25


def test_a_slowdown_below_one_is_refused(monkeypatch):
    monkeypatch.setenv(slowdown.ENV, "0.5")
    with pytest.raises(ValueError, match="DMT_COMPUTE_SLOWDOWN must be >= 1, got 0.5"):
        slowdown.pace()


def _train(cfg, topo) -> tuple[dict, list[float]]:
    from dmt.train.loop import build, train_step
    from dmt.train.pipeline import training_batches

    t = build(cfg, topo)
    stream = t.source.train_batches(cfg.train.batch_size, topo.rank, topo.layout.world)
    batches = training_batches(t, stream, 3, cfg.train.device, cfg.train.pipeline)
    losses = []
    for _ in range(3):
        batch, sparse = next(batches)
        losses.append(float(train_step(t, batch, sparse)[0]))
    batches.close()
    return {k: v.detach().clone() for k, v in t.model.module.state_dict().items()}, losses


def test_slowed_training_computes_the_same_numbers(monkeypatch):
    """SPTT on 2 hosts x 1 rank, pipelined: slowing compute changes when, never what."""
    cfg = small_config("dmt/configs/synthetic_dmt_dlrm.toml", "dist.mode=sptt", "train.pipeline=true")
    monkeypatch.delenv(slowdown.ENV, raising=False)
    plain = run_ranks(2, 1, _train, cfg)
    monkeypatch.setenv(slowdown.ENV, "3")  # the spawned ranks inherit it
    slowed = run_ranks(2, 1, _train, cfg)
    for rank in plain:
        (p, p_losses), (s, s_losses) = plain[rank], slowed[rank]
        assert p_losses == s_losses and all(torch.equal(p[k], s[k]) for k in p), rank
