"""Verification: a sharded model against its one-device self on the same global batches.

Every rank builds the one-device reference and the model to shard from the same seed (so the
same initial weights), steps the reference on the whole global batch and the sharded model on
its slice, each with its own optimizers and a plain `loss.backward()`, and compares what it holds:
its slice of the outputs, the gradients and, after the optimizer step, the parameters (of a
table held as a shard: the block of the one-device table it holds). The largest differences are
reduced (max) over ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dmt.config import Config
from dmt.distributed.plan import ShardingPlan
from dmt.distributed.sharded import shard
from dmt.distributed.topology import Layout, Topology
from dmt.distributed.wire import WireOptions
from dmt.errors import UserError
from dmt.guard import allowed_sync
from dmt.models.base import MultiTowerModel
from dmt.modules.embedding import deferred_tables
from dmt.sparse import Batch


def _dense(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.to_dense() if t.is_sparse else t


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    a, b = _dense(a), _dense(b)
    if a is None and b is None:
        return 0.0
    if a is None or b is None:  # one side never got a gradient: compare against zero
        return float((a if a is not None else b).abs().max())
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _block(t: torch.Tensor | None, where: tuple | None, shape: torch.Size) -> torch.Tensor | None:
    """The block of a one-device tensor that a shard of `shape` at offsets `where` holds."""
    if t is None or where is None:
        return t
    t = _dense(t)
    return t[tuple(slice(o, o + n) for o, n in zip(where, shape, strict=True))]


def _step(model, optimizers, batch: Batch) -> torch.Tensor:
    """One plain training step: BCE (mean over the batch), backward, no optimizer step yet. -> logits"""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    logits = model(batch.dense, batch.sparse)
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    return logits.detach()


def verify(
    make_model: Callable[[], MultiTowerModel],
    topology: Topology,
    batches: Iterable[Batch],
    make_optimizers: Callable[[object], list[torch.optim.Optimizer]],
    mode: str = "sptt",
    steps: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    wire: WireOptions | None = None,
    plan_for: Callable[[MultiTowerModel, Layout], ShardingPlan] | None = None,
) -> dict[str, float]:
    """Collective. -> {"outputs", "gradients", "parameters"}: the largest absolute differences
    between the sharded model and the one-device model over `steps` steps, over all ranks.

    make_model: builds the one-device model (called twice, after torch.manual_seed(seed) each time);
    batches: global batches of W * B samples (rank r trains on samples [r * B, (r + 1) * B));
    make_optimizers(model): the optimizers of `model.embedding_parameters()` and
    `model.dense_parameters()` (called on the reference and on the sharded model); wire: the
    sharded model's exchange options (bf16 / fp16 exchanges differ from one device by their rounding);
    plan_for(model, layout): the sharding to verify (default: `dmt.plan` of `mode`).
    """
    torch.manual_seed(seed)
    reference = make_model().to(device)
    torch.manual_seed(seed)
    with deferred_tables():
        to_shard = make_model()
    sharding = plan_for(to_shard, topology.layout) if plan_for is not None else None
    sharded = shard(to_shard, topology, mode, sharding=sharding, wire=wire).to(device)
    diffs = _compare_steps(reference, sharded, make_optimizers, topology, batches, steps, device)
    with allowed_sync("the result"):
        return {"outputs": float(diffs[0]), "gradients": float(diffs[1]), "parameters": float(diffs[2])}


def _compare_steps(
    reference, sharded, make_optimizers, topology: Topology, batches, steps: int, device
) -> torch.Tensor:
    """The steps of `verify`, side by side. -> [3] float64 maxima over all ranks."""
    ref_opts, opts = make_optimizers(reference), make_optimizers(sharded)
    world, rank = topology.layout.world, topology.rank
    ref_params = dict(reference.named_parameters())
    diffs = torch.zeros(3, dtype=torch.float64, device="cpu")  # outputs, gradients, parameters (on the host)
    stream = iter(batches)
    for _ in range(steps):
        batch = next(stream).to(device, non_blocking=True)
        if batch.size % world:
            raise UserError(f"verify needs global batches of a multiple of {world} samples, got {batch.size}")
        bs = batch.size // world
        ref_logits = _step(reference, ref_opts, batch)
        logits = _step(sharded, opts, batch.slice_samples(rank * bs, (rank + 1) * bs))
        held = list(sharded.module.named_parameters())
        where = {name: offsets for name, (offsets, _) in sharded.blocks().items()}  # shards: their blocks
        with allowed_sync("verification reads the differences"):
            diffs[0] = max(diffs[0], _max_diff(logits, ref_logits[rank * bs : (rank + 1) * bs]))
            for name, p in held:
                diffs[1] = max(diffs[1], _max_diff(p.grad, _block(ref_params[name].grad, where.get(name), p.shape)))
        for opt in ref_opts + opts:
            opt.step()
        with allowed_sync("verification reads the differences"):
            for name, p in held:
                diffs[2] = max(
                    diffs[2], _max_diff(p.detach(), _block(ref_params[name].detach(), where.get(name), p.shape))
                )
    if topology.distributed:
        diffs = diffs.to(device, non_blocking=True)  # NCCL reduces device tensors only
        dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    return diffs


def verify_rank(cfg: Config, topo: Topology, steps: int) -> dict[str, float]:
    """`dmt verify` on one rank: the config's model, data and optimizers."""
    from dmt.cost.fit import rank_plan
    from dmt.data import make_source
    from dmt.models.build import build_model
    from dmt.train.optim import make_optimizers

    source = make_source(cfg.data)
    world, bs = topo.layout.world, cfg.train.batch_size
    global_batches = source.train_batches(world * bs)

    def checked(batches):
        for batch in batches:
            if batch.size != world * bs:
                raise UserError(
                    f"dmt verify needs full global batches of {world * bs} samples, the data gave {batch.size} "
                    "(malformed rows were skipped?); verify on clean data"
                )
            yield batch

    return verify(
        lambda: build_model(cfg.model, source.features, source.num_dense),
        topo,
        checked(global_batches),
        lambda m: make_optimizers(m, cfg.train),
        mode=cfg.dist.mode,
        steps=steps,
        seed=cfg.train.seed,
        device=cfg.train.device,
        wire=WireOptions.from_config(cfg.dist),
        plan_for=lambda model, layout: rank_plan(cfg, model, topo),
    )
