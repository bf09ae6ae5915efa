"""Evaluation of a (sharded) model on the held-out stream: AUC, log loss, NE.

Every rank scores its share of the evaluation set and adds it to binned metrics on its device
(dmt/train/metrics.py); one all-reduce at the end gives every rank the metrics of the whole set,
and no rank ever holds all predictions. Ranks with fewer batches join the remaining forward
passes with empty batches, so that every collective of the sharded model has all its members.
"""

from __future__ import annotations

import torch

from dmt.errors import UserError
from dmt.train.metrics import StreamingClickMetrics


@torch.no_grad()
def evaluate(t, batch_size: int, device: str = "cpu") -> dict:
    """t: Trainee. -> auc, auc_error_bound, logloss, ne, eval_samples over the whole evaluation stream."""
    t.model.eval()
    batches = list(t.source.eval_batches(batch_size, t.rank, t.world))
    if not batches:
        raise UserError("a rank got no evaluation data: raise the evaluation set size")
    empty = batches[0].slice_samples(0, 0)
    batches += [empty] * (t.topo.max_over_ranks(len(batches)) - len(batches))
    metrics = StreamingClickMetrics(torch.device(device))
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        metrics.update(batch.labels, torch.sigmoid(t.model(batch.dense, batch.sparse)))
    t.model.train()
    return metrics.compute(t.topo.world_group)
