"""Models: shapes, and DMT with CR = 1 and identity Tower Modules equal to the flat model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmt.config import ModelConfig
from dmt.errors import UserError
from dmt.models.build import build_model
from dmt.modules.tower import DotCompressTower

from .helpers import random_batch, tiny_features

TOWERS = [["f3", "f0", "f1"], ["f5"], ["f2", "f4"]]


def _grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = (g.to_dense() if g.is_sparse else g).clone()
    return out


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("dlrm", {}),
        ("dcn", {"structure": "stacked", "bottom_mlp": []}),
        ("dcn", {"structure": "parallel", "cross_rank": 3, "bottom_mlp": [8]}),
        ("dcn", {"structure": "stacked", "deep_mlp": [], "bottom_mlp": []}),
    ],
)
def test_identity_towers_equal_flat_model(arch, extra):
    feats = tiny_features()
    batch = random_batch(feats, 32, num_dense=5, weights=True)
    base = {"arch": arch, "embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [16], "deep_mlp": [16], **extra}
    torch.manual_seed(0)
    flat = build_model(ModelConfig(**base), feats, 5)
    torch.manual_seed(1)
    dmt = build_model(ModelConfig(**base, towers=TOWERS, tower_module="identity"), feats, 5)
    assert flat.is_flat and not dmt.is_flat and dmt.name == f"dmt_{arch}"
    dmt.load_flat(flat)

    outs = []
    for model in (flat, dmt):
        model.zero_grad()
        logits = model(batch.dense, batch.sparse)
        F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
        outs.append(logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    g_flat, g_dmt = _grads(flat), _grads(dmt)
    # Embeddings and everything before the head see identical gradients.
    for name in g_flat:
        if name.startswith(("embeddings", "head.bottom")):
            torch.testing.assert_close(g_flat[name], g_dmt[name], rtol=0, atol=1e-6)
    # The head's gradients are the flat ones, permuted the same way as its weights.
    dmt_from_grads = build_model(ModelConfig(**base, towers=TOWERS, tower_module="identity"), feats, 5)
    flat_grads_as_model = build_model(ModelConfig(**base), feats, 5)
    flat_grads_as_model.load_state_dict({k: g_flat[k] for k in flat.state_dict()})
    dmt_from_grads.load_flat(flat_grads_as_model)
    # (A permutation of inputs is linear, so gradients transform exactly like the weights.)
    for name, g in dmt_from_grads.state_dict().items():
        torch.testing.assert_close(g, g_dmt[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "arch,ratios,widths",
    [
        ("dlrm", [1.0, 1.0, 1.0], [12, 4, 8]),
        ("dlrm", [3.0, 1.0, 2.0], [4, 4, 4]),
        ("dlrm", [1.5, 1.0, 1.0], [8, 4, 8]),
        ("dcn", [1.0, 2.0, 4.0], [12, 2, 2]),
        ("dcn", [4.0, 4.0, 8.0], [3, 1, 1]),
    ],
)
def test_compressing_towers_deliver_the_ratio_asked(arch, ratios, widths):
    """Tower sizes 3, 1, 2 at d = 4: each Tower Module outputs n_t * d / CR_t floats exactly."""
    feats = tiny_features()
    batch = random_batch(feats, 8, num_dense=3)
    cfg = ModelConfig(arch=arch, embedding_dim=4, bottom_mlp=[4], towers=TOWERS, tower_compression_ratios=ratios)
    model = build_model(cfg, feats, 3)
    logits = model(batch.dense, batch.sparse)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    assert [tm.out_features for tm in model.tower_modules] == widths
    for tower, tm, cr in zip(TOWERS, model.tower_modules, ratios, strict=True):
        assert tm.in_features / tm.out_features == cr == len(tower) * 4 / tm.out_features
        if arch == "dlrm":
            assert isinstance(tm, DotCompressTower) and tm.num_outputs == len(tower) / cr


def test_tower_module_starts_as_chunk_mean():
    tm = DotCompressTower(num_features=5, dim=3, compression_ratio=5 / 3, hidden=8)  # 3 outputs
    x = torch.randn(4, 5, 3)
    out = tm(x.reshape(4, -1)).view(4, 3, 3)
    torch.testing.assert_close(out[:, 0], x[:, :2].mean(1))
    torch.testing.assert_close(out[:, 2], x[:, 4])


def test_bad_towers_are_user_errors():
    feats = tiny_features()
    with pytest.raises(UserError, match="unknown features"):
        build_model(ModelConfig(towers=[["f0", "zz"]]), feats, 3)
    with pytest.raises(UserError, match="more than one tower"):
        build_model(ModelConfig(towers=[["f0", "f1", "f2"], ["f2", "f3", "f4", "f5"]]), feats, 3)
    with pytest.raises(UserError, match="in no tower"):
        build_model(ModelConfig(towers=[["f0", "f1"]]), feats, 3)
    with pytest.raises(UserError, match="only one of"):
        build_model(ModelConfig(towers=TOWERS, num_towers=2), feats, 3)


def test_sequential_towers_cut_feature_order():
    feats = tiny_features()
    model = build_model(ModelConfig(num_towers=4, embedding_dim=4, bottom_mlp=[4]), feats, 3)
    assert model.towers == [["f0", "f1"], ["f2", "f3"], ["f4"], ["f5"]]


def test_a_rank_builds_only_its_tables_with_the_one_device_values():
    """Each table is seeded on its own: holding a subset gives the same weights, never the rest."""
    from dmt.modules.embedding import EmbeddingBagCollection, deferred_tables
    from dmt.specs import FeatureSpec

    feats = [FeatureSpec(f"f{i}", f"t{i}", 50 + 10 * i) for i in range(5)]
    torch.manual_seed(7)
    whole = EmbeddingBagCollection.from_features(feats, 4)
    torch.manual_seed(7)
    with deferred_tables():
        part = EmbeddingBagCollection.from_features(feats, 4)
    assert len(part.tables) == 0
    part.hold(["t3", "t1"])
    assert list(part.tables) == ["t1", "t3"]  # declaration order, whatever order was asked
    for t in ("t1", "t3"):
        assert torch.equal(part.tables[t].weight, whole.tables[t].weight)
    assert not torch.equal(whole.tables["t1"].weight[:10], whole.tables["t2"].weight[:10])
    with pytest.raises(ValueError, match="unknown tables"):
        part.hold(["t9"])
