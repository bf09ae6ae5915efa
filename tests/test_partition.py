"""Tower Partitioner: balance bound, determinism, infeasible bounds, shared tables, recovery of the
planted groups (model-free and from a briefly trained flat DLRM), baselines, and `dmt partition`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmt.cli import main
from dmt.config import DataConfig, SyntheticConfig, load_config
from dmt.data.synthetic import SyntheticSource
from dmt.errors import UserError
from dmt.models.build import resolve_towers
from dmt.models.dcn import DCN
from dmt.partition import METHODS, adjusted_rand_index, partition
from dmt.partition.costs import feature_costs, items_of, parse_cost
from dmt.partition.interaction import data_interactions, dcn_interactions, normalise
from dmt.partition.kmeans import Infeasible, assign, min_feasible_bound
from dmt.partition.run import run_partition
from dmt.specs import FeatureSpec
from tests.helpers import tiny_features

ROOT = Path(__file__).resolve().parents[1]
DLRM = ROOT / "dmt/configs/synthetic_dlrm.toml"
SMALL_EVAL = "data.synthetic.eval_samples=1024"


@pytest.fixture(scope="module")
def src() -> SyntheticSource:
    return SyntheticSource(DataConfig(synthetic=SyntheticConfig(eval_samples=1024)))


@pytest.fixture(scope="module")
def matrix(src: SyntheticSource) -> np.ndarray:
    return data_interactions(src, samples=100_000)


def random_similarity(num: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).random((num, num))
    return a + a.T


def features_with_pooling(pooling: list[float]) -> list[FeatureSpec]:
    return [FeatureSpec(f"f{i}", f"t{i}", 10, p) for i, p in enumerate(pooling)]


def check_partition(features: list[FeatureSpec], towers: list[list[str]], k: int) -> None:
    """Every feature in exactly one of k non-empty towers; tables never split."""
    assert len(towers) == k and all(towers)
    assert sorted(f for t in towers for f in t) == sorted(f.name for f in features)
    tower_of = {f: i for i, t in enumerate(towers) for f in t}
    for item in items_of(features):
        assert len({tower_of[features[i].name] for i in item}) == 1


# ---- acceptance: the planted groups ---------------------------------------------------------------


def test_tp_recovers_planted_groups_balanced(src, matrix):
    result = partition(src.features, 4, "tp", matrix, cost="ids", tolerance=0.05, seed=0)
    assert adjusted_rand_index(result.towers, src.planted_groups) >= 0.9
    assert result.imbalance <= 0.05
    check_partition(src.features, result.towers, 4)


def test_baselines_do_worse_on_planted_groups(src, matrix):
    tp = partition(src.features, 4, "tp", matrix)
    for method in ("sequential", "random", "greedy"):
        other = partition(src.features, 4, method, matrix, seed=0)
        assert adjusted_rand_index(other.towers, src.planted_groups) < 0.5
        assert other.within_interaction < tp.within_interaction


def test_model_free_statistic_separates_groups(src, matrix):
    group = {f: g for g, members in enumerate(src.planted_groups) for f in members}
    names = [f.name for f in src.features]
    same = np.array([[group[a] == group[b] for b in names] for a in names])
    off = ~np.eye(len(names), dtype=bool)
    assert matrix[same & off].mean() > 5 * abs(matrix[~same].mean())


# ---- balance bound, determinism, infeasible bounds ------------------------------------------------


@pytest.mark.parametrize("cost", ["ids", "pooled_width", "table_bytes", "ids=1,table_bytes=0.5"])
def test_balance_bound_respected(src, matrix, cost):
    tolerance = 0.2 if "table_bytes" in cost else 0.05
    result = partition(src.features, 4, "tp", matrix, cost=cost, tolerance=tolerance)
    loads = feature_costs(src.features, parse_cost(cost), 16)
    assert result.bound == pytest.approx((1 + tolerance) * loads.sum() / 4)
    assert max(result.cost_per_tower) <= result.bound * (1 + 1e-9)
    assert sum(result.cost_per_tower) == pytest.approx(loads.sum())
    check_partition(src.features, result.towers, 4)


def test_tight_bound_on_random_interactions():
    feats = features_with_pooling([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # total 78
    result = partition(feats, 3, "tp", random_similarity(12), tolerance=0.0)
    assert result.cost_per_tower == [26.0, 26.0, 26.0]


def test_deterministic_for_a_seed():
    feats = tiny_features(6) + features_with_pooling([1.5] * 10)[6:]
    sim = random_similarity(len(feats), seed=3)
    runs = [partition(feats, 3, "tp", sim, seed=7, tolerance=0.3).towers for _ in range(2)]
    assert runs[0] == runs[1]
    assert partition(feats, 3, "random", sim, seed=7).towers == partition(feats, 3, "random", sim, seed=7).towers


def test_infeasible_bound_names_smallest_feasible_bound():
    # loads 5, 5, 4 into 2 towers: average 7, but the best split is {5, 4} {5} -> 9
    feats = features_with_pooling([5, 5, 4])
    with pytest.raises(UserError) as err:
        partition(feats, 2, "tp", random_similarity(3), tolerance=0.2)  # bound 8.4
    message = str(err.value)
    assert "infeasible" in message and "smallest feasible bound is 9" in message and "\n" not in message
    result = partition(feats, 2, "tp", random_similarity(3), tolerance=2 / 7)  # bound exactly 9
    assert sorted(result.cost_per_tower) == [5.0, 9.0]


def test_min_feasible_bound_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        loads = rng.integers(1, 20, size=7).astype(float)
        k = 3
        best = min(
            np.bincount(labels, weights=loads, minlength=k).max()
            for labels in itertools.product(range(k), repeat=loads.size)
            if len(set(labels)) == k
        )
        lower, upper = min_feasible_bound(loads, k)
        assert lower == pytest.approx(best) and upper == pytest.approx(best)


def test_assign_raises_infeasible():
    with pytest.raises(Infeasible):
        assign(np.zeros((3, 2)), np.array([5.0, 5.0, 4.0]), bound=8.0)


# ---- shared tables, baselines, sources ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_shared_tables_together(src, matrix, method):
    assert any(len(item) > 1 for item in items_of(src.features))  # the default data shares tables
    for k in (2, 4, 7):
        result = partition(src.features, k, method, matrix, seed=1, tolerance=0.5)
        check_partition(src.features, result.towers, k)


def test_baseline_shapes():
    feats = features_with_pooling([1.0] * 10)
    seq = partition(feats, 3, "sequential")
    assert seq.towers == [["f0", "f1", "f2", "f3"], ["f4", "f5", "f6"], ["f7", "f8", "f9"]]
    rnd = partition(feats, 3, "random", seed=1)
    assert sorted(len(t) for t in rnd.towers) == [3, 3, 4] and rnd.within_interaction is None
    greedy = partition(features_with_pooling([9, 8, 7, 6, 5, 4]), 3, "greedy")
    assert greedy.cost_per_tower == [13.0, 13.0, 13.0] and greedy.imbalance == 0.0
    shared = tiny_features(6)  # f0, f1 share a table
    check_partition(shared, partition(shared, 6 - 1, "sequential").towers, 5)


def test_costs_and_normalise():
    feats = tiny_features(3)  # f0 and f1 share table t0 (7 rows)
    assert feature_costs(feats, parse_cost("table_bytes"), 4).tolist() == [56.0, 56.0, 300 * 16.0]
    mix = feature_costs(feats, parse_cost("ids=1,pooled_width=1"), 4)
    assert mix.sum() == pytest.approx(2.0)
    with pytest.raises(UserError, match="unknown component 'bytes'"):
        parse_cost("bytes")
    m = normalise(np.array([[5.0, -1.0], [3.0, 2.0]]))
    assert m.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_dcn_source_reads_cross_weight_blocks():
    feats = features_with_pooling([1.0] * 4)
    model = DCN(feats, num_dense=3, towers=[[f.name for f in feats]], dim=2, bottom_mlp=None, cross_layers=1)
    with torch.no_grad():
        model.head.cross.weights[0].zero_()
        model.head.cross.weights[0][3 + 2 * 1 : 3 + 2 * 2, 3 + 2 * 3 : 3 + 2 * 4] = 1.0  # block (f1, f3)
    out = dcn_interactions(model, ["f3", "f2", "f1", "f0"])
    expected = np.zeros((4, 4))
    expected[0, 2] = expected[2, 0] = 1.0  # ||ones(2, 2)||_F = 2, symmetrised -> 1
    assert np.allclose(out, expected)


def test_dlrm_checkpoint_source_recovers_groups(tmp_path):
    from dmt.train.loop import train

    overrides = ["train.steps=500", "train.batch_size=256", "train.embedding_lr=0.2", "train.progress=false"]
    cfg = load_config(DLRM, [*overrides, SMALL_EVAL])
    train(cfg, tmp_path / "flat")
    payload = run_partition(cfg, 4, tmp_path / "towers.json", checkpoint=str(tmp_path / "flat"), samples=16384)
    assert payload["source"] == "dlrm"
    assert payload["adjusted_rand_index"] >= 0.9 and payload["imbalance"] <= 0.05


# ---- command line -----------------------------------------------------------------------------------


def test_cli_writes_towers_json_and_heatmap(tmp_path, capsys):
    out = tmp_path / "p" / "towers.json"
    args = ["partition", "--config", str(DLRM), "--set", SMALL_EVAL, "--towers", "4", "--samples", "60000"]
    assert main([*args, "--budget-ratio", "4", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    # 24 features x 16 floats at uniform ratio 4: 96 floats, spent in whole DLRM embeddings
    budget = payload["budget"]
    assert budget["family"] == "dlrm" and budget["budget_floats"] == 96 and budget["spent_floats"] == 96
    sizes = [len(t) * 16 for t in payload["towers"]]
    assert all(w % 16 == 0 and w >= 16 for w in budget["tower_widths"])
    assert [s / r for s, r in zip(sizes, budget["compression_ratios"], strict=True)] == budget["tower_widths"]
    for key in ("towers", "cost_per_tower", "imbalance", "method", "source", "cost", "adjusted_rand_index"):
        assert key in payload
    assert payload["method"] == "tp" and payload["source"] == "data" and payload["cost"] == "ids"
    assert payload["adjusted_rand_index"] >= 0.9
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "ARI vs planted groups" in capsys.readouterr().out
    cfg = load_config(DLRM, [f"model.towers_file={json.dumps(str(out))}", SMALL_EVAL])
    names = [f"f{i:02d}" for i in range(24)]
    assert resolve_towers(cfg.model, names) == payload["towers"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--towers", "0"], "--towers must be >= 1"),
        (["--towers", "40"], "--towers must be at most 22"),
        (["--towers", "4", "--cost", "bytes"], "unknown component 'bytes'"),
        (["--towers", "4", "--tolerance", "-1"], "--tolerance must be >= 0"),
        (["--towers", "4", "--source", "dlrm"], "--source dlrm needs --checkpoint"),
        (["--towers", "4", "--checkpoint", "/nonexistent"], "no checkpoint at /nonexistent"),
        (["--towers", "4", "--method", "magic"], "invalid choice: 'magic'"),
        (["--towers", "4", "--cost", "table_bytes"], "smallest feasible bound is"),
        (["--towers", "4", "--budget-ratio", "0.5"], "--budget-ratio must be >= 1, got 0.5"),
        (["--towers", "4", "--budget-mix", "2"], "--budget-mix must be in [0, 1], got 2.0"),
        (["--towers", "4", "--budget-ratio", "64"], "less than one 16-float unit for each of the 4 towers"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, extra, message):
    args = ["partition", "--config", str(DLRM), "--set", SMALL_EVAL, "--samples", "2000"]
    try:
        code = main([*args, *extra, "--out", str(tmp_path / "t.json")])
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
