"""The cost model (dmt/cost): exact counts against real runs, timing trends, memory, and the CLI."""

from __future__ import annotations

import json

import pytest

from dmt.cli import main
from dmt.config import ModelConfig, load_config
from dmt.cost.estimate import Estimator
from dmt.cost.ids import IdUnit, SaturatedIds
from dmt.cost.memory import rank_memory
from dmt.cost.presets import PRESETS, cluster
from dmt.cost.timing import TimingModel, alltoall_busbw, mode_timing
from dmt.cost.traffic import traffic
from dmt.cost.workload import Workload, feature_specs, model_shape, wire_widths
from dmt.data import make_source
from dmt.distributed.idcodec import bits_for
from dmt.distributed.topology import Layout
from dmt.errors import UserError
from dmt.specs import FeatureSpec

from .dist_helpers import run_ranks, small_config

# one id per feature and sample: lengths are deterministic, so the model's counts are exact
ONE_ID = ["data.synthetic.group_pooling=[1.0,1.0,1.0,1.0]", "data.synthetic.max_pooling=1"]
DLRM, DCN = "dmt/configs/synthetic_dmt_dlrm.toml", "dmt/configs/synthetic_dmt_dcn.toml"
FLAT_BASELINE = (DLRM, "dist.mode=flat", "model.towers_file=")
SPTT_CR2 = (DLRM, "dist.mode=sptt", "model.compression_ratio=2")
BF16 = ("dist.comm_precision=bf16", "dist.allreduce_precision=bf16")
FP16 = ("dist.comm_precision=fp16", "dist.allreduce_precision=fp16")
# tables of two rows, one id per sample: every message of 32 samples holds both ids of every table
DEDUP = ("dist.dedup_ids=true", "data.synthetic.cardinalities=[2]")
VARIANTS = {
    "flat": FLAT_BASELINE,
    "sptt": (DLRM, "dist.mode=sptt", "model.tower_module=identity", "model.compression_ratio=1"),
    "sptt_cr2": SPTT_CR2,
    "sptt_cr4": (DLRM, "dist.mode=sptt", "model.compression_ratio=4"),
    "dcn_cr2": (DCN, "dist.mode=sptt", "model.compression_ratio=2"),
    "flat_bf16": (*FLAT_BASELINE, *BF16),
    "sptt_cr2_bf16": (*SPTT_CR2, *BF16),
    "flat_fp16_dedup": (*FLAT_BASELINE, *FP16, *DEDUP),
    "sptt_cr2_fp16_dedup": (*SPTT_CR2, *FP16, *DEDUP),
    "sptt_cr2_dedup": (*SPTT_CR2, *DEDUP),
}


def _config(variant: str):
    path, *overrides = VARIANTS[variant]
    return small_config(path, *overrides, *ONE_ID)


def _counters(cfg, topo, variants: list[str]) -> dict:
    """One training step per variant on this rank -> {variant: CommCounter snapshot}."""
    from dmt.train.loop import build, train_step

    out = {}
    for v in variants:
        c = _config(v)
        t = build(c, topo)
        batch = next(t.source.train_batches(c.train.batch_size, topo.rank, topo.layout.world))
        lengths = batch.sparse.lengths
        assert int(lengths.min()) == int(lengths.max()) == 1, "the synthetic lengths are not deterministic"
        if c.dist.dedup_ids:  # SaturatedIds: every table's rows in every message
            rows = {f.name: f.num_embeddings for f in t.source.features}
            assert all(v.unique().numel() == rows[k] for k, (v, _, _) in batch.sparse.per_key().items())
        t.model.counter.reset()
        train_step(t, batch)
        out[v] = t.model.counter.snapshot()
    return out


def _predicted(variant: str, layout: Layout) -> list[dict]:
    c = _config(variant)
    features, num_dense = feature_specs(c.data)
    shape = model_shape(c.model, features, num_dense)
    ids = SaturatedIds() if c.dist.dedup_ids else None
    workload = Workload(tuple(features), shape, c.model.embedding_dim, 32, **wire_widths(c.dist), ids=ids)
    return [r.counters() for r in traffic(c.dist.mode, workload, layout).ranks]


