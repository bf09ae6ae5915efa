"""What both examples do with their model, on 2 hosts x 2 ranks under torchrun:

1. prove the SPTT-sharded model equal to its one-device self (dmt.verify, 3 steps)
2. train it sharded with a plain loop: forward, loss, loss.backward(), optimizer steps
3. evaluate on held-out batches and write a report (rank 0)

torchrun --nproc-per-node 4 examples/fm_attention.py --ranks-per-host 2 --out report.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from clicks import global_batches
from sklearn.metrics import roc_auc_score

import dmt


def optimizers(model) -> list[torch.optim.Optimizer]:
    """Row-wise Adagrad on the tables (sparse gradients), Adam on everything dense."""
    return [
        dmt.RowWiseAdagrad(model.embedding_parameters(), lr=0.05),
        torch.optim.Adam(model.dense_parameters(), lr=3e-3),
    ]


def run(make_model: Callable[[], dmt.MultiTowerModel], features: list[dmt.FeatureSpec], num_dense: int) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--out", help="JSON report (rank 0)")
    args = p.parse_args()

    dist.init_process_group("gloo")
    topo = dmt.Topology.from_env(args.ranks_per_host)
    world, rank, bs = topo.layout.world, topo.rank, args.batch_size

    # 1. sharded == one device, on the same global batches
    diffs = dmt.verify(make_model, topo, global_batches(features, num_dense, world * bs), optimizers, mode="sptt")

    # 2. train: every rank builds the same model (same seed), tables only where they live
    torch.manual_seed(0)
    with dmt.deferred_tables():
        model = make_model()
    sharded = dmt.shard(model, topo, "sptt")
    opts = optimizers(sharded)
    losses = []
    for step, batch in enumerate(global_batches(features, num_dense, world * bs, stream=1)):
        if step == args.steps:
            break
        mine = batch.slice_samples(rank * bs, (rank + 1) * bs)
        loss = F.binary_cross_entropy_with_logits(sharded(mine.dense, mine.sparse), mine.labels)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(loss.item())

    # 3. held-out batches: each rank scores its slice; rank 0 gathers labels and probabilities
    sharded.eval()
    held_out = global_batches(features, num_dense, world * bs, stream=2)
    labels, probs = [], []
    with torch.no_grad():
        for _ in range(8):
            mine = next(held_out).slice_samples(rank * bs, (rank + 1) * bs)
            labels.append(mine.labels)
            probs.append(torch.sigmoid(sharded(mine.dense, mine.sparse)))
    everyone = [None] * world
    dist.all_gather_object(everyone, (torch.cat(labels), torch.cat(probs)))
    report = {
        "verify": diffs,
        "world": {"hosts": topo.layout.hosts, "ranks_per_host": topo.layout.ranks_per_host},
        "model": model.name,
        "tower_widths": model.tower_widths,
        "train_loss_first_10": sum(losses[:10]) / 10,
        "train_loss_last_10": sum(losses[-10:]) / 10,
        "held_out_auc": float(roc_auc_score(torch.cat([e[0] for e in everyone]), torch.cat([e[1] for e in everyone]))),
    }
    if rank == 0:
        print(json.dumps(report, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
    dist.destroy_process_group()
    return report
