"""Tables cut into shards: the pieces equal the one-device table, sharded runs of every kind equal
one device, the cost model counts their bytes exactly, plans fit the memory budget, checkpoints
resume and export."""

from __future__ import annotations

import json

import pytest
import torch

import dmt
from dmt.cost.fit import MemoryBudget, fit_workload
from dmt.cost.memory import RUNTIME_BYTES
from dmt.cost.traffic import traffic
from dmt.cost.workload import workload_of
from dmt.distributed.plan import plan
from dmt.distributed.shards import Shard, combine, cut, split_ids, unit_key
from dmt.distributed.topology import Layout, Topology
from dmt.errors import UserError
from dmt.modules import embedding
from dmt.sparse import KeyedJagged
from dmt.specs import FeatureSpec, TableSpec

from .dist_helpers import run_ranks, small_config

TOLERANCE = 1e-5
DLRM, DCN = "dmt/configs/synthetic_dmt_dlrm.toml", "dmt/configs/synthetic_dmt_dcn.toml"
MIXED_WIDTHS = "model.embedding_dims={t00 = 8, t01 = 4, t02 = 12, t03 = 6, t07 = 10}"


# ---- the pieces -------------------------------------------------------------------------------


def test_a_shard_holds_its_block_of_the_one_device_table(monkeypatch):
    """Blocks of rows and columns across generator blocks equal the whole table's; block 0 of a
    table draws exactly what a table always drew (one generator seeded seed * 1_000_003 + index)."""
    monkeypatch.setattr(embedding, "BLOCK_ROWS", 64)
    monkeypatch.setattr(embedding, "SCRATCH_ROWS", 7)
    feats = [FeatureSpec("a", "A", 300), FeatureSpec("b", "B", 50)]
    specs = [TableSpec("A", 300, 6), TableSpec("B", 50, 4)]
    torch.manual_seed(3)
    whole = embedding.EmbeddingBagCollection(specs, feats).tables["A"].weight.detach()
    torch.manual_seed(3)
    with embedding.deferred_tables():
        part = embedding.EmbeddingBagCollection(specs, feats)
    for block in [
        ((0, 300), (0, 6)),
        ((70, 200), (0, 6)),
        ((13, 299), (2, 5)),
        ((64, 128), (0, 3)),
        ((299, 300), (5, 6)),
    ]:
        part.hold([], {"A": block})
        (r0, r1), (c0, c1) = block
        assert torch.equal(part.tables["A"].weight.detach(), whole[r0:r1, c0:c1]), block
    assert part.block("A") == ((299, 300), (5, 6)) and list(part.tables) == ["A"]

    monkeypatch.setattr(embedding, "BLOCK_ROWS", 2**20)
    torch.manual_seed(3)
    table_b = embedding.EmbeddingBagCollection(specs, feats).tables["B"].weight.detach()
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    assert torch.equal(table_b, torch.empty(50, 4).uniform_(-0.5, 0.5, generator=generator))


