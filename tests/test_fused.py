"""The FBGEMM backend (one table-batched kernel, optimizer fused into the backward) trains to the
same parameters as the PyTorch backend, one device and sharded; checkpoints carry its state."""

from __future__ import annotations

import pytest
import torch

from dmt.config import load_config
from dmt.errors import UserError

from .dist_helpers import run_ranks, small_config

pytest.importorskip("fbgemm_gpu")

TOLERANCE = 1e-5
DLRM = "dmt/configs/synthetic_dmt_dlrm.toml"  # four towers, multi-hot features, two shared tables


def _trained(backend: str, optimizer: str, steps: int = 3) -> tuple[dict, list[float]]:
    from dmt.train.loop import build, train_step

    cfg = load_config(
        DLRM,
        [
            "train.batch_size=64",
            "data.synthetic.eval_samples=512",
            f"model.embedding_backend={backend}",
            f"train.embedding_optimizer={optimizer}",
        ],
    )
    t = build(cfg)
    stream = t.source.train_batches(cfg.train.batch_size)
    losses = [float(train_step(t, next(stream))[0]) for _ in range(steps)]
    return {k: v.detach().clone() for k, v in t.model.module.state_dict().items()}, losses


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])
def test_fbgemm_trains_to_the_torch_parameters(optimizer):
    reference, ref_losses = _trained("torch", optimizer)
    fused, losses = _trained("fbgemm", optimizer)
    assert fused.keys() == reference.keys()
    assert any(k.startswith("embeddings.tables.") for k in fused)
    worst = max(float((fused[k] - reference[k]).abs().max()) for k in reference)
    assert worst <= TOLERANCE, worst
    assert losses == pytest.approx(ref_losses, abs=1e-6)
    start, _ = _trained("torch", optimizer, steps=0)
    assert any(not torch.equal(start[k], fused[k]) for k in start if k.startswith("embeddings."))  # it trained


def test_fbgemm_state_round_trips_through_a_checkpoint(tmp_path):
    """The Adagrad sums live in the kernel; a checkpoint saves them as the torch backend names them
    and a resumed run continues exactly where the first one stopped."""
    from dmt.train.loop import train

    common = [
        "train.batch_size=32",
        "data.synthetic.eval_samples=512",
        "model.embedding_backend=fbgemm",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    straight = train(load_config(DLRM, [*common, "train.steps=6"]), tmp_path / "straight")
    train(load_config(DLRM, [*common, "train.steps=3"]), tmp_path / "resumed")
    resumed = train(load_config(DLRM, [*common, "train.steps=6"]), tmp_path / "resumed", resume=True)
    assert resumed["auc"] == pytest.approx(straight["auc"], abs=1e-6)
    state = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state"]
    sums = [k for k in state if k.startswith("optim/embeddings.tables.") and k.endswith("/sum")]
    assert sums and all(state[k].dim() == 1 and float(state[k].max()) > 0 for k in sums)


def test_fbgemm_needs_widths_in_multiples_of_four():
    from dmt.train.loop import build

    cfg = load_config("dmt/configs/synthetic_dcn.toml", ["model.embedding_backend=fbgemm", "model.embedding_dim=6"])
    with pytest.raises(UserError, match="multiples of 4; tables"):
        build(cfg)


def _verify_fused(cfg, topo) -> dict:
    from dmt.verification import verify_rank

    runs = {
        "flat": ["dist.mode=flat"],
        "sptt": ["dist.mode=sptt"],
        # shards are tables of their own to the kernel: row shards, and column shards with fused SGD
        "flat row": ["dist.mode=flat", 'model.table_sharding={"*"="row"}'],
        "flat column": ["dist.mode=flat", 'model.table_sharding={"*"="column"}', "train.embedding_optimizer=sgd"],
    }
    return {
        name: verify_rank(small_config(DLRM, *overrides, "model.embedding_backend=fbgemm"), topo, 3)
        for name, overrides in runs.items()
    }


def test_sharded_fbgemm_equals_one_device():
    """Each rank's kernel batches the tables and shards it holds (each a table of its own to the kernel)."""
    results = run_ranks(2, 1, _verify_fused, small_config())[0]
    assert all(max(d.values()) <= TOLERANCE for d in results.values()), results
