"""The end-to-end cost model: compute per rank by hand, the step's composition, the CPU fit, the
time dilation's choice of batch, and `dmt estimate`'s end-to-end report."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dmt.cli import main
from dmt.config import ModelConfig, load_config
from dmt.cost.calibrate import StepMeasurement, fit_cpu, host_seconds, host_seconds_by_variant, one_device_roofline
from dmt.cost.compute import DENSE_UPDATE_BYTES, UPDATE_TRAFFIC, OpCounts, rank_compute
from dmt.cost.estimate import Estimator
from dmt.cost.presets import Cluster, cluster, emulated
from dmt.cost.step import step_timing
from dmt.cost.timing import mode_timing
from dmt.cost.traffic import traffic
from dmt.cost.workload import Workload, model_shape
from dmt.distributed.topology import Layout
from dmt.emulate import dilate
from dmt.specs import FeatureSpec

DEVICE = dict(peak_tflops=1e-3, dense_efficiency=0.5, memory_gbps=1.0, memory_efficiency=0.5)


def _tiny(pooling: float = 1.0):
    features = [FeatureSpec("f0", "t0", 10, pooling), FeatureSpec("f1", "t1", 20, pooling)]
    features.append(FeatureSpec("f2", "t2", 30, pooling))
    return features, ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4], tower_hidden=3)


def test_compute_of_a_tiny_flat_model_by_hand():
    features, mcfg = _tiny(pooling=2.0)
    shape = model_shape(mcfg, features, num_dense=2)
    mt = traffic("flat", Workload(tuple(features), shape, 4, 8), Layout(1, 2))
    c = Cluster("t", 1.0, 1.0, op_s=1e-6, data_s_per_sample=1e-5, cores_shared=2.0, **DEVICE)
    ops = OpCounts(forward=10, backward=20, optimizer=30)
    r0 = rank_compute(mt, c, ops)[0]
    byte_s, flop_s = 1 / (1e9 * 0.5), 1 / (1e9 * 0.5)
    # rank 0 owns t0 and t2 (see test_cost): W * B = 16 samples x 2 ids x 2 features, rows of 16 bytes
    rows, pooled = 16 * 2 * 2 * 16, 16 * 2 * 16
    head = 8 * shape.head_flops
    assert r0.data_s == pytest.approx(2 * 1e-5 * 8)
    assert r0.lookup_s == pytest.approx(2 * (rows + pooled) * byte_s)
    assert r0.head_forward_s == pytest.approx(2 * (head * flop_s + 10e-6))
    assert r0.head_backward_s == pytest.approx(2 * (2 * head * flop_s + 20e-6))
    assert r0.tower_forward_s == r0.embedding_backward_s == 0.0  # identity Tower Module
    params = shape.head_params
    expected = UPDATE_TRAFFIC * rows * byte_s + params * DENSE_UPDATE_BYTES["adam"] * byte_s + 30e-6
    assert r0.optimizer_s == pytest.approx(2 * expected)
    assert r0.total_s == pytest.approx(sum(v for k, v in r0.as_dict().items() if k != "total_s"))


def test_flat_and_sptt_look_up_the_same_rows():
    """Both layouts serve W x B samples of every table: equal lookup work over the cluster."""
    cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=64"])
    est = Estimator(cfg, cluster("h100"))
    layout = Layout(2, 2)
    towers, _ = est.towers_for(2)
    flat = rank_compute(est.run("flat", est.shape("flat"), layout, memory=False).traffic, est.cluster)
    sptt = rank_compute(est.run("sptt", est.shape("sptt", towers), layout, memory=False).traffic, est.cluster)
    assert sum(r.lookup_s for r in flat) == pytest.approx(sum(r.lookup_s for r in sptt), rel=1e-12)


def test_the_step_adds_compute_and_communication_where_the_code_does():
    cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=64"])
    c = cluster("a100")
    est = Estimator(cfg, c)
    towers, _ = est.towers_for(2)
    e = est.run("sptt_tm", est.shape("sptt_tm", towers), Layout(2, 2), memory=False)
    t, s = e.timing, e.step
    k = s.compute
    backward = max(t.backward_s + k["embedding_backward_s"], t.beside_s, t.together_s)
    chain = k["lookup_s"] + k["tower_forward_s"] + k["head_forward_s"] + k["head_backward_s"] + k["optimizer_s"]
    assert s.step_s == pytest.approx(k["data_s"] + t.forward_s + chain + backward + t.after_s)
    assert s.compute_s == pytest.approx(sum(k.values()))
    assert s.exposed_s == pytest.approx(s.step_s - s.compute_s)
    assert s.overlap_s >= 0 and s.overlap_s == pytest.approx(s.compute_s + s.comm_s - s.step_s)
    assert e.examples_per_s == pytest.approx(4 * 64 / s.step_s)
    assert (
        step_timing(
            e.traffic, mode_timing(e.traffic, cluster("h100", memory_gbps=None)), cluster("h100", memory_gbps=None)
        )
        is None
    )


def test_a_sharded_ranks_own_cpu_adds_to_the_step_times_the_ranks_sharing_its_core():
    cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=64"])
    c = dataclasses.replace(cluster("a100"), op_s=1e-6, cores_shared=3.0)
    towers, _ = Estimator(cfg, c).towers_for(2)

    def step(host_s: float):
        est = Estimator(cfg, dataclasses.replace(c, host_s=host_s))
        return est.run("sptt_tm", est.shape("sptt_tm", towers), Layout(2, 2), memory=False).step

    base, loaded = step(0.0), step(2e-3)
    assert loaded.step_s == pytest.approx(base.step_s + 3 * 2e-3)
    assert loaded.compute["host_s"] == pytest.approx(6e-3) and loaded.compute_s == pytest.approx(base.compute_s + 6e-3)
    assert loaded.exposed_s == pytest.approx(base.exposed_s)


def test_host_seconds_is_the_slowest_ranks_measured_cpu_beyond_the_model(monkeypatch):
    """launch planted: each rank's measured CPU per step; host_s is the largest excess over the
    modelled compute at one core per rank, and never below 0."""
    cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=32", "dist.mode=flat"])
    rates = dict(peak_tflops=2e-3, dense_efficiency=1.0, memory_gbps=1.5, memory_efficiency=1.0)
    cpu = dataclasses.replace(emulated(100.0, 1.0, 0.0, 0.0), op_s=2e-6, cores_shared=2.0, **rates)
    ops = OpCounts(300, 320, 540)
    est = Estimator(cfg, dataclasses.replace(cpu, cores_shared=1.0))
    tr = traffic("flat", est.workload(est.shape("flat", None, None)), Layout(2, 2))
    modelled = [r.total_s - r.data_s for r in rank_compute(tr, est.cluster, ops, cfg.train.dense_optimizer)]
    assert len(modelled) == 4 and min(modelled) > 1e-3
    planted = {0: modelled[0] + 1e-3, 1: modelled[1] + 4e-3, 2: modelled[2], 3: modelled[3] - 1e-3}
    monkeypatch.setattr("dmt.distributed.launch.launch", lambda n, fn, cfg, rph: planted if n == 4 else None)
    assert host_seconds(cfg, cpu, 2, 2, "flat", None, ops) == pytest.approx(4e-3)
    behind = {r: v - 1.0 for r, v in planted.items()}
    monkeypatch.setattr("dmt.distributed.launch.launch", lambda n, fn, cfg, rph: behind)
    assert host_seconds(cfg, cpu, 2, 2, "flat", None, ops) == 0.0


def test_host_seconds_by_variant_calibrates_round_robin_and_keeps_each_variants_median(monkeypatch):
    """Three rounds over two variants go a, b, a, b, a, b (drift spreads over both); each variant
    keeps the median of its three calibrations, so one slow round does not move it."""
    cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=32"])
    ops = OpCounts(300, 320, 540)
    planted = iter([5e-3, 1e-3, 9e-3, 2e-3, 6e-3, 1.5e-3])  # a's second round is slow
    calls = []

    def fake(cfg_, cpu, hosts, rph, mode, ratio, ops_):
        calls.append((mode, ratio, hosts, rph))
        return next(planted)

    monkeypatch.setattr("dmt.cost.calibrate.host_seconds", fake)
    cpu = emulated(100.0, 1.0, 0.0, 0.0)
    variants = [("a", cfg, "flat", None, ops), ("b", cfg, "sptt", 4.0, ops)]
    got = host_seconds_by_variant(variants, cpu, 2, 2, rounds=3)
    assert got == {"a": pytest.approx(6e-3), "b": pytest.approx(1.5e-3)}
    assert calls == [("flat", None, 2, 2), ("sptt", 4.0, 2, 2)] * 3
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        host_seconds_by_variant(variants, cpu, 2, 2, rounds=0)


def test_the_cpu_fit_recovers_a_planted_operator_cost():
    base = emulated(100.0, 1.0, 0.0, 0.0)
    rates = (2e-3, 1.5)
    cpu0 = dataclasses.replace(
        base, peak_tflops=rates[0], dense_efficiency=1.0, memory_gbps=rates[1], memory_efficiency=1.0
    )
    variants = []
    for i, ov in enumerate((["dist.mode=flat", "model.towers_file="], ["model.compression_ratio=2"])):
        cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", ["train.batch_size=32", *ov])
        mode, ratio = ("flat", None) if i == 0 else ("sptt_tm", 2.0)
        ops = OpCounts(100 + i, 200 + 3 * i, 300)
        planted = one_device_roofline(cfg, cpu0, mode, ratio) + 7e-6 * (600 + 4 * i)
        variants.append((cfg, mode, ratio, StepMeasurement(str(i), ops, 1e-3 * (i + 1), planted, 32)))
    cpu = fit_cpu(base, variants, rates)
    assert cpu.op_s == pytest.approx(7e-6, rel=1e-9)
    assert cpu.data_s_per_sample == pytest.approx(1.5e-3 / 32)  # the median of 1 and 2 ms over 32 samples
    assert (cpu.peak_tflops, cpu.memory_gbps, cpu.intra_gbps) == (2e-3, 1.5, base.intra_gbps)


def test_over_two_batches_the_cpu_fit_also_corrects_the_measured_rates():
    """Steps planted with op_s 4 us and rates 1.5x slower than the microbenchmarks said, at batch 8
    and 256: the fit recovers both, so the step at batch 8 is what was planted, where the one-batch
    fit (at 256 alone) gets op_s and so the small batch's step wrong."""
    base = emulated(100.0, 1.0, 0.0, 0.0)
    measured = (2e-3, 1.5)
    true = dataclasses.replace(
        base, peak_tflops=2e-3 / 1.5, dense_efficiency=1.0, memory_gbps=1.0, memory_efficiency=1.0
    )
    variants = []
    for b in (8, 256):
        cfg = load_config("dmt/configs/synthetic_dmt_dlrm.toml", [f"train.batch_size={b}", "dist.mode=flat"])
        ops = OpCounts(300, 320, 540)
        planted = one_device_roofline(cfg, true, "flat", None) + 4e-6 * (ops.forward + ops.backward + ops.optimizer)
        variants.append((cfg, "flat", None, StepMeasurement(str(b), ops, 1e-3, planted, b)))
    cpu = fit_cpu(base, variants, measured)
    assert cpu.op_s == pytest.approx(4e-6, rel=1e-6)
    assert (cpu.peak_tflops, cpu.memory_gbps) == (pytest.approx(2e-3 / 1.5), pytest.approx(1.0))
    one_batch = fit_cpu(base, variants[1:], measured)
    assert abs(one_batch.op_s / 4e-6 - 1) > 0.1


