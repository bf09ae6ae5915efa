"""TorchRec interop: converters, and our flat baseline against TorchRec's DistributedModelParallel.

Both sides start from the same weights (one seed), read the same batches and train with SGD at the
same learning rates; only the embedding stage differs (ours: dmt's table-wise flat mode; theirs:
TorchRec's table-wise sharded EmbeddingBagCollection, with exact SGD fused into fbgemm's CPU kernel
or with the dense kernel and torch SGD). Table-row-wise: the tables split by rows over the ranks
of a host, row-wise Adagrad on both sides (fused into fbgemm's kernel on TorchRec's).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dmt.distributed.topology import Topology
from dmt.interop.torchrec import (
    INSTALL_HINT,
    TorchRecModel,
    from_kjt,
    local_shards,
    local_tables,
    shard,
    shard_table_wise,
    table_parameters,
    to_kjt,
)
from dmt.sparse import KeyedJagged
from dmt.train.loop import build, train_step

from .dist_helpers import run_ranks, small_config

pytest.importorskip("torchrec", reason=f"TorchRec is optional; install it with: {INSTALL_HINT}")

TOLERANCE = 1e-5
STEPS = 3
# mean-pooled gradients of a 4 x 32 sample batch are small: a large table lr moves the tables far past TOLERANCE
LR = ["train.embedding_optimizer=sgd", "train.embedding_lr=20", "train.dense_lr=0.5"]


def test_kjt_round_trip_keeps_weights():
    kj = KeyedJagged(
        keys=["a", "b"],
        values=torch.tensor([7, 9, 4, 5, 1, 1, 2, 8]),
        lengths=torch.tensor([2, 0, 1, 1, 3, 1]),
        weights=torch.arange(8, dtype=torch.float32),
    )
    kjt = to_kjt(kj)
    assert kjt.keys() == ["a", "b"] and kjt.stride() == 3
    assert kjt["b"].values().tolist() == [5, 1, 1, 2, 8]
    back = from_kjt(kjt)
    assert back.keys == kj.keys and back.batch_size == 3
    for x, y in ((back.values, kj.values), (back.lengths, kj.lengths), (back.weights, kj.weights)):
        assert torch.equal(x, y)
    assert from_kjt(to_kjt(kj.select(["b"]))).weights.tolist() == [3, 4, 5, 6, 7]


def _kjt_input(cfg, topo: Topology) -> float:
    """Rank body: the sharded model fed a KeyedJaggedTensor -> largest logit difference to KeyedJagged input."""
    t = build(cfg, topo)
    batch = next(t.source.train_batches(cfg.train.batch_size, topo.rank, topo.layout.world))
    with torch.no_grad():
        ours = t.model(batch.dense, batch.sparse)
        theirs = t.model(batch.dense, to_kjt(batch.sparse))
    return float((ours - theirs).abs().max())


def test_models_take_torchrec_keyed_jagged_tensors():
    """The one-device model and the sharded SPTT model (2x2) accept TorchRec's KJT as they accept ours."""
    t = build(small_config("synthetic_dmt_dlrm"), None)
    batch = next(t.source.train_batches(16))
    with torch.no_grad():
        assert torch.equal(t.model.module(batch.dense, to_kjt(batch.sparse)), t.model.module(batch.dense, batch.sparse))
    diffs = run_ranks(2, 2, _kjt_input, small_config("synthetic_dmt_dlrm", "dist.mode=sptt"))
    assert max(diffs.values()) == 0.0


def test_one_device_model_equals_ours():
    """Mean pooling, two shared tables: the unsharded TorchRec stage pools exactly as ours."""
    t = build(small_config("dmt/configs/synthetic_dlrm.toml"), None)
    batch = next(t.source.train_batches(32))
    trec = TorchRecModel(t.model.module)
    assert len(trec.ebc.embedding_bags) < len(t.model.module.feature_names)  # shared tables survive
    torch.testing.assert_close(trec(batch.dense, batch.sparse), t.model(batch.dense, batch.sparse), atol=1e-6, rtol=0)


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _parity(cfg, topo: Topology, steps: int, kernel: str) -> dict[str, float]:
    """Rank body: our flat baseline and TorchRec DMP, stepped side by side on this rank's batches.
    -> the largest differences (and how far our tables moved, to show the steps did something)."""
    world, bs = topo.layout.world, cfg.train.batch_size
    ours = build(cfg, topo)  # flat: tables table-wise over all ranks, SGD on the tables
    ours.optimizers = [
        torch.optim.SGD(ours.model.embedding_parameters(), lr=cfg.train.embedding_lr),
        torch.optim.SGD(ours.model.dense_parameters(), lr=cfg.train.dense_lr),
    ]
    start = {t: bag.weight.detach().clone() for t, bag in ours.model.module.embeddings.tables.items()}
    trec = TorchRecModel(build(cfg, None).model.module)  # the same seed: the same initial weights
    owner, per_host, lr = ours.model.plan.table_owner, topo.layout.ranks_per_host, cfg.train.embedding_lr
    dmp = shard_table_wise(trec, owner, per_host, lr, kernel)
    their_opts = [torch.optim.SGD(trec.dense_parameters(), lr=cfg.train.dense_lr)]
    if kernel == "dense":  # "fused" steps the tables inside backward
        their_opts.append(torch.optim.SGD(table_parameters(dmp), lr=lr))
    assert sorted(local_tables(dmp)) == sorted(start)  # the same placement as ours

    diffs = {"logits": 0.0, "loss": 0.0, "tables": 0.0, "dense": 0.0, "table_change": 0.0}
    stream = ours.source.train_batches(bs, topo.rank, world)
    for _ in range(steps):
        _step_side_by_side(ours, dmp, their_opts, next(stream), diffs)
    theirs = local_tables(dmp)
    for t, bag in ours.model.module.embeddings.tables.items():
        diffs["tables"] = max(diffs["tables"], _max(bag.weight, theirs[t]))
        diffs["table_change"] = max(diffs["table_change"], _max(bag.weight, start[t]))
    diffs["dense"] = _dense_difference(ours, trec)
    return diffs


