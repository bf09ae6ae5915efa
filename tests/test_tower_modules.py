"""Tower Modules: the ratio asked is the ratio delivered (or refused), the residual modules' shapes,
start and per-sample rows, the default config's unchanged weights, and per-tower ratios under a budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmt.config import ModelConfig, load_config
from dmt.errors import UserError
from dmt.models.build import build_model
from dmt.modules.tower import (
    CrossCompressTower,
    DotCompressTower,
    ResidualCrossTower,
    ResidualDotTower,
    fold_projection,
    output_width,
)
from dmt.partition.budget import allocate, cross_interaction, propose_ratios

from .helpers import random_batch, tiny_features

TOWERS = [["f3", "f0", "f1"], ["f5"], ["f2", "f4"]]


def test_default_settings_build_the_weights_of_before():
    """Sums of |weights| and of the logits of models built on seed 0 by the code before the
    residual Tower Modules (commit 9f34da2): defaults must keep building the same models."""
    feats = tiny_features()
    batch = random_batch(feats, 8, num_dense=3)
    before = {
        "dlrm": (33.399858315708116, 1950.7935897167845, -0.03693033754825592),
        "dcn": (147.5737981760758, 2217.2302683876587, -0.11942398361861706),
    }
    for arch, (tower_sum, all_sum, logit_sum) in before.items():
        torch.manual_seed(0)
        cfg = ModelConfig(
            arch=arch,
            embedding_dim=4,
            bottom_mlp=[4],
            towers=TOWERS,
            tower_compression_ratios=[3.0, 1.0, 2.0],
            tower_hidden=8,
            tower_cross_layers=2,
        )
        m = build_model(cfg, feats, 3)
        with torch.no_grad():
            tm = sum(float(p.double().abs().sum()) for n, p in m.named_parameters() if n.startswith("tower_modules"))
            every = sum(float(p.double().abs().sum()) for p in m.parameters())
            logits = float(m(batch.dense, batch.sparse).double().sum())
        assert (tm, every) == pytest.approx((tower_sum, all_sum), rel=1e-12)
        assert logits == pytest.approx(logit_sum, rel=1e-6)


@pytest.mark.parametrize(
    "n,dim,ratio,granule,width",
    [(4, 16, 4, 16, 16), (6, 16, 3, 16, 32), (6, 16, 1.5, 16, 64), (4, 16, 3.2, 1, 20), (4, 16, 64 / 15, 1, 15)],
)
def test_output_width_is_exact(n, dim, ratio, granule, width):
    assert output_width([dim] * n, ratio, granule) == width


@pytest.mark.parametrize(
    "n,ratio,granule,message",
    [
        (
            6,
            4,
            16,
            "asks a tower of 6 features x 16 (96 floats) for 24 floats, but its Tower Module sends whole "
            "16-float embeddings: nearest ratios 6 (16 floats) or 3 (32 floats)",
        ),
        (4, 8, 16, "for 8 floats, but its Tower Module sends whole 16-float embeddings: nearest ratios 4 (16 floats)"),
        (
            4,
            3,
            1,
            "for 21.3333 floats, but its Tower Module sends whole floats: nearest ratios 3.04762 (21 floats) "
            "or 2.90909 (22 floats)",
        ),
        (1, 32, 1, "asks a tower of 1 features x 16 (16 floats) for 0.5 floats"),
    ],
)
def test_a_ratio_that_cannot_be_delivered_is_refused(n, ratio, granule, message):
    with pytest.raises(UserError, match="compression ratio") as e:
        output_width([16] * n, ratio, granule)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_configs_that_used_to_build_one_model_are_refused():
    """nycflights13's towers of 4: CR 4, 8 and 16 all built one embedding per tower before."""
    feats = tiny_features()
    ok = build_model(ModelConfig(towers=[["f0", "f1", "f2", "f3"], ["f4", "f5"]], compression_ratio=2), feats, 3)
    assert [tm.out_features for tm in ok.tower_modules] == [32, 16]
    for arch in ("dlrm", "dcn"):
        with pytest.raises(UserError, match="compression ratio 4 asks a tower of 2 features"):
            build_model(
                ModelConfig(
                    arch=arch,
                    towers=[["f0", "f1", "f2", "f3"], ["f4", "f5"]],
                    compression_ratio=4,
                    embedding_dim=1,
                    bottom_mlp=[1],
                ),
                feats,
                3,
            )
    with pytest.raises(UserError, match="nearest ratios 4 \\(16 floats\\)"):
        build_model(ModelConfig(towers=[["f0", "f1", "f2", "f3"], ["f4", "f5"]], compression_ratio=8), feats, 3)