def test_dilation_halves_or_doubles_the_batch_until_both_rates_fit():
    assert dilate.choose_batch(256, lambda b: (1000 * b / 256, 100 * b / 256)) == 64  # 250 and 25 Mbit/s
    assert dilate.choose_batch(256, lambda b: (100 * b / 256, 1.0 * b / 256)) == 512  # uplink 1 -> 2 Mbit/s
    assert dilate.choose_batch(256, lambda b: (300.0, 30.0)) == 256
    assert dilate.choose_batch(16, lambda b: (1e4, 1e3)) == dilate.MIN_BATCH  # nothing fits: the smallest


def test_a_machine_too_fast_for_the_links_slows_its_compute_instead():
    """rates(b) -> (intra, uplink, compute s per step) at this machine's speed: intra 3200 Mbit/s at every batch,
    1 ms per 32 samples; a slowdown of 10 brings intra to SLOWED_MBIT (320)."""
    rates = lambda b: (3200.0, 320.0, 1e-3 * b / 32)  # noqa: E731
    assert dilate.SLOWED_MBIT == 320
    assert dilate.slowed_batch(256, rates) == (256, 10.0)  # 8 ms x 10 = 80 ms, under 100 ms
    assert dilate.slowed_batch(1024, rates) == (256, 10.0)  # 1024: 320 ms, 512: 160 ms per slowed step
    assert dilate.slowed_batch(64, lambda b: (1e5, 1e3, 1e-3)) == (64, 312.5)  # above MAX_SLOWDOWN: refused later
    assert dilate.slowed_batch(64, lambda b: (3200.0, 10.0, 1e-3))[1] == 10.0  # uplink 1 Mbit/s: below MIN_MBIT
    assert dilate.slowed_batch(256, rates, max_slowdown=2.0) == (256, 10.0)  # none within 2x: the least slowed