def test_cut_gives_even_blocks_to_consecutive_ranks():
    assert cut("t", 10, 4, "row", [4, 5, 6], start=1) == (
        Shard("t", (0, 3), (0, 4), 5),
        Shard("t", (3, 6), (0, 4), 6),
        Shard("t", (6, 10), (0, 4), 4),
    )
    assert [(s.cols, s.rank) for s in cut("t", 10, 6, "column", [0, 1, 2, 3])] == [
        ((0, 1), 0),
        ((1, 3), 1),
        ((3, 4), 2),
        ((4, 6), 3),
    ]
    grid = cut("t", 8, 4, "row_column", [0, 1, 2, 3])  # 2 row ranges x 2 column ranges
    assert [(s.rows, s.cols, s.rank) for s in grid] == [
        ((0, 4), (0, 2), 0),
        ((0, 4), (2, 4), 1),
        ((4, 8), (0, 2), 2),
        ((4, 8), (2, 4), 3),
    ]
    assert len(cut("t", 1, 4, "row", [0, 1])) == 1 and len(cut("t", 5, 1, "column", [0, 1])) == 1


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_split_pool_combine_equals_the_whole_table(pooling):
    """A table cut 2 rows x 2 columns: each sender's ids split per shard, each shard pooled on its
    own, the partials combined -> the whole table's pooling (weights and an empty bag included)."""
    feats = [FeatureSpec("f", "T", 10), FeatureSpec("g", "T", 10)]
    specs = [TableSpec("T", 10, 4, pooling)]
    torch.manual_seed(0)
    whole = embedding.EmbeddingBagCollection(specs, feats)
    ids = KeyedJagged(
        ["f", "g"],
        torch.tensor([1, 7, 9, 3, 4, 0, 5, 5, 8]),
        torch.tensor([3, 0, 2, 1, 2, 1]),
        torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0, 0.25, 3.0, 1.0, 2.0]),
    )
    shards = {"T": cut("T", 10, 4, "row_column", [0, 1, 2, 3])}
    units = [unit_key(f, k) for f in ("f", "g") for k in range(4)]
    split = split_ids(ids, units, shards, {"f": "T", "g": "T"})
    first = split.per_key()["f@2"]  # rows 5..9, re-based: ids 7 and 9 of bag 0, 5 of bag 2... of f
    assert first[0].tolist() == [2, 4] and first[1].tolist() == [2, 0, 0]
    pooled = {}
    for k, s in enumerate(shards["T"]):
        torch.manual_seed(0)
        with embedding.deferred_tables():
            owner = embedding.EmbeddingBagCollection(specs, feats)
        owner.hold([], {"T": (s.rows, s.cols)})
        mine = [unit_key("f", k), unit_key("g", k)]
        pooled.update(owner(split.select(mine), {u: "T" for u in mine}))
    lengths = {f: v[1] for f, v in ids.per_key().items()}
    got = combine(pooled, ["f", "g"], shards, {"f": "T", "g": "T"}, {"T": pooling == "mean"}, lengths)
    want = whole(ids)
    for f in ("f", "g"):
        torch.testing.assert_close(got[f], want[f], rtol=0, atol=1e-6)


# ---- planning ---------------------------------------------------------------------------------


def _model(dims=(8, 4, 6, 8), rows=(256, 512, 1024, 256), towers=None, tower_module="identity"):
    """Five features over four tables of mixed widths (t3 shared by f3 and f4), a DCN head."""
    feats = [FeatureSpec(f"f{i}", f"t{min(i, 3)}", rows[min(i, 3)]) for i in range(5)]
    with dmt.deferred_tables():
        return dmt.DCN(
            feats,
            num_dense=2,
            towers=towers,
            dim=8,
            dims={f"t{i}": d for i, d in enumerate(dims)},
            deep_mlp=[8],
            cross_layers=1,
            tower_module=tower_module,
            compression_ratios=[2.0] * len(towers or [[]]),
        )


