"""The synthetic click source: determinism, layout, planted structure and the difficulty it promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmt.config import Config, DataConfig, SyntheticConfig, validate
from dmt.data.synthetic import SyntheticSource, additive_baseline_auc
from dmt.errors import UserError
from dmt.sparse import Batch


@pytest.fixture(scope="module")
def src() -> SyntheticSource:
    return SyntheticSource(DataConfig())


def small(seed: int = 1234, eval_samples: int = 1000) -> SyntheticSource:
    return SyntheticSource(DataConfig(seed=seed, synthetic=SyntheticConfig(eval_samples=eval_samples)))


def assert_same(a: Batch, b: Batch) -> None:
    assert a.sparse.keys == b.sparse.keys
    for x, y in [
        (a.dense, b.dense),
        (a.labels, b.labels),
        (a.probs, b.probs),
        (a.sparse.values, b.sparse.values),
        (a.sparse.lengths, b.sparse.lengths),
    ]:
        assert torch.equal(x, y)


def test_rank_split_equals_one_rank_global_batch(src: SyntheticSource) -> None:
    world, b = 3, 100
    for step in (0, 4):  # step 4 straddles chunk boundaries
        ranks = [next(src.train_batches(b, rank=r, world=world, start_step=step)) for r in range(world)]
        whole = next(src.train_batches(world * b, start_step=step))
        assert_same(Batch.concat(ranks), whole)


def test_sample_identity_independent_of_batch_size() -> None:
    a, b = small(), small()  # fresh instances: no shared cache
    it = a.train_batches(7)
    by_7 = Batch.concat([next(it) for _ in range(100)])
    by_700 = next(b.train_batches(700))
    assert_same(by_7, by_700)
    resumed = next(a.train_batches(7, start_step=42))
    assert_same(resumed, by_700.slice_samples(42 * 7, 43 * 7))


def test_seeds_differ() -> None:
    a, b = next(small(1).train_batches(64)), next(small(2).train_batches(64))
    assert not torch.equal(a.dense, b.dense)
    assert not torch.equal(a.probs, b.probs)
    assert not torch.equal(a.sparse.values, b.sparse.values)
    assert small(1).planted_groups != small(2).planted_groups


def test_shapes_and_ranges(src: SyntheticSource) -> None:
    cfg = src.cfg
    batch = next(src.train_batches(512, start_step=3))
    nf = sum(cfg.group_sizes)
    assert [f.name for f in src.features] == [f"f{i:02d}" for i in range(nf)] == batch.sparse.keys
    assert batch.dense.shape == (512, src.num_dense) and batch.dense.dtype == torch.float32
    assert batch.labels.shape == (512,) and set(batch.labels.unique().tolist()) <= {0.0, 1.0}
    assert torch.all((batch.probs > 0) & (batch.probs < 1))
    lengths = batch.sparse.lengths_per_key()
    assert lengths.shape == (nf, 512) and batch.sparse.values.dtype == torch.int64
    assert lengths.min() >= 1 and lengths.max() <= cfg.max_pooling
    for f, (v, ln, w) in zip(src.features, batch.sparse.per_key().values(), strict=True):
        assert w is None and v.numel() == ln.sum()
        assert v.min() >= 0 and v.max() < f.num_embeddings
        assert abs(ln.float().mean().item() - f.pooling_factor) < 0.25
    assert {f.num_embeddings for f in src.features} == set(cfg.cardinalities)


def test_group_pooling_keeps_ids_per_sample_equal(src: SyntheticSource) -> None:
    per_group = [sum(src.features[int(f[1:])].pooling_factor for f in g) for g in src.planted_groups]
    assert len(set(map(len, src.planted_groups))) > 1  # groups of different sizes
    assert max(per_group) - min(per_group) < 1e-9


def test_zipf_ids_are_skewed_and_permuted(src: SyntheticSource) -> None:
    big = next(f for f in src.features if f.num_embeddings == max(src.cfg.cardinalities))
    values, _, _ = next(src.train_batches(8192)).sparse.per_key()[big.name]
    counts = np.bincount(values.numpy(), minlength=big.num_embeddings)
    top = np.argsort(-counts)[:20]
    assert counts[top].sum() > 0.4 * counts.sum()  # heavy head
    assert len(set(top.tolist()) & set(range(20))) < 5  # hot ids are not 0..19


def test_shared_tables(src: SyntheticSource) -> None:
    by_table: dict[str, list] = {}
    for f in src.features:
        by_table.setdefault(f.table, []).append(f)
    shared = [fs for fs in by_table.values() if len(fs) > 1]
    assert len(shared) == src.cfg.shared_tables
    groups = [set(g) for g in src.planted_groups]
    for a, b in shared:
        assert a.num_embeddings == b.num_embeddings
        assert any({a.name, b.name} <= g for g in groups)


def test_planted_groups_interleaved(src: SyntheticSource) -> None:
    groups = src.planted_groups
    names = [f.name for f in src.features]
    assert sorted(sum(groups, [])) == names
    for cut in (np.array_split(names, len(groups)), np.split(names, np.cumsum(src.cfg.group_sizes)[:-1])):
        assert {frozenset(c) for c in cut} != {frozenset(g) for g in groups}
    for g in groups:
        pos = sorted(names.index(n) for n in g)
        assert pos[-1] - pos[0] + 1 > len(g)  # no group is a contiguous run


def test_eval_split_covers_each_sample_once() -> None:
    s = small(eval_samples=1000)
    whole = Batch.concat(list(s.eval_batches(1000)))
    assert whole.size == 1000
    for world, b in [(1, 128), (3, 64), (4, 1000), (7, 50)]:
        parts = [list(s.eval_batches(b, rank=r, world=world)) for r in range(world)]
        assert all(x.size <= b for p in parts for x in p)
        assert_same(Batch.concat([x for p in parts for x in p]), whole)
    assert not torch.equal(whole.dense[:64], next(s.train_batches(64)).dense)  # a separate stream


def test_optimal_metrics_and_describe(src: SyntheticSource) -> None:
    m = src.optimal_metrics()
    assert 0.78 <= m["optimal_auc"] <= 0.82
    assert 0.3 < m["optimal_logloss"] < 0.65
    assert src.optimal_metrics() is m  # cached
    d = src.describe()
    assert 0.2 <= d["positive_rate"] <= 0.4
    assert d["planted_groups"] == src.planted_groups
    assert d["rows"] == {"train": None, "test": src.cfg.eval_samples} and d["malformed_rows"] == 0
    assert d["optimal_auc"] == m["optimal_auc"] and len(d["features"]) == len(src.features)


def test_additive_baseline_clearly_below_optimal(src: SyntheticSource) -> None:
    lr_auc = additive_baseline_auc(src, train_samples=100_000)
    assert 0.6 < lr_auc < src.optimal_metrics()["optimal_auc"] - 0.03


def test_shared_tables_validated() -> None:
    cfg = Config(data=DataConfig(synthetic=SyntheticConfig(shared_tables=99)))
    with pytest.raises(UserError, match="shared_tables"):
        validate(cfg)


def test_validation_stream_is_another_sample_of_the_same_task() -> None:
    """data.eval_split = "validation" evaluates on stream 3: same teacher and train stream, other samples."""
    test = small(eval_samples=512)
    val = SyntheticSource(DataConfig(eval_split="validation", synthetic=SyntheticConfig(eval_samples=512)))
    assert val.features == test.features
    assert_same(next(val.train_batches(64)), next(test.train_batches(64)))
    a, b = next(test.eval_batches(512)), next(val.eval_batches(512))
    assert a.size == b.size == 512 and not torch.equal(a.sparse.values, b.sparse.values)
    same_teacher = [src._chunk(0, 0).probs for src in (test, val)]  # one train chunk, scored by each teacher
    np.testing.assert_array_equal(*same_teacher)
    assert val.optimal_metrics()["optimal_auc"] != test.optimal_metrics()["optimal_auc"]