@pytest.mark.parametrize(
    ("hosts", "per_host", "variants"),
    [
        (2, 2, list(VARIANTS)),  # with bf16 and fp16 rows and all-reduces, deduplicated ids
        (1, 2, ["flat", "sptt_cr2", "sptt_cr4"]),
        (4, 1, ["flat", "sptt_cr2", "sptt_cr4"]),
    ],
)
def test_counts_equal_a_real_run(hosts, per_host, variants):
    """Bytes by tier and phase, messages and all-reduce payload: per rank, exactly."""
    got = run_ranks(hosts, per_host, _counters, small_config(), variants)
    layout = Layout(hosts, per_host)
    for v in variants:
        expected = _predicted(v, layout)
        for rank in range(layout.world):
            counted = {k: got[rank][v][k] for k in expected[rank]}  # the counters, not the timings
            assert counted == expected[rank], (v, rank)
    if hosts > 1:  # something crossed hosts, so the comparison was not vacuous
        assert all(got[r][variants[1]]["cross_host_bytes"] > 0 for r in got)


def test_synthetic_features_match_the_source():
    """The cost model rebuilds the synthetic features from the structure seed alone."""
    other = [
        "data.seed=7",
        "data.synthetic.group_sizes=[3, 5, 7, 2]",
        "data.synthetic.group_pooling=[1.0, 2.0, 1.5, 3.0]",
        "data.synthetic.cardinalities=[50, 70, 90]",
        "data.synthetic.shared_tables=3",
    ]
    for overrides in ([], other):
        cfg = load_config("dmt/configs/synthetic_dlrm.toml", overrides)
        assert feature_specs(cfg.data)[0] == make_source(cfg.data).features


# ---- presets, timing, scaling --------------------------------------------------------------------


def test_presets_follow_design_section_2():
    assert (PRESETS["h100"].intra_gbps, PRESETS["h100"].nic_gbps) == (370.0, 48.0)
    assert (PRESETS["a100"].intra_gbps, PRESETS["a100"].nic_gbps) == (235.0, 25.0)
    assert PRESETS["v100"].nic_gbps == 6.25
    assert cluster("h100", nic_gbps=25.0).nic_gbps == 25.0
    with pytest.raises(UserError, match="unknown cluster preset"):
        cluster("tpu")
    with pytest.raises(UserError, match="unknown cluster field"):
        cluster("h100", nic=1.0)


def test_alltoall_bus_bandwidth_matches_the_measurements():
    h800, model = cluster("h100", nic_gbps=48.0), TimingModel()
    assert 24.0 <= alltoall_busbw(h800, model, 8, 8, 128 * 1024) <= 28.0  # 64 x H800, 128 KB per peer
    big = 256 << 20
    assert 1.7 <= alltoall_busbw(h800, model, 2, 8, big) / 48.0 <= 2.0  # about 2x NIC at 2 nodes
    assert 0.8 <= alltoall_busbw(h800, model, 256, 8, big) / 48.0 <= 1.0  # toward 1x at many


def _paper_estimator(preset: str = "h100") -> Estimator:
    return Estimator(load_config("dmt/configs/paper_dlrm.toml"), cluster(preset))


def test_tower_modules_divide_the_cross_host_pooled_bytes():
    """DLRM towers of 4/4/8/8 features: k_t = n_t / CR exactly for CR 2 and 4."""
    cfg = load_config(DLRM, ["train.batch_size=64"])
    est = Estimator(cfg, cluster("a100"))
    layout = Layout(2, 2)
    towers, _ = est.towers_for(layout.hosts)

    def pooled(mode: str, ratio: float | None) -> float:
        phases = est.run(mode, est.shape(mode, towers, ratio), layout).traffic.mean()["by_phase"]
        return phases["peer.peer_pooled"] + phases["peer.peer_pooled.grad"]

    base = pooled("sptt", None)
    for cr in (2.0, 4.0):
        assert pooled("sptt_tm", cr) == pytest.approx(base / cr, rel=1e-12)


def test_comm_time_falls_with_the_compression_ratio():
    est = _paper_estimator()
    layout = Layout(8, 8)
    towers, _ = est.towers_for(layout.hosts)
    flat = est.run("flat", est.shape("flat"), layout, memory=False)
    sptt = est.run("sptt", est.shape("sptt", towers), layout, memory=False)
    times = [sptt.timing.comm_s]
    for cr in (2.0, 4.0, 8.0):
        times.append(est.run("sptt_tm", est.shape("sptt_tm", towers, cr), layout, memory=False).timing.comm_s)
    assert times == sorted(times, reverse=True) and len(set(times)) == 4
    assert sptt.traffic.mean()["cross_host_bytes"] == pytest.approx(flat.traffic.mean()["cross_host_bytes"])
    assert times[-1] < flat.timing.comm_s


