"""Evaluation of a (sharded) model on the held-out stream: AUC, log loss, NE.

Every rank scores its share of the evaluation set; ranks with fewer batches join the remaining
collectives with empty batches, so that every forward pass of the sharded model has all members.
"""

from __future__ import annotations

import numpy as np
import torch

from dmt.errors import UserError
from dmt.train.metrics import click_metrics


@torch.no_grad()
def predict(t, batch_size: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """t: Trainee. -> (labels [n], probabilities [n]) over the whole evaluation stream (every rank gets all)."""
    t.model.eval()
    batches = list(t.source.eval_batches(batch_size, t.rank, t.world))
    if not batches:
        raise UserError("a rank got no evaluation data: raise the evaluation set size")
    empty = batches[0].slice_samples(0, 0)
    batches += [empty] * (t.topo.max_over_ranks(len(batches)) - len(batches))
    labels, probs = [], []
    for batch in batches:
        batch = batch.to(device)
        labels.append(batch.labels.cpu())
        probs.append(torch.sigmoid(t.model(batch.dense, batch.sparse)).cpu())
    t.model.train()
    everyone = t.topo.all_gather_object((torch.cat(labels).numpy(), torch.cat(probs).numpy()))
    return np.concatenate([e[0] for e in everyone]), np.concatenate([e[1] for e in everyone])


def evaluate(t, batch_size: int, device: str = "cpu") -> dict:
    labels, probs = predict(t, batch_size, device)
    return {**click_metrics(labels, probs), "eval_samples": int(labels.size)}