@pytest.mark.parametrize(
    ("slower", "max_slowdown", "expected"),
    [
        (6000.0, 2.0, (64, 2.96e6 / 6000 / 320)),  # H100 intra / 6000 = 493 Mbit/s: slowed 1.54x
        (4000.0, 2.0, "would have to be slowed 2.3x, more than the 2x allowed"),  # 740 Mbit/s
        (6000.0, 1.0, "no batch from 8 to 65536 fits"),  # never slowed: the links alone decide
    ],
)
def test_dilation_slows_compute_at_most_max_slowdown_times(monkeypatch, slower, max_slowdown, expected):
    """A machine `slower` times slower than an H100 at every batch (t_gpu = 0.1 us per sample, one core
    per rank): the slowdown is what brings the H100's 370 GB/s per GPU down to SLOWED_MBIT, the
    batch the largest whose slowed step stays under 100 ms, and a slowdown above max_slowdown is
    refused with one line, as `dmt demo` (at most 2x) falls back to loopback links on it."""
    from dmt.cost import calibrate
    from dmt.errors import UserError

    gpu_step = lambda cfg: 1e-7 * cfg.train.batch_size  # noqa: E731
    monkeypatch.setattr(calibrate, "measure_step", lambda name, cfg: dataclasses.make_dataclass("M", ["ops"])(None))
    monkeypatch.setattr(calibrate, "fit_cpu", lambda base, variants: base)
    monkeypatch.setattr(dilate, "cores_shared", lambda hosts, ranks_per_host: 1.0)
    monkeypatch.setattr(
        dilate,
        "step_seconds",
        lambda cfg, c, *a: gpu_step(cfg) * (1.0 if c.name == "h100" else slower * c.cores_shared),
    )
    cfg = load_config("demo")
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            dilate.dilate_config("h100", cfg, 2, 2, max_slowdown=max_slowdown)
        return
    d = dilate.dilate_config("h100", cfg, 2, 2, max_slowdown=max_slowdown)
    assert (d.batch_size, d.compute_slowdown) == (expected[0], pytest.approx(expected[1]))
    assert d.intra_mbit == pytest.approx(dilate.SLOWED_MBIT)
    assert d.train_args == ["--set", "train.batch_size=64"]


