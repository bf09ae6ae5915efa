"""Device discipline without a GPU: the training step, evaluation, verification and resume run under
dmt.guard.DeviceGuard (every tensor created on the step's device, no unannounced host sync), and
each device bug the guard is there for, put back, makes it fail. Also: distributed evaluation
metrics against scikit-learn, and an export that never keeps other ranks waiting in a collective."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

import dmt.distributed.comm as comm
from dmt.distributed.launch import RankFailure
from dmt.guard import DeviceGuard, DeviceViolation
from dmt.sparse import KeyedJagged
from dmt.train.metrics import StreamingClickMetrics

from .dist_helpers import run_ranks, small_config

# 3 tables on 4 ranks: one rank serves no table (flat), and in SPTT one host's second rank neither
NO_TABLE = (
    "data.synthetic.group_sizes=[1, 2]",
    "data.synthetic.group_pooling=[1.0, 2.0]",
    "data.synthetic.shared_tables=0",
)


def _old_concat_keys(parts, keys, batch_size, device=None):
    """The bug: a rank serving nothing built its empty id batch on the host."""
    if not parts:
        return KeyedJagged(keys=[], values=torch.empty(0, dtype=torch.long), lengths=torch.empty(0, dtype=torch.long))
    return _new_concat_keys(parts, keys, batch_size, device)


_new_concat_keys = KeyedJagged.concat_keys


def _old_ids_per_key(self):
    """The bug: a host read of the lengths for every feature cut, unannounced."""
    return self.lengths_per_key().sum(1).tolist()


def _old_sync(x, profile):
    """The bug: a device-wide wait around every all-to-all, profiling or not."""
    from dmt.guard import device_sync

    device_sync(x.device)


def _old_slice_samples(self, start, stop):
    """The bug: offsets built on the host while the batch is on the device."""
    parts = []
    for v, ln, w in self.per_key().values():
        offsets = torch.zeros(ln.numel() + 1, dtype=torch.long)
        torch.cumsum(ln, 0, out=offsets[1:])
        a, b = int(offsets[start]), int(offsets[stop])
        parts.append((v[a:b], ln[start:stop], None if w is None else w[a:b]))
    return KeyedJagged.concat_keys(parts, self.keys, stop - start, self.values.device)


def _patch_slice():
    from unittest import mock

    return mock.patch.object(KeyedJagged, "slice_samples", _old_slice_samples)


def _guarded(fn) -> list[str]:
    """Run fn under the guard; -> what it flagged."""
    guard = DeviceGuard(raise_on=False)
    with guard:
        fn()
    return guard.violations


def _scenarios(cfg, topo) -> dict[str, list[str]]:
    """Rank body: every guarded path, clean, then with each bug put back. -> violations per scenario."""
    from unittest import mock

    from dmt import verification
    from dmt.train.evaluate import evaluate
    from dmt.train.loop import build, train_step
    from dmt.train.pipeline import training_batches
    from dmt.verification import verify_rank

    out, serves_nothing = {}, {}
    for mode in ("flat", "sptt"):
        c = small_config("synthetic_dlrm", *NO_TABLE, f"dist.mode={mode}", "model.num_towers=2")
        t = build(c, topo)
        serves_nothing[mode] = not t.model.plan.tables_on(topo.rank)
        stream = t.source.train_batches(c.train.batch_size, topo.rank, topo.layout.world)
        train_step(t, next(stream).to("cpu", non_blocking=True))  # warm-up outside the guard
        out[f"{mode} step"] = _guarded(lambda t=t, s=stream: train_step(t, next(s).to("cpu", non_blocking=True)))
        out[f"{mode} eval"] = _guarded(lambda t=t, c=c: evaluate(t, c.train.eval_batch_size))
        bugs = {
            "empty ids on the host": mock.patch.object(KeyedJagged, "concat_keys", staticmethod(_old_concat_keys)),
            "a host read per feature": mock.patch.object(KeyedJagged, "ids_per_key", _old_ids_per_key),
            "a device sync per all-to-all": mock.patch.object(comm, "_sync", _old_sync),
        }
        for bug, patch in bugs.items():
            with patch:
                out[f"{mode} step, {bug}"] = _guarded(
                    lambda t=t, s=stream: train_step(t, next(s).to("cpu", non_blocking=True))
                )
        out[f"{mode} step, the loss read every step"] = _guarded(
            lambda t=t, s=stream: float(train_step(t, next(s).to("cpu", non_blocking=True))[0])
        )
        out[f"{mode} step, a blocking copy"] = _guarded(lambda t=t, s=stream: train_step(t, next(s).to("cpu")))
        # bf16 on the wire and deduplicated ids, a serial step and the training part of a pipelined one
        wire = ("dist.comm_precision=bf16", "dist.allreduce_precision=bf16", "dist.dedup_ids=true")
        c = small_config("synthetic_dlrm", *NO_TABLE, f"dist.mode={mode}", "model.num_towers=2", *wire)
        t = build(c, topo)
        stream = t.source.train_batches(c.train.batch_size, topo.rank, topo.layout.world)
        out[f"{mode} wire step"] = _guarded(lambda t=t, s=stream: train_step(t, next(s).to("cpu", non_blocking=True)))
        batches = training_batches(t, stream, 1, "cpu", pipeline=True)
        out[f"{mode} pipelined step"] = _guarded(lambda t=t, b=batches: train_step(t, *next(b)))
        batches.close()
    c = small_config("synthetic_dmt_dlrm", "dist.mode=sptt", "train.batch_size=8")
    compare = verification._compare_steps  # the steps of verify, under the guard (models are built before)
    for name, patch in (("verify", contextlib.nullcontext()), ("verify, host offsets", _patch_slice())):
        guard = DeviceGuard(raise_on=False)

        def guarded(*args, guard=guard):
            with guard:
                return compare(*args)

        with patch, mock.patch.object(verification, "_compare_steps", guarded):
            verify_rank(c, topo, 2)
        out[name] = guard.violations
    return {"violations": out, "serves_nothing": serves_nothing}


def test_guard_passes_the_clean_paths_and_catches_each_bug_put_back():
    results = run_ranks(2, 2, _scenarios, small_config())
    assert all(any(r["serves_nothing"][m] for r in results.values()) for m in ("flat", "sptt"))
    for rank, r in results.items():
        scenarios = r["violations"]
        clean = {k: v for k, v in scenarios.items() if "," not in k}
        assert all(not v for v in clean.values()), (rank, {k: v for k, v in clean.items() if v})
        for name, violations in scenarios.items():
            if name.endswith("empty ids on the host") and not r["serves_nothing"][name.split()[0]]:
                continue  # only a rank that serves nothing builds the empty batch
            if "," in name:
                assert violations, f"rank {rank}: '{name}' went unnoticed"
    flagged = " ".join(v for r in results.values() for vs in r["violations"].values() for v in vs)
    for what in ("torch.empty without a device", "Tensor.tolist", "device_sync", "Tensor.__float__", "blocking .to"):
        assert what in flagged, what


def test_a_device_sync_is_refused_by_the_guard():
    from dmt.guard import device_sync

    with pytest.raises(DeviceViolation, match="device_sync"), DeviceGuard():
        device_sync("cpu")


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")  # meta: on purpose
def test_resume_puts_optimizer_state_on_the_parameters_device(tmp_path):
    """Resume into a model on another device than the checkpoint's (meta stands in for a GPU):
    every state tensor lands beside its parameter; the step counters stay on the host, as torch keeps them."""
    from dmt.distributed.topology import Topology
    from dmt.train import checkpoint as ckpt
    from dmt.train.loop import build, train_step
    from dmt.train.optim import make_optimizers

    cfg = small_config("synthetic_dmt_dlrm", "train.steps=2")
    t = build(cfg)
    stream = t.source.train_batches(cfg.train.batch_size)
    for _ in range(2):
        train_step(t, next(stream))
    ckpt.save(t.model, t.optimizers, t.topo, cfg, tmp_path, 2)

    moved = build(cfg)
    moved.model.to("meta")
    moved.optimizers = make_optimizers(moved.model, cfg.train)  # over the moved parameters
    violations = _guarded(lambda: ckpt.resume(moved.model, moved.optimizers, Topology.single(), tmp_path))
    assert not violations, violations
    for opt in moved.optimizers:
        for p, state in opt.state.items():
            for key, value in state.items():
                assert value.device == (torch.device("cpu") if key == "step" else p.device), (key, value.device)


def test_streaming_metrics_equal_scikit_learn_on_the_same_predictions():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(65536, generator=g) < 0.3).float()
    probs = torch.sigmoid(2 * labels - 1 + torch.randn(65536, generator=g))
    m = StreamingClickMetrics(torch.device("cpu"))
    for part in range(4):  # as if four ranks each added a quarter (the all-reduce adds them)
        m.update(labels[part::4], probs[part::4])
    got = m.compute()
    exact = roc_auc_score(labels.numpy(), probs.numpy())
    assert abs(got["auc"] - exact) <= min(1e-4, got["auc_error_bound"] + 1e-12)
    assert got["logloss"] == pytest.approx(log_loss(labels.numpy(), np.clip(probs.numpy(), 1e-7, 1 - 1e-7)), abs=1e-6)
    assert got["eval_samples"] == 65536


def _train_with_slow_export(cfg, topo, out: str, old_order: bool) -> dict:
    """Rank body: training whose export takes longer than the collective timeout."""
    import time
    from unittest import mock

    from dmt.train import checkpoint as ckpt
    from dmt.train.loop import train

    def slow_export(location, out_dir):
        time.sleep(cfg.dist.timeout_s + 3)

    save = ckpt.save

    def save_then_export(model, optimizers, topo, cfg, out, step):  # the old order: export at the last save
        save(model, optimizers, topo, cfg, out, step)
        if step == cfg.train.steps:
            ckpt.export(topo, out)

    with mock.patch.object(ckpt, "export_sharded", slow_export):
        if old_order:
            with mock.patch.object(ckpt, "save", save_then_export):
                return train(cfg, out, topo=topo)
        return train(cfg, out, topo=topo)


def test_export_keeps_no_rank_waiting_in_a_collective(tmp_path):
    cfg = small_config("synthetic_dlrm", "train.steps=2", "dist.timeout_s=5", "data.synthetic.eval_samples=256")
    summary = run_ranks(1, 2, _train_with_slow_export, cfg, str(tmp_path / "new"), False)[0]
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["steps"] == summary["steps"] == 2
    with pytest.raises(RankFailure):  # the old order: rank 1 times out in evaluation while rank 0 exports
        run_ranks(1, 2, _train_with_slow_export, cfg, str(tmp_path / "old"), True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check runs to the end")
def test_gpu_check_stops_with_one_line_without_a_gpu():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["bash", str(root / "benchmarks/gpu/run.sh")], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert r.returncode == 2
    assert r.stdout.splitlines()[0].startswith("cpu first-step loss (fp32): {'result': ")
    assert r.stdout.strip().splitlines()[-1] == (
        "benchmarks/gpu: no CUDA device here (torch.cuda.is_available() is False); the rest needs a GPU"
    )