def test_slower_network_means_longer_cross_host_time():
    est_fast = _paper_estimator("h100")
    layout = Layout(2, 8)
    fast = est_fast.run("flat", est_fast.shape("flat"), layout, memory=False)
    slow = mode_timing(fast.traffic, cluster("v100"))
    assert slow.cross_s > fast.timing.cross_s * 5  # 6.25 vs 48 GB/s NICs


# ---- memory ------------------------------------------------------------------------------------


def _tiny() -> tuple[list[FeatureSpec], ModelConfig]:
    features = [FeatureSpec("f0", "t0", 10), FeatureSpec("f1", "t1", 20), FeatureSpec("f2", "t2", 30)]
    return features, ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4], tower_hidden=3)


def test_memory_of_a_tiny_flat_model_by_hand():
    features, mcfg = _tiny()
    shape = model_shape(mcfg, features, num_dense=2)
    # bottom Linear(2, 4): 12; 3 features + dense = 4 vectors, 6 dots; top Linear(4 + 6, 4) 44 + Linear(4, 1) 5
    assert shape.head_params == 12 + 44 + 5
    mt = traffic("flat", Workload(tuple(features), shape, 4, 8), Layout(1, 2))
    assert mt.plan.table_owner == {"t0": 0, "t1": 1, "t2": 0}  # LPT, equal costs, ties to rank 0
    mem = {m.rank: m for m in rank_memory(mt, "rowwise_adagrad", "adam")}
    head = 61 * 4 * (1 + 1 + 2)  # weights, gradients, two Adam moments
    # rank 0 serves f0 and f2 (w = 8): pooled send W * B * 8 * 4 = 512, receive B * 12 * 4 = 384; the
    # forward's pooled exchange is also what the graph keeps until the backward (activations)
    expected = {0: (40 * 16, 40 * 4, head, 512 + 384), 1: (20 * 16, 20 * 4, head, 256 + 384)}
    for r, (tables, optim, dense, buffers) in expected.items():
        m = mem[r]
        assert (m.table_bytes, m.embedding_optimizer_bytes, m.dense_head_bytes) == (tables, optim, dense)
        assert (m.tower_module_bytes, m.comm_buffer_bytes, m.activation_bytes) == (0, buffers, buffers)
        assert m.total_bytes == tables + optim + dense + 2 * buffers
    sgd = rank_memory(mt, "sgd", "adagrad")[0]
    assert (sgd.embedding_optimizer_bytes, sgd.dense_head_bytes) == (0, 61 * 4 * 3)


def test_memory_of_tower_modules_by_hand():
    features, mcfg = _tiny()
    mcfg.towers, mcfg.tower_compression_ratios = [["f0", "f1"], ["f2"]], [2.0, 1.0]
    shape = model_shape(mcfg, features, num_dense=2)
    # tower 0: n=2, k=1: compress [1, 2] + Linear(4 + 1, 3) + Linear(3, 4) = 2 + 18 + 16
    # tower 1: n=1, k=1: compress [1, 1] + Linear(4, 3) + Linear(3, 4) = 1 + 15 + 16
    assert shape.tower_params == (36, 32) and shape.tower_widths == (4, 4)
    mt = traffic("sptt_tm", Workload(tuple(features), shape, 4, 8), Layout(2, 1))
    assert mt.plan.tower_host == (0, 1)
    mem = rank_memory(mt, "rowwise_adagrad", "adam")
    assert [m.tower_module_bytes for m in mem] == [36 * 16, 32 * 16]


# ---- CLI ---------------------------------------------------------------------------------------