def test_ranks_sharing_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1})
    assert dilate.cores_shared(2, 2) == 2.0  # one core per host, two ranks on it
    assert dilate.cores_shared(4, 1) == 2.0  # hosts 0 and 2 on core 0
    assert dilate.cores_shared(2, 1) == 1.0


def test_estimate_prints_end_to_end_speedups_with_the_breakdown(tmp_path, capsys):
    out = tmp_path / "e.json"
    argv = ["estimate", "--preset", "h100", "--hosts", "8", "--ranks-per-host", "8"]
    assert main([*argv, "--config", "dmt/configs/paper_dlrm.toml", "--max-gpus", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "end to end (compute + communication" in text and "exposed" in text and "overlap" in text
    payload = json.loads(out.read_text())
    for mode in ("flat", "sptt", "sptt_tm"):
        e = payload["end_to_end"][mode]
        assert e["step_s"] == pytest.approx(e["compute_s"] + e["exposed_comm_s"])
        assert payload[mode]["examples_per_s"] == pytest.approx(64 * 4096 / e["step_s"])
    sp = payload["speedup"]["sptt_tm_over_flat"]
    assert sp["step"] == pytest.approx(payload["sptt_tm"]["examples_per_s"] / payload["flat"]["examples_per_s"])
    assert 1.0 < sp["step"] < sp["comm"]  # compute does not shrink with compression
    assert f"sptt_tm_over_flat: end to end {sp['step']:.2f}x" in text