def _step_side_by_side(ours, dmp, their_opts: list, batch, diffs: dict) -> None:
    """One training step of our model and of TorchRec's on `batch`; the largest logit and loss
    differences so far go into diffs."""
    loss, logits = train_step(ours, batch)  # local mean loss, plain backward, optimizer steps
    their_logits = dmp(batch.dense, to_kjt(batch.sparse))
    their_loss = F.binary_cross_entropy_with_logits(their_logits, batch.labels)
    for opt in their_opts:
        opt.zero_grad(set_to_none=True)
    their_loss.backward()  # global mean gradients: DDP and TorchRec's gradient division
    for opt in their_opts:
        opt.step()
    diffs["logits"] = max(diffs["logits"], _max(logits, their_logits))
    diffs["loss"] = max(diffs["loss"], abs(float(loss) - float(their_loss)))


def _dense_difference(ours, trec) -> float:
    """Largest difference between our dense parameters and TorchRec's copy of the same model."""
    theirs = dict(trec.model.named_parameters())
    return max(
        (_max(p, theirs[n]) for n, p in ours.model.module.named_parameters() if not n.startswith("embeddings.")),
        default=0.0,
    )


@pytest.mark.parametrize("kernel", ["fused", "dense"])
def test_flat_baseline_equals_torchrec_table_wise(kernel):
    """2 hosts x 2 ranks, flat DLRM (mean pooling, shared tables), 3 SGD steps."""
    cfg = small_config("dmt/configs/synthetic_dlrm.toml", *LR)
    results = run_ranks(2, 2, _parity, cfg, STEPS, kernel)
    for rank, diffs in results.items():
        assert diffs["table_change"] > 100 * TOLERANCE, f"rank {rank}: tables barely moved: {diffs}"
        bad = {k: v for k, v in diffs.items() if k != "table_change" and v > TOLERANCE}
        assert not bad, f"rank {rank}: differences above {TOLERANCE}: {diffs}"


def _parity_sharded(cfg, topo: Topology, steps: int, sharding: str) -> dict:
    """Rank body: our flat baseline (row-wise Adagrad) and TorchRec DMP `sharding` with fused row-wise
    Adagrad, side by side. -> largest differences here, and both sides' table pieces for the parent."""
    os.environ["LOCAL_WORLD_SIZE"] = str(topo.layout.ranks_per_host)  # TorchRec's ranks per host
    ours = build(cfg, topo)
    trec = TorchRecModel(build(cfg, None).model.module)
    their_opts = [torch.optim.SGD(trec.dense_parameters(), lr=cfg.train.dense_lr)]
    ours.optimizers[-1] = torch.optim.SGD(ours.model.dense_parameters(), lr=cfg.train.dense_lr)
    owner, per_host = ours.model.plan.table_owner, topo.layout.ranks_per_host
    dmp = shard(trec, sharding, owner, per_host, cfg.train.embedding_lr, optimizer="rowwise_adagrad")
    diffs = {"logits": 0.0, "loss": 0.0, "dense": 0.0}
    stream = ours.source.train_batches(cfg.train.batch_size, topo.rank, topo.layout.world)
    for _ in range(steps):
        _step_side_by_side(ours, dmp, their_opts, next(stream), diffs)
    diffs["dense"] = _dense_difference(ours, trec)
    held = {
        t: bag.weight.detach().clone()
        for t, bag in ours.model.module.embeddings.tables.items()
        if owner[t] == topo.rank
    }
    theirs = {t: [(o, x.detach().clone()) for o, x in pieces] for t, pieces in local_shards(dmp).items()}
    return {"diffs": diffs, "ours": held, "theirs": theirs}


@pytest.mark.parametrize("sharding", ["table_row_wise"])  # row_wise passes too (35 s more)
def test_flat_baseline_equals_torchrec_row_sharded(sharding):
    """2 hosts x 2 ranks, flat DLRM, 3 steps of row-wise Adagrad on the tables (fused into fbgemm's
    CPU kernel on TorchRec's side); tables split by rows within a host (TWRW) or over all ranks."""
    cfg = small_config(
        "dmt/configs/synthetic_dlrm.toml", "train.embedding_optimizer=rowwise_adagrad", "train.dense_lr=0.5"
    )
    results = run_ranks(2, 2, _parity_sharded, cfg, STEPS, sharding)
    ours = {t: w for r in results.values() for t, w in r["ours"].items()}
    pieces = [(t, o, x) for r in results.values() for t, ps in r["theirs"].items() for o, x in ps]
    assert {t for t, _, _ in pieces} == set(ours) and len(pieces) > len(ours)  # split by rows
    table_diff = max(_max(ours[t][row : row + x.shape[0], col : col + x.shape[1]], x) for t, (row, col), x in pieces)
    for rank, r in results.items():
        bad = {k: v for k, v in {**r["diffs"], "tables": table_diff}.items() if v > TOLERANCE}
        assert not bad, f"rank {rank}: differences above {TOLERANCE}: {r['diffs']}, tables {table_diff}"
