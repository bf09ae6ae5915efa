"""Property-based robustness: random configs give a clear error or a valid run, never a traceback."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dmt.config import load_config
from dmt.errors import UserError
from dmt.train.loop import train

VALUES = {
    "model.arch": st.sampled_from(['"dlrm"', '"dcn"', '"mlp"', "3"]),
    "model.embedding_dim": st.sampled_from(["4", "8", "0", "-2", '"x"']),
    "model.bottom_mlp": st.sampled_from(["[]", "[8]", "[16, 4]", "[0]", "[4]"]),
    "model.top_mlp": st.sampled_from(["[]", "[8]", "[-1]"]),
    "model.num_towers": st.sampled_from(["0", "1", "3", "24", "25", "-1"]),
    "model.tower_module": st.sampled_from(['"identity"', '"compress"', '"other"']),
    "model.compression_ratio": st.sampled_from(["1", "2.5", "4", "0.5", "100"]),
    "model.cross_layers": st.sampled_from(["0", "1", "3", "-1"]),
    "model.cross_rank": st.sampled_from(["0", "2", "-3"]),
    "model.structure": st.sampled_from(['"stacked"', '"parallel"', '"both"']),
    "train.batch_size": st.sampled_from(["1", "7", "32", "0"]),
    "train.embedding_optimizer": st.sampled_from(['"sgd"', '"rowwise_adagrad"', '"lamb"']),
    "train.dense_optimizer": st.sampled_from(['"adam"', '"adagrad"']),
    "train.dense_lr": st.sampled_from(["0.01", "0", "1e-3"]),
    "data.num_dense": st.sampled_from(["0", "1", "13", "-1"]),
    "data.synthetic.group_sizes": st.sampled_from(["[1, 2]", "[3, 3]", "[]", "[0, 2]"]),
    "data.synthetic.group_pooling": st.sampled_from(["[1.0, 2.0]", "[1.0]", "[1.0, 40.0]"]),
    "data.synthetic.cardinalities": st.sampled_from(["[10]", "[2, 50]", "[1]"]),
    "data.synthetic.shared_tables": st.sampled_from(["0", "1", "5"]),
    "data.synthetic.max_pooling": st.sampled_from(["1", "3", "12"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from(sorted(VALUES)), st.none(), min_size=1, max_size=7).flatmap(
        lambda keys: st.fixed_dictionaries({k: VALUES[k] for k in keys})
    )
)
def test_random_configs_error_clearly_or_train(tmp_path_factory, overrides):
    items = [f"{k}={v}" for k, v in overrides.items()]
    base = [
        "train.steps=2",
        "train.progress=false",
        "train.tensorboard=false",
        "data.synthetic.eval_samples=512",
        "train.eval_batch_size=256",
    ]
    try:
        cfg = load_config("dmt/configs/synthetic_dlrm.toml", base + items)
        summary = train(cfg, tmp_path_factory.mktemp("run"))
    except UserError as e:
        message = str(e)
        assert message and "\n" not in message, message
        event("clear error")
        return
    event("valid run")
    assert math.isfinite(summary["logloss"])
    assert summary["steps"] == 2


@pytest.mark.parametrize("junk", [b"", b"\x00\x01garbage", b"PK\x03\x04 not a zip"])
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, junk):
    from dmt.cli import main

    (tmp_path / "model.pt").write_bytes(junk)
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2


@pytest.mark.parametrize("junk", ["[train]\nsteps = [", "not toml at all = = =", "[model]\narch = 3\n"])
def test_corrupted_config_file_is_a_clear_error(tmp_path, junk):
    bad = tmp_path / "bad.toml"
    bad.write_text(junk)
    with pytest.raises(UserError):
        load_config(bad)