def _per_sample(tm: torch.nn.Module, width: int) -> None:
    x = torch.randn(12, width, generator=torch.Generator().manual_seed(3))
    whole = tm(x)
    parts = torch.cat([tm(x[:5]), tm(x[5:6]), tm(x[6:])])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention,norm", [(0, False), (1, False), (2, True)])
def test_residual_dot_tower_shapes_start_and_rows(attention, norm):
    torch.manual_seed(0)
    tm = ResidualDotTower(6, 4, 3.0, [16, 8], attention, norm)
    assert (tm.in_features, tm.out_features, tm.num_outputs) == (24, 8, 2)
    x = torch.randn(5, 6, 4)
    # zero-initialised last layers: the tower starts as the mean of two chunks of three embeddings
    out = tm(x.reshape(5, -1)).view(5, 2, 4)
    torch.testing.assert_close(out, torch.stack([x[:, :3].mean(1), x[:, 3:].mean(1)], 1))
    for p in tm.parameters():  # any weights: rows depend on their own sample only
        torch.nn.init.normal_(p, std=0.3)
    _per_sample(tm, 24)
    with pytest.raises(UserError, match="nearest ratios 6 \\(4 floats\\) or 3 \\(8 floats\\)"):
        ResidualDotTower(6, 4, 4.0, [16], 0, False)


def test_fold_projection_averages_every_kth_input():
    assert torch.equal(fold_projection(4, 4), torch.eye(4))
    w = fold_projection(2, 6)
    torch.testing.assert_close(w, torch.tensor([[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]]) / 3.0)
    w = fold_projection(5, 12)  # rows of 3, 3 and 2 inputs: disjoint supports, each row sums to 1
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    assert torch.count_nonzero(w @ w.T - torch.diag(torch.diag(w @ w.T))) == 0


@pytest.mark.parametrize(
    "mlp,norm,rank,init,dots",
    [([], False, 0, "fold", None), ([8], True, 2, "fold", 4), ([8, 8], False, 0, "default", None)],
)
def test_residual_cross_tower_shapes_start_and_rows(mlp, norm, rank, init, dots):
    torch.manual_seed(0)
    tm = ResidualCrossTower(12, 5, 2, rank, mlp, norm, init, dots)
    assert (tm.in_features, tm.out_features) == (12, 5)
    if dots:  # the MLP reads the 12 inputs and the 3 dots of the tower's three 4-wide embeddings
        assert tm.mlp[0].in_features == 15
    x = torch.randn(7, 12)
    if init == "fold":  # the MLP's last layer starts at zero: out = fold(cross(x))
        torch.testing.assert_close(tm(x), tm.cross(x) @ fold_projection(5, 12).T)
    for p in tm.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _per_sample(tm, 12)


