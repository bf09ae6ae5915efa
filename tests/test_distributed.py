"""Sharded flat and SPTT runs equal the one-device model; counters match hand-computed bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dmt.config import load_config
from dmt.distributed.topology import Topology
from dmt.train.loop import build, train_step
from dmt.verification import verify_rank

from .dist_helpers import run_ranks, small_config

TOLERANCE = 1e-5
VARIANTS = [
    (path, mode, tm)
    for path in ("dmt/configs/synthetic_dmt_dlrm.toml", "dmt/configs/synthetic_dmt_dcn.toml")
    for mode in ("flat", "sptt")
    for tm in ("identity", "compress")
]


def _verify_all(cfg, topo: Topology, variants: list[tuple[str, str, str]]) -> dict:
    """Every variant on the same ranks (one launch per topology keeps the suite fast)."""
    out = {}
    for path, mode, tm in variants:
        c = small_config(path, f"dist.mode={mode}", f"model.tower_module={tm}", "model.compression_ratio=2")
        out[(path, mode, tm)] = verify_rank(c, topo, 3)
    return out


@pytest.mark.parametrize("hosts,per_host", [(1, 2), (2, 1), (2, 2), (4, 1), (1, 4)])
def test_sharded_equals_one_device(hosts, per_host):
    """DLRM and DCN, flat and SPTT, identity and real Tower Modules, 4 towers (more than hosts),
    multi-hot features over tables of 200 to 20,000 rows, two shared tables."""
    results = run_ranks(hosts, per_host, _verify_all, small_config(), VARIANTS)[0]
    bad = {k: v for k, v in results.items() if max(v.values()) > TOLERANCE}
    assert not bad, f"differences above {TOLERANCE}: {bad}"
    assert len(results) == len(VARIANTS)


RESIDUAL = [
    "model.tower_module=residual",
    "model.tower_mlp=[16]",
    "model.tower_norm=true",
    "model.tower_compression_ratios=[4.0, 2.0, 8.0, 4.0]",
]


def _verify_residual(cfg, topo: Topology) -> dict:
    out = {}
    for path, extra in (
        ("dmt/configs/synthetic_dmt_dlrm.toml", ["model.tower_attention_layers=1"]),
        ("dmt/configs/synthetic_dmt_dcn.toml", ["model.tower_dots=true", "model.tower_cross_rank=2"]),
    ):
        out[path] = verify_rank(small_config(path, "dist.mode=sptt", *RESIDUAL, *extra), topo, 3)
    return out


def test_residual_tower_modules_sharded_equal_one_device():
    """The residual Tower Modules (LayerNorm, attention, dots, per-tower ratios) under SPTT on 2 x 2."""
    results = run_ranks(2, 2, _verify_residual, small_config())[0]
    assert all(max(v.values()) <= TOLERANCE for v in results.values()), results
    assert len(results) == 2


def test_flat_baseline_model_equals_one_device():
    """The flat DLRM (no towers) sharded table-wise over 2 hosts x 2 ranks."""
    cfg = small_config("dmt/configs/synthetic_dlrm.toml")
    diffs = run_ranks(2, 2, verify_rank, cfg, 3)[0]
    assert max(diffs.values()) <= TOLERANCE, diffs


def _one_step_counters(cfg, topo: Topology) -> dict:
    """Counters of one training step, and the same bytes computed by hand from the plan and batch."""
    t = build(cfg, topo)
    sm, plan, layout = t.model, t.model.plan, topo.layout
    batch = next(t.source.train_batches(cfg.train.batch_size, topo.rank, layout.world))
    sm.counter.reset()
    train_step(t, batch)
    got = sm.counter.snapshot()

    b, d, id_bytes = (
        batch.size,
        t.model.module.embeddings.feature_dims[batch.sparse.keys[0]],
        torch.empty(0, dtype=plan.id_dtype).element_size(),
    )
    ids_of = dict(zip(batch.sparse.keys, batch.sparse.ids_per_key(), strict=True))
    me = topo.rank

    def ids_bytes(features):  # counts [2] int64 + lengths int32 + ids
        return 16 + 4 * b * len(features) + id_bytes * sum(ids_of[f] for f in features)

    expect = 0
    if plan.mode == "flat":
        mine = plan.features_served_by(me)
        for r in range(layout.world):
            if layout.host_of(r) != topo.host:
                theirs = plan.features_served_by(r)
                # ids out, my pooled rows for r's samples out, gradient of r's pooled rows out
                expect += ids_bytes(theirs) + 4 * b * d * len(mine) + 4 * b * d * len(theirs)
    else:
        widths = {g: sum(t.model.module.tower_widths[i] for i in plan.towers_on(g)) for g in range(layout.hosts)}
        for g in range(layout.hosts):
            if g != topo.host:
                feats = [f for i in plan.towers_on(g) for f in t.model.module.towers[i]]
                # peer ids out, my towers' compressed rows for the peer's samples, gradient of g's rows
                expect += ids_bytes(feats) + 4 * b * widths[topo.host] + 4 * b * widths[g]
    return {"counted": got["cross_host_bytes"], "expected": expect}


@pytest.mark.parametrize("mode", ["flat", "sptt"])
def test_cross_host_bytes_match_hand_count(mode):
    cfg = small_config("dmt/configs/synthetic_dmt_dlrm.toml", f"dist.mode={mode}", "model.compression_ratio=4")
    results = run_ranks(2, 2, _one_step_counters, cfg)
    for rank, r in results.items():
        assert r["counted"] == r["expected"] > 0, (rank, r)


def test_demo_sptt_with_compression_sends_under_a_third_across_hosts():
    """The demo config as `dmt demo` runs it: flat baseline against SPTT + TM with CR 4, counted, with
    fp32 exchanges and plain ids (whose bytes a hand count knows; the cost model tests cover the rest)."""
    plain = ["dist.comm_precision=fp32", "dist.allreduce_precision=fp32", "dist.dedup_ids=false"]
    runs = {
        "flat": ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"],
        "sptt": ["dist.mode=sptt", "model.tower_module=compress", "model.compression_ratio=4"],
    }
    total = {}
    for mode, overrides in runs.items():
        cfg = load_config("dmt/configs/demo.toml", [*overrides, *plain, "data.synthetic.eval_samples=2048"])
        total[mode] = sum(r["counted"] for r in run_ranks(2, 2, _one_step_counters, cfg).values())
    assert total["sptt"] <= 0.3 * total["flat"], total


def test_topology_must_divide_world():
    from dmt.distributed.topology import Layout
    from dmt.errors import UserError

    with pytest.raises(UserError, match="does not divide"):
        Layout.for_world(6, 4)
    assert dataclasses.astuple(Layout.for_world(6, 3)) == (2, 3)


def test_more_ranks_than_tables_still_equals_one_device():
    """Three tables on four ranks: one rank owns nothing and must still join every exchange."""
    cfg = small_config(
        "dmt/configs/synthetic_dlrm.toml",
        "data.synthetic.group_sizes=[1, 2]",
        "data.synthetic.group_pooling=[1.0, 2.0]",
        "data.synthetic.shared_tables=0",
    )
    diffs = run_ranks(2, 2, verify_rank, cfg, 2)[0]
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_hosts_without_towers_still_equal_one_device():
    """Two towers on four hosts under SPTT: two hosts hold no tower and serve nothing."""
    cfg = small_config(
        "dmt/configs/synthetic_dlrm.toml",
        "data.synthetic.group_sizes=[1, 2]",
        "data.synthetic.group_pooling=[1.0, 2.0]",
        "data.synthetic.shared_tables=0",
        "model.num_towers=2",
        "dist.mode=sptt",
    )
    diffs = run_ranks(4, 1, verify_rank, cfg, 2)[0]
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_verify_command_writes_ok(tmp_path):
    from dmt.cli import main

    out = tmp_path / "verify.json"
    code = main(
        [
            "verify",
            "--config",
            "dmt/configs/synthetic_dmt_dcn.toml",
            "--set",
            "train.batch_size=16",
            "data.synthetic.eval_samples=512",
            "--hosts",
            "2",
            "--ranks-per-host",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert code == 0 and result["ok"] is True
    assert result["world"] == {"hosts": 2, "ranks_per_host": 1} and result["mode"] == "sptt"
    assert set(result["max_abs_diff"]) == {"outputs", "gradients", "parameters"}


def test_busy_time_is_the_union_of_overlapping_collectives():
    from dmt.distributed.comm import CommCounter

    c = CommCounter()
    c.add_time("a", 0.0, 2.0, (0, 1))
    c.intervals.append((1.0, 3.0, (0, 1)))  # an all-reduce running beside "a"
    c.add_time("b", 5.0, 6.0, (0, 1))
    assert c.busy_s() == pytest.approx(4.0)
    assert c.seconds_by_phase == {"a": 2.0, "b": 1.0}
