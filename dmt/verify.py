"""`dmt verify`: a sharded run against the one-device model on the same global batches.

Every rank also builds the one-device reference (same seed, so the same initial weights) and
steps it on the whole global batch, then compares what it holds: its slice of the outputs, the
gradients and, after the optimizer step, the parameters. The largest differences are reduced
(max) over ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dmt.config import Config
from dmt.distributed.topology import Topology
from dmt.errors import UserError
from dmt.train.loop import build, forward_backward


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


def verify_rank(cfg: Config, topo: Topology, steps: int) -> dict:
    """Collective. -> {"outputs", "gradients", "parameters"} max abs differences, over all ranks."""
    sharded, ref = build(cfg, topo), build(cfg, None)
    world, rank, bs = topo.layout.world, topo.rank, cfg.train.batch_size
    ref_params = dict(ref.model.named_parameters())
    diffs = torch.zeros(3, dtype=torch.float64)  # outputs, gradients, parameters
    stream = ref.source.train_batches(world * bs)  # global batches; rank r's is the r-th slice
    for _ in range(steps):
        batch = next(stream).to(sharded.device)
        if batch.size != world * bs:
            raise UserError(
                f"dmt verify needs full global batches of {world * bs} samples, the data gave {batch.size} "
                "(malformed rows were skipped?); verify on clean data"
            )
        mine = batch.slice_samples(rank * bs, (rank + 1) * bs)
        _, ref_logits = forward_backward(ref, batch)
        _, logits = forward_backward(sharded, mine)
        diffs[0] = max(diffs[0], _max_diff(logits, ref_logits[rank * bs : (rank + 1) * bs]))
        for name, p in sharded.named:
            diffs[1] = max(diffs[1], _max_diff(p.grad, ref_params[name].grad))
        for opt in ref.optimizers + sharded.optimizers:
            opt.step()
        for name, p in sharded.named:
            diffs[2] = max(diffs[2], _max_diff(p.detach(), ref_params[name].detach()))
    diffs = diffs.to(sharded.device)  # NCCL reduces device tensors only
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    diffs = diffs.cpu()
    return {"outputs": float(diffs[0]), "gradients": float(diffs[1]), "parameters": float(diffs[2])}