def test_residual_cross_tower_with_no_cross_layers_starts_as_the_identity_at_ratio_one():
    tm = ResidualCrossTower(8, 8, 0, 0, [4], False, "fold")
    x = torch.randn(3, 8)
    torch.testing.assert_close(tm(x), x)
    with pytest.raises(UserError, match="tower_projection_init 'eye'; allowed: fold, default"):
        ResidualCrossTower(8, 8, 0, 0, [4], False, "eye")


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_config_selects_the_residual_modules(arch):
    feats = tiny_features()
    batch = random_batch(feats, 8, num_dense=3)
    cfg = ModelConfig(
        arch=arch,
        embedding_dim=4,
        bottom_mlp=[4],
        towers=TOWERS,
        tower_compression_ratios=[1.5, 1.0, 2.0],
        tower_module="residual",
        tower_mlp=[8],
        tower_attention_layers=1,
        tower_norm=True,
        tower_cross_rank=2,
        tower_dots=True,
    )
    model = build_model(cfg, feats, 3)
    kind = ResidualDotTower if arch == "dlrm" else ResidualCrossTower
    assert all(isinstance(tm, kind) for tm in model.tower_modules)
    assert [tm.out_features for tm in model.tower_modules] == [8, 4, 4]
    assert model(batch.dense, batch.sparse).shape == (8,)
    defaults = build_model(ModelConfig(arch=arch, embedding_dim=4, bottom_mlp=[4], towers=TOWERS), feats, 3)
    assert all(
        isinstance(tm, DotCompressTower if arch == "dlrm" else CrossCompressTower) for tm in defaults.tower_modules
    )


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("tower_mlp", "[0]", "model.tower_hidden and model.tower_mlp widths must be > 0"),
        ("tower_attention_layers", "-1", "model.tower_attention_layers must be >= 0, got -1"),
        ("tower_module", '"deep"', "config key 'model.tower_module' has bad value 'deep'"),
    ],
)
def test_bad_tower_settings_are_user_errors(key, value, message):
    with pytest.raises(UserError, match=message):
        load_config("dmt/configs/synthetic_dmt_dcn.toml", [f"model.{key}={value}"])


# ---- per-tower ratios under a byte budget ----------------------------------------------------------


def test_cross_interaction_sums_each_towers_pairs_with_the_rest():
    s = np.array([[0, 1, 2, 0], [1, 0, 0, 3], [2, 0, 0, 4], [0, 3, 4, 0]], dtype=float)
    got = cross_interaction(s, ["a", "b", "c", "d"], [["a", "b"], ["c"], ["d"]])
    assert got.tolist() == [2 + 3, 2 + 4, 3 + 4]


def test_allocate_spends_every_unit_within_the_caps():
    assert allocate(np.array([0.5, 0.3, 0.2]), 10, np.array([10, 10, 10])).tolist() == [5, 3, 2]
    assert allocate(np.array([0.9, 0.05, 0.05]), 10, np.array([4, 10, 10])).tolist() == [4, 3, 3]
    assert allocate(np.array([1.0, 0.0, 0.0]), 6, np.array([8, 8, 8])).tolist() == [4, 1, 1]
    with pytest.raises(UserError, match="a budget of 2 units cannot give each of 3 towers one"):
        allocate(np.ones(3), 2, np.array([4, 4, 4]))


def test_propose_ratios_spends_the_uniform_budget_where_towers_interact_across():
    names = ["a", "b", "c", "d", "e", "f"]
    towers = [["a", "b", "c"], ["d", "e", "f"]]
    s = np.zeros((6, 6))
    s[0, 3] = s[3, 0] = 1.0  # a-d: the only cross pair; both towers equal
    s[4, 5] = s[5, 4] = 1.0  # e-f: inside tower 1
    p = propose_ratios(towers, names, s, dim=4, budget_ratio=2, granule=1, mix=0.5)
    assert p["budget_floats"] == 12 and p["tower_widths"] == [6, 6] and p["compression_ratios"] == [2.0, 2.0]
    uneven = [["a", "b"], ["c", "d", "e", "f"]]  # cross mass: a-d 1 for both towers
    p = propose_ratios(uneven, names, s, dim=4, budget_ratio=2, granule=1, mix=0.0)
    assert p["tower_widths"] == [6, 6] and p["compression_ratios"] == [8 / 6, 16 / 6]
    p = propose_ratios(uneven, names, s, dim=4, budget_ratio=2, granule=1, mix=1.0)
    assert p["tower_widths"] == [4, 8] and p["compression_ratios"] == [2.0, 2.0]
    p = propose_ratios(uneven, names, s, dim=4, budget_ratio=3, granule=4, mix=1.0)  # 8 floats: 2 embeddings
    assert p["tower_widths"] == [4, 4] and p["spent_floats"] == 8 and p["compression_ratios"] == [2.0, 4.0]
    for tower, ratio, width in zip(uneven, p["compression_ratios"], p["tower_widths"], strict=True):
        assert output_width([4] * len(tower), ratio, 4) == width  # the Tower Module delivers the proposal