def test_plan_places_every_kind():
    layout = Layout(2, 2)
    kinds = {"t0": "row", "t1": "table_row", "t2": "column", "t3": "row_column"}
    p = plan(_model(), layout, "flat", kinds)
    assert p.table_owner == {} and p.kinds == kinds
    assert [(s.rows, s.rank) for s in p.shards["t0"]] == [
        ((0, 64), 0),
        ((64, 128), 1),
        ((128, 192), 2),
        ((192, 256), 3),
    ]
    assert {s.rank // 2 for s in p.shards["t1"]} == {p.table_host("t1")} and len(p.shards["t1"]) == 2
    assert [s.width for s in p.shards["t2"]] == [1, 2, 1, 2]
    assert p.units_served_by(0) == [u for u in p.units_served_by(0) if "@" in u]
    assert p.host_path_features() == ["f1"]
    sptt = plan(_model(towers=[["f0", "f1"], ["f2", "f3", "f4"]]), layout, "sptt", {"*": "row", "t2": "table_row"})
    assert all(layout.host_of(s.rank) == sptt.tower_host[0] for t in ("t0", "t1") for s in sptt.shards[t])
    assert sptt.kinds["t2"] == "row"  # inside SPTT's host "table_row" is "row"
    with pytest.raises(UserError, match=r"model.table_sharding names unknown tables \['t9'\]"):
        plan(_model(), layout, "flat", {"t9": "row"})
    with pytest.raises(UserError, match="model.table_sharding.t0 is 'rows'; allowed: table, row, column"):
        plan(_model(), layout, "flat", {"t0": "rows"})


def test_config_rejects_an_unknown_sharding_kind():
    from dmt.config import load_config

    with pytest.raises(UserError, match="model.table_sharding.t00 is 'diagonal'; allowed: table, row"):
        load_config(DLRM, ['model.table_sharding={t00 = "diagonal"}'])
    with pytest.raises(UserError, match="dist.memory_gb must be >= 0"):
        load_config(DLRM, ["dist.memory_gb=-1"])


def test_auto_tables_are_cut_until_every_rank_fits():
    """A big table among small ones on 2x2: whole it does not fit one rank; "auto" cuts it to
    table_row (rows over one host), then row (over the world); pinned whole, it is refused."""
    model = _model(rows=(40_000, 512, 1024, 256), dims=(16, 4, 6, 8))
    workload = workload_of(model, 32)
    layout = Layout(2, 2)
    big = 40_000 * 16 * 4 + 40_000 * 4  # the table and its row-wise Adagrad state

    def budget(extra: float) -> MemoryBudget:
        return MemoryBudget(RUNTIME_BYTES["cpu"] + extra, 32)

    kinds = {"t0": "auto", "t1": "auto", "t2": "auto", "t3": "auto"}
    sharding, memory = fit_workload(workload, layout, "flat", kinds, budget(big / 2 + 200_000))
    assert sharding.kinds == {"t0": "table_row", "t1": "table", "t2": "table", "t3": "table"}
    sharding, memory = fit_workload(workload, layout, "flat", kinds, budget(big / 4 + 200_000))
    assert sharding.kinds["t0"] == "row" and len(sharding.shards["t0"]) == 4
    assert max(m.total_bytes for m in memory) <= RUNTIME_BYTES["cpu"] + big / 4 + 200_000
    assert min(m.table_bytes for m in memory) >= 10_000 * 16 * 4  # every rank holds a quarter of t0
    with pytest.raises(UserError) as e:
        fit_workload(workload, layout, "flat", {**kinds, "t0": "table"}, budget(big / 2))
    line = str(e.value)
    assert "\n" not in line and line.startswith("the flat plan does not fit: rank ")
    runtime = f"runtime {RUNTIME_BYTES['cpu'] / 1e6:.1f} MB, table 2.6 MB"
    assert (
        "t0 [40,000 x 16] whole" in line
        and f"> dist.memory_gb={budget(big / 2).bytes_per_rank / 1e9:.3f} ({runtime}" in line
    )


def test_train_refuses_a_plan_beyond_the_budget_before_any_rank_starts(tmp_path, capsys):
    """A 200,000-row table on 2x2 with 0.437 GB per rank (the runtime alone is 0.430): whole it
    does not fit (refused in the launching process, one line); "auto" cuts it over the world."""
    from dmt.cli import main
    from dmt.config import load_config
    from dmt.cost.fit import config_plan
    from dmt.train.run import check_cluster

    config = "dmt/configs/synthetic_dlrm.toml"
    settings = [
        "dist.memory_gb=0.437",
        "data.synthetic.group_sizes=[1, 1]",
        "data.synthetic.group_pooling=[1.0, 1.0]",
        "data.synthetic.shared_tables=0",
        "data.synthetic.cardinalities=[100, 200000]",
    ]
    argv = ["train", "--config", config, "--nproc", "4", "--ranks-per-host", "2", "--set", *settings]
    assert main([*argv, 'model.table_sharding={"*" = "table"}', "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmt: error: the flat plan does not fit: rank 1 would hold 0.444 GB > dist.memory_gb=0.437")
    assert "t01 [200,000 x 16] whole" in err and "\n" not in err and not (tmp_path / "summary.json").exists()

    cfg = load_config(config, settings)
    assert check_cluster(cfg, 4, 2) == Layout(2, 2)
    with dmt.deferred_tables(), torch.device("meta"):
        from dmt.data import make_source
        from dmt.models.build import build_model

        source = make_source(cfg.data)
        model = build_model(cfg.model, source.features, source.num_dense)
    assert config_plan(cfg, model, Layout(2, 2)).table_summary()["t01"] == "row x4 over ranks [0, 1, 2, 3]"


# ---- the cost model counts what the exchanges send ---------------------------------------------------

COUNTED = [  # mode, Tower Module, kinds
    ("flat", "identity", {"t0": "row", "t1": "column", "t2": "row_column", "t3": "table_row"}),
    ("flat", "identity", {"*": "row"}),
    ("flat", "identity", {"*": "table_row"}),  # on 2x2 and 1x4 nothing goes over the world
    ("sptt", "compress", {"t0": "row", "t1": "column", "t2": "row_column", "t3": "table"}),
]
B = 16  # samples per rank


def _spread_batch(model, rank: int) -> dmt.Batch:
    """B samples, one id per feature, spread evenly over each table's rows (id i * N / B + offset):
    every row shard gets exactly its share, the cost model's assumption."""
    feats = model.embeddings.features
    values = torch.cat([torch.arange(B) * (f.num_embeddings // B) + (rank + i) % 4 for i, f in enumerate(feats)])
    weights = torch.linspace(0.5, 1.5, values.numel())
    sparse = KeyedJagged([f.name for f in feats], values, torch.ones(len(feats) * B, dtype=torch.long), weights)
    return dmt.Batch(torch.randn(B, 2), sparse, (torch.arange(B) % 2).float())


def _counts(cfg, topo: Topology, variants) -> dict:
    from dmt.train.loop import Trainee, train_step
    from dmt.train.optim import make_optimizers

    out = {}
    for i, (mode, tm, kinds) in enumerate(variants):
        torch.manual_seed(0)
        towers = [["f0", "f1"], ["f2", "f3", "f4"]] if mode == "sptt" else None
        model = _model(towers=towers, tower_module=tm)
        expected = traffic(
            mode, workload_of(model, B, weighted=True), topo.layout, plan(model, topo.layout, mode, kinds)
        )
        sharded = dmt.shard(model, topo, mode, sharding=plan(model, topo.layout, mode, kinds))
        t = Trainee(None, sharded, make_optimizers(sharded, cfg.train), topo)
        sharded.counter.reset()
        train_step(t, _spread_batch(model, topo.rank))
        got = sharded.counter.snapshot()
        want = expected.ranks[topo.rank].counters()
        out[i] = ({k: got[k] for k in want}, want)
    return out


def test_dmt_plan_ranks_plans_that_fit_and_names_their_sharding(tmp_path, capsys):
    """A 50M-row table (3.2 GB) on 2 x 2 H100 with 4 GB per GPU (1 GiB of it the CUDA runtime): every
    candidate cuts it; forced whole, nothing fits and `dmt plan` says why in one line."""
    from dmt.cli import main

    big = ["data.synthetic.cardinalities=[100, 100, 100, 50000000]", "data.synthetic.group_sizes=[2, 2]"]
    big += ["data.synthetic.group_pooling=[1.0, 1.0]", "data.synthetic.shared_tables=0"]
    big += ['model.towers_file=""', "model.num_towers=2"]
    argv = ["plan", "--preset", "h100", "--hosts", "2", "--ranks-per-host", "2", "--config", DLRM]
    argv += ["--max-compression-ratio", "2", "--out", str(tmp_path / "plan.json"), "--set", *big]
    assert main([*argv, "dist.memory_gb=4"]) == 0
    payload = json.loads((tmp_path / "plan.json").read_text())
    best = payload["recommended"]
    assert best["step_s"] == min(c["step_s"] for c in payload["candidates"] if "error" not in c)
    cut = {t: how for t, how in best["sharding"].items() if not how.startswith("table ")}
    assert list(cut) == ["t03"] and cut["t03"].startswith("row x2 over ranks")
    assert payload["flat"]["fits_memory"] and "cut into shards:" in capsys.readouterr().out
    assert main([*argv, "dist.memory_gb=4", 'model.table_sharding={"*" = "table"}']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmt: error: no tower layout fits this config: the sptt plan does not fit: rank ")


# ---- sharded runs equal one device and the cost model ------------------------------------------

VARIANTS = [  # config, overrides: every kind, both dataflows, both families, compress and residual Tower Modules
    (
        "dmt/configs/synthetic_dlrm.toml",
        (
            "dist.mode=flat",
            'model.table_sharding={"*"="row", t00="column", t01="table_row", t02="row_column", t03="table"}',
        ),
    ),
    (
        DLRM,
        ("dist.mode=sptt", 'model.table_sharding={"*"="row", t00="column", t01="row_column", t02="table"}'),
    ),
    (
        DCN,
        (
            "dist.mode=flat",
            "model.tower_module=compress",
            MIXED_WIDTHS,
            'model.table_sharding={"*"="column", t00="row", t01="table_row", t02="row_column", t03="table"}',
        ),
    ),
    (
        DCN,
        (
            "dist.mode=sptt",
            "model.tower_module=identity",
            MIXED_WIDTHS,
            'model.table_sharding={"*"="row_column", t00="column", t01="row", t02="table"}',
        ),
    ),
    (  # shards on the wire of issue 13: deduplicated ids of exchange units, fp32 rows
        DLRM,
        ("dist.mode=flat", "dist.dedup_ids=true", 'model.table_sharding={"*"="row", t00="column", t01="table_row"}'),
    ),
]


def _verify_and_count(cfg, topo: Topology, variants, counted) -> dict:
    """Both checks on one set of ranks (a launch costs seconds): verify every config variant, then
    count one step of every counted variant against the cost model."""
    from dmt.verification import verify_rank

    diffs = {v: verify_rank(small_config(v[0], *v[1]), topo, 3) for v in variants}
    return {"verify": diffs, "counts": _counts(cfg, topo, counted)}


@pytest.mark.parametrize("hosts,per_host", [(2, 2), (1, 4), (4, 1)])
def test_every_sharding_kind_equals_one_device_and_the_cost_model(hosts, per_host):
    """Outputs, gradients and parameters after 3 steps of updates (row-wise Adagrad, Adam) within
    1e-5 of one device; bytes by tier and phase, messages and all-reduce payload of one step equal
    to the cost model's, per rank, exactly."""
    got = run_ranks(hosts, per_host, _verify_and_count, small_config(), VARIANTS, COUNTED)
    results = got[0]["verify"]
    bad = {k: v for k, v in results.items() if max(v.values()) > TOLERANCE}
    assert not bad, f"differences above {TOLERANCE}: {bad}"
    assert len(results) == len(VARIANTS)
    for rank, out in got.items():
        for i, (counted, expected) in out["counts"].items():
            assert counted == expected, (COUNTED[i], rank)
    if hosts > 1:
        assert all(got[r]["counts"][0][0]["cross_host_bytes"] > 0 for r in got)


# ---- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process stands in for the ranks
def test_blocks_save_in_chunks_load_in_any_cut_and_export_in_place(tmp_path, monkeypatch):
    """A table saved in chunks of 3 rows loads back as blocks that straddle the chunks, and exports
    to model.pt chunk by chunk (a few chunks per load) with every byte in its place."""
    import torch.distributed.checkpoint as dcp

    from dmt.config import Config, to_dict
    from dmt.train import checkpoint as ckpt

    monkeypatch.setattr(ckpt, "CHUNK_BYTES", 3 * 8 * 4)  # 3 rows of the 8-wide table per chunk
    monkeypatch.setattr(ckpt, "EXPORT_BYTES", 200)  # two chunks per load at most
    table, rows = torch.arange(80.0).view(10, 8), torch.arange(10.0)
    state = {
        "model/t": ckpt.TensorBlock(table.clone(), (0, 0), (10, 8)),
        "optim/t/sum": ckpt.TensorBlock(rows.clone(), (0,), (10,)),
        "step": torch.tensor(5),
    }
    location = tmp_path / "checkpoint"
    dcp.save(state, checkpoint_id=str(location), no_dist=True)
    (location / "config.json").write_text(json.dumps(to_dict(Config())))
    chunks = dcp.FileSystemReader(str(location)).read_metadata().state_dict_metadata["model/t"].chunks
    assert [tuple(c.offsets) for c in chunks] == [(0, 0), (3, 0), (6, 0), (9, 0)]
    for (r0, r1), (c0, c1) in (((2, 7), (3, 8)), ((0, 10), (0, 1)), ((8, 10), (0, 8))):
        block = ckpt.TensorBlock(torch.zeros(r1 - r0, c1 - c0), (r0, c0), (10, 8))
        dcp.load({"model/t": block}, checkpoint_id=str(location), no_dist=True)
        assert torch.equal(block.local, table[r0:r1, c0:c1])
    ckpt.export_sharded(location, tmp_path)
    _, exported = ckpt.load_file(tmp_path)
    assert torch.equal(exported["model/t"], table) and torch.equal(exported["optim/t/sum"], rows)
    assert int(exported["step"]) == 5 and sorted(exported) == ["model/t", "optim/t/sum", "step"]


SHARDED = (
    "dist.mode=sptt",
    'model.table_sharding={"*"="row", t00="column", t03="row_column"}',
    "train.tensorboard=false",
)


def _three_runs(cfg, topo: Topology, root: str) -> None:
    """On one set of ranks: 6 steps straight; 3 steps, then resumed for 3 more."""
    import dataclasses

    from dmt.train.loop import train

    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3))
    train(cfg, f"{root}/full", topo=topo)
    train(half, f"{root}/resumed", topo=topo)
    train(cfg, f"{root}/resumed", resume=True, topo=topo)


def _reload(cfg, topo: Topology, directory: str) -> float:
    """Build the config's model on this topology and sharding, load the checkpoint in `directory`
    (written on another topology and sharding) -> the largest difference to its exported model.pt."""
    from pathlib import Path

    from dmt.train import checkpoint as ckpt
    from dmt.train.loop import build

    t = build(cfg, topo)
    assert ckpt.resume(t.model, t.optimizers, topo, Path(directory)) == 6
    _, state = ckpt.load_file(directory)
    where = {n: o for n, (o, _) in t.model.blocks().items()}
    worst = 0.0
    for name, p in t.model.module.named_parameters():
        ref = state[f"model/{name}"]
        if name in where:
            ref = ref[tuple(slice(o, o + n) for o, n in zip(where[name], p.shape, strict=True))]
        worst = max(worst, float((p.detach() - ref).abs().max()))
    return worst


def test_split_tables_resume_exactly_export_and_reshard(tmp_path):
    from dmt.train.checkpoint import load_file

    run_ranks(2, 2, _three_runs, small_config(DLRM, *SHARDED, "train.steps=6"), str(tmp_path))
    _, a = load_file(tmp_path / "full")
    _, b = load_file(tmp_path / "resumed")
    assert a.keys() == b.keys() and a["model/embeddings.tables.t03.weight"].shape == (10000, 16)
    assert a["optim/embeddings.tables.t00.weight/sum"].shape == (100,)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["sharding"]["t00"].startswith("column x2 over ranks")

    # another topology and sharding loads the same checkpoint (DCP reads each new block from the old ones)
    other = small_config(DLRM, "dist.mode=flat", 'model.table_sharding={"*"="column", t03="row"}', "train.steps=6")
    diffs = run_ranks(1, 4, _reload, other, str(tmp_path / "full"))
    assert max(diffs.values()) == 0.0, diffs