def test_estimate_cli_writes_the_contract_and_a_chart(tmp_path, capsys):
    out = tmp_path / "estimate.json"
    argv = ["estimate", "--preset", "a100", "--hosts", "2", "--ranks-per-host", "2", "--config", DLRM]
    assert main([*argv, "--max-gpus", "16", "--plot", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    for mode in ("flat", "sptt", "sptt_tm"):
        assert {"comm_s", "cross_host_bytes", "intra_host_bytes", "messages", "memory"} <= payload[mode].keys()
        assert payload[mode]["comm_s"] > 0
    assert payload["sptt_tm"]["cross_host_bytes"] < payload["flat"]["cross_host_bytes"]
    assert payload["speedup"]["sptt_tm_over_flat"]["comm"] > 0
    assert [r["gpus"] for r in payload["scaling"]] == [8, 16]
    assert (tmp_path / "estimate.png").stat().st_size > 1000
    assert "scaling" in capsys.readouterr().out


def test_plan_cli_recommends_a_candidate(tmp_path):
    out = tmp_path / "plan.json"
    argv = ["plan", "--preset", "h100", "--hosts", "2", "--ranks-per-host", "2", "--config", DLRM]
    assert main([*argv, "--max-compression-ratio", "4", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [c["compression_ratio"] for c in payload["candidates"]] == [1, 2, 4]
    assert payload["recommended"]["comm_s"] == min(c["comm_s"] for c in payload["candidates"])


@pytest.mark.parametrize(
    "bad",
    [
        ["--hosts", "0", "--ranks-per-host", "2"],
        ["--hosts", "8", "--ranks-per-host", "2"],  # 4 towers cannot cover 8 hosts
        ["--hosts", "2", "--ranks-per-host", "2", "--cluster", "nic=1"],
        ["--hosts", "2", "--ranks-per-host", "2", "--set", "model.embedding_dim=0"],
    ],
)
def test_estimate_cli_rejects_bad_input(tmp_path, capsys, bad):
    argv = ["estimate", "--preset", "h100", "--config", DLRM, *bad, "--out", str(tmp_path / "e.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmt: error:") and "\n" not in err


def test_unknown_preset_is_rejected_by_argparse(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["estimate", "--preset", "tpu", "--hosts", "1", "--ranks-per-host", "2", "--config", DLRM, "--out", "x"])
    assert e.value.code == 2


def test_a_shared_host_link_carries_the_bytes_of_all_its_ranks():
    """The emulator's hosts have one link: a call's cross-host time is the host's bytes over it."""
    from dmt.cost.presets import TCP_PAYLOAD_SHARE, emulated

    c = _config("flat")
    features, num_dense = feature_specs(c.data)
    workload = Workload(tuple(features), model_shape(c.model, features, num_dense), c.model.embedding_dim, 32)
    tr = traffic("flat", workload, Layout(2, 2))
    cluster = emulated(100.0, loopback_gbps=1e3, latency_intra_s=0.0, latency_cross_s=0.0)
    timing = mode_timing(tr, cluster, TimingModel(per_message_intra_s=0.0, per_message_cross_s=0.0))
    payload_rate = 100e6 / 8 * TCP_PAYLOAD_SHARE
    for phase, seconds in timing.calls.items():
        per_host = [
            sum(p.cross_bytes for r in tr.ranks[2 * h : 2 * h + 2] for p in r.phases if p.phase == phase)
            for h in range(2)
        ]
        assert seconds == pytest.approx(max(per_host) / payload_rate, rel=1e-9), phase


def test_a_token_bucket_passes_its_depth_at_once():
    from dmt.cost.presets import emulated
    from dmt.cost.timing import call_times
    from dmt.cost.traffic import PhaseTraffic

    flat_rate = emulated(100.0, loopback_gbps=1.0, latency_intra_s=0.0, latency_cross_s=0.0)
    bucket = emulated(100.0, loopback_gbps=1.0, latency_intra_s=0.0, latency_cross_s=0.0, burst_bytes=37_500)
    model = TimingModel(per_message_intra_s=0.0, per_message_cross_s=0.0)
    big = PhaseTraffic("x", False, 0.0, 1e6, 0, 1, 1e6, 1e6)
    small = PhaseTraffic("x", False, 0.0, 1e4, 0, 1, 1e4, 1e4)
    rate = 100e6 / 8 * flat_rate.wire_efficiency
    assert call_times(big, flat_rate, model, 2)[1] - call_times(big, bucket, model, 2)[1] == pytest.approx(
        37_500 / rate
    )
    assert call_times(small, bucket, model, 2)[1] == 0.0


# ---- deduplicated ids -----------------------------------------------------------------------------


def test_zipf_expectation_matches_the_synthetic_ids():
    """The cost model's distinct-id expectation for synthetic data against counts on the data itself."""
    from dmt.cost.ids import ZipfIds

    cfg = load_config(DLRM)
    source = make_source(cfg.data)
    stats = ZipfIds(cfg.data.synthetic.zipf_exponent, cfg.data.synthetic.max_pooling)
    stream = source.train_batches(256)
    batches = [next(stream) for _ in range(32)]  # the expectation is unbiased: within 2% at 64 batches
    for f in source.features:
        counted = sum(int(b.sparse.select([f.name]).values.unique().numel()) for b in batches) / len(batches)
        assert stats.unique(IdUnit.whole(f), 256) == pytest.approx(counted, rel=0.05), f
    longest = max(int(b.sparse.lengths.max()) for b in batches)
    units = [IdUnit.whole(f) for f in source.features[:12]]
    assert stats.length_bits(units, 256) == pytest.approx(bits_for(longest + 1), abs=0.5)


def test_row_shard_ids_match_the_synthetic_ids():
    """A row range of a table: ZipfIds' expectation (share x the table's distinct ids, thinned bag
    lengths) against counts on the data, and MeasuredIds' counts in the range against the data's."""
    import torch

    from dmt.cost.ids import MeasuredIds, ZipfIds

    cfg = load_config(DLRM)
    source = make_source(cfg.data)
    zipf = ZipfIds(cfg.data.synthetic.zipf_exponent, cfg.data.synthetic.max_pooling)
    measured = MeasuredIds(source, samples=256)
    stream = source.train_batches(256)
    batches = [next(stream) for _ in range(32)]
    predicted, seen = 0.0, 0.0  # the expectation is over the source's rank -> id permutation: one
    for f in source.features[:8]:  # permutation's head ranks sit in one shard or another, the sum does not
        third = f.num_embeddings // 3
        for rows in ((0, third), (third, f.num_embeddings)):
            unit, counted, bits = IdUnit(f, rows), [], []
            for b in batches:
                values, lengths, _ = b.sparse.per_key()[f.name]
                inside = (values >= rows[0]) & (values < rows[1])
                counted.append(int(values[inside].unique().numel()))
                bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
                bits.append(bits_for(int(torch.bincount(bag[inside], minlength=lengths.numel()).max()) + 1))
                if len(counted) == 1:  # MeasuredIds counted on the first 256 samples: exact there
                    assert measured.unique(unit, 256) == counted[0]
                    assert measured.length_bits([unit], 256) == bits[0]
            assert zipf.unique(unit, 256) == pytest.approx(sum(counted) / len(counted), rel=0.25), (f, rows)
            assert zipf.length_bits([unit], 256) == pytest.approx(sum(bits) / len(bits), abs=0.5)
            predicted, seen = predicted + zipf.unique(unit, 256), seen + sum(counted) / len(counted)
    assert predicted == pytest.approx(seen, rel=0.03)


def test_deduplicated_ids_bring_sptt_tm_under_027_of_flat():
    """synthetic_dmt_dlrm at CR 4 on 2x2, fp32, both with deduplicated ids (the expectation for its Zipf ids)."""
    est = Estimator(load_config(DLRM, ["model.compression_ratio=4", "dist.dedup_ids=true"]), cluster("a100"))
    layout = Layout(2, 2)
    towers, _ = est.towers_for(layout.hosts)
    cross = {
        mode: est.run(mode, est.shape(mode, towers if mode != "flat" else None), layout, memory=False).traffic.mean()[
            "cross_host_bytes"
        ]
        for mode in ("flat", "sptt_tm")
    }
    assert cross["sptt_tm"] <= 0.27 * cross["flat"], cross


def test_scaling_spends_the_uniform_budget_where_towers_cannot_take_it():
    """paper_dlrm (320 features x 128, CR 4) on 8 ranks per host: at 32 hosts each tower has 10
    features, and 2.5 embeddings is no output; the scaling row spends the same 80 embeddings by size."""
    from dmt.cost.estimate import scaling

    est = Estimator(load_config("paper_dlrm"), cluster("h100"))
    ratios = est.budget_ratios(32)
    towers, _ = est.towers_for(32, strict=False)
    widths = [len(t) * 128 / r for t, r in zip(towers, ratios, strict=True)]
    assert sum(widths) == 320 * 128 / 4 and all(w % 128 == 0 for w in widths)
    assert sorted(set(ratios)) == [10 / 3, 5.0]
    rows = {r["gpus"]: r for r in scaling(est, 8, (64, 256, 1024))}
    assert "compression_ratios" not in rows[64] and rows[64]["speedup"]
    assert rows[256]["compression_ratios"] == [10 / 3, 5.0] and rows[256]["speedup"]["sptt_tm_over_flat"]["step"] > 1
    assert rows[1024]["sptt_tm"] is None
    assert "less than one 128-float unit for each of the 128 towers" in rows[1024]["note"]
