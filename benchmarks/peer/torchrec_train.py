"""Train our model with TorchRec's DistributedModelParallel as the embedding stage: the peer baseline.

    torchrun ... -m benchmarks.peer.torchrec_train --config C [--set k=v ...] --sharding S
        [--qcomms fp32|fp16|bf16] [--pipeline] --out DIR

One rank of a torchrun world (LOCAL_WORLD_SIZE = ranks per host). Everything but the embedding
stage is dmt's: the config, the synthetic data (each rank reads the same batches as in `dmt train`),
the model on the same seed (TorchRecModel: TorchRec's EmbeddingBagCollection, then our Tower
Modules and head), the dense optimizer. The tables are sharded by TorchRec (`S`: table_wise,
table_row_wise or row_wise; table-wise on our flat plan's placement, table-row-wise on the hosts of
those owners) with row-wise Adagrad (or SGD, as configured) fused into fbgemm's CPU kernel; the
dense part is data-parallel through TorchRec's DDP wrapper. `--qcomms` sends the pooled embeddings
and their gradients at fp16 or bf16 (TorchRec's quantized communication; on gloo TorchRec turns
bf16 into fp16 itself); `--pipeline` trains through TorchRec's TrainPipelineSparseDist (the next
batch's input distribution in flight while a batch trains). Steps are timed as `dmt train` times
them, and rank 0 writes DIR/summary.json with the same throughput keys (`examples_per_s`,
`step_ms`, `step_breakdown_ms`) and evaluation metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.streamable import Pipelineable

from dmt.config import Config, load_config
from dmt.data import make_source
from dmt.distributed.launch import run_rank
from dmt.distributed.plan import plan
from dmt.distributed.topology import Topology
from dmt.errors import UserError
from dmt.interop.torchrec import SHARDINGS, TorchRecModel, shard, to_kjt
from dmt.models.build import build_model
from dmt.timing import PhaseTimer
from dmt.train.metrics import click_metrics
from dmt.train.optim import dense_optimizer
from dmt.train.summary import step_stats


class TrainBatch(Pipelineable):
    """A batch as TorchRec's train pipeline wants it (a torchrec.streamable.Pipelineable):
    dense [B, num_dense], sparse KeyedJaggedTensor, labels [B]."""

    def __init__(self, dense: torch.Tensor, sparse, labels: torch.Tensor) -> None:
        self.dense, self.sparse, self.labels = dense, sparse, labels

    def to(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        return TrainBatch(self.dense.to(device), self.sparse.to(device), self.labels.to(device))

    def record_stream(self, stream) -> None:  # noqa: ANN001 - CPU: no streams
        return None


class WithLoss(torch.nn.Module):
    """batch -> (local mean BCE loss, (that loss and the logits [B], detached)): the model as TorchRec's
    pipelines call it (a pipeline's `progress` returns the second part)."""

    def __init__(self, trec: TorchRecModel) -> None:
        super().__init__()
        self.trec = trec

    def forward(self, batch: TrainBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits = self.trec(batch.dense, batch.sparse)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach())


def build(cfg: Config, topo: Topology, sharding: str, qcomms: str = "fp32") -> tuple:
    """-> (source, TorchRecModel, its DMP (of WithLoss(TorchRecModel)), dense optimizer). Same seed
    and model as `dmt train`."""
    if cfg.train.device != "cpu":
        raise UserError("the TorchRec peer baseline runs on CPU (gloo) only")
    source = make_source(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, source.features, source.num_dense)
    owner = plan(model, topo.layout, "flat").table_owner
    trec = TorchRecModel(model)
    lr, opt = cfg.train.embedding_lr, cfg.train.embedding_optimizer
    scale = cfg.dist.fp16_grad_scale if qcomms != "fp32" else None
    dmp = shard(
        trec,
        sharding,
        owner,
        topo.layout.ranks_per_host,
        lr,
        optimizer=opt,
        qcomms=qcomms,
        fp16_grad_scale=scale,
        root=WithLoss(trec),
        prefix="trec.",
    )
    return source, trec, dmp, dense_optimizer(trec.dense_parameters(), cfg.train)


@torch.no_grad()
def evaluate(source, dmp: torch.nn.Module, batch_size: int, world: int, rank: int) -> dict:
    """Click metrics over the whole evaluation stream (every rank reads its share, all must read
    as many batches: DMP's forward is collective)."""
    dmp.eval()
    batches = list(source.eval_batches(batch_size, rank, world))
    counts = [None] * world
    dist.all_gather_object(counts, len(batches))
    if len(set(counts)) != 1:
        raise UserError(f"evaluation batches per rank differ ({counts}): make eval_samples a multiple of W x B")
    labels, probs = [], []
    for b in batches:
        labels.append(b.labels)
        probs.append(torch.sigmoid(dmp(TrainBatch(b.dense, to_kjt(b.sparse), b.labels))[1][1]))
    mine = (torch.cat(labels).numpy(), torch.cat(probs).numpy())
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    y, p = np.concatenate([e[0] for e in everyone]), np.concatenate([e[1] for e in everyone])
    return {**click_metrics(y, p), "eval_samples": int(y.size)}


def train(cfg: Config, topo: Topology, sharding: str, out: str, qcomms: str = "fp32", pipeline: bool = False) -> dict:
    """Rank body: cfg.train.steps steps on this rank's batches [B] -> summary (written by rank 0)."""
    source, trec, dmp, dense_opt = build(cfg, topo, sharding, qcomms)
    world, rank, steps, bs = topo.layout.world, topo.rank, cfg.train.steps, cfg.train.batch_size
    stream = (TrainBatch(b.dense, to_kjt(b.sparse), b.labels) for b in source.train_batches(bs, rank, world))
    timer, step_s, phases_s, losses = PhaseTimer(), [], [], []
    pipe = None
    if pipeline:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        pipe = TrainPipelineSparseDist(dmp, dense_opt, torch.device("cpu"))
        batches = (b for _, b in zip(range(steps), stream, strict=False))
    loop_start = time.perf_counter()
    for _ in range(steps):  # timed as dmt.train.loop.train times its steps
        t0 = time.perf_counter()
        timer.reset()
        if pipe is not None:  # data, forward, backward and the dense step in one call
            with timer("pipeline"):
                loss, _ = pipe.progress(batches)
        else:
            with timer("data"):
                batch = next(stream)
            with timer("forward"):
                loss, _ = dmp(batch)  # [B] logits inside
            dense_opt.zero_grad(set_to_none=True)
            with timer("backward"):  # local mean loss: DDP and TorchRec average over ranks; tables step here
                loss.backward()
            with timer("optimizer"):
                dense_opt.step()
        losses.append(float(loss.detach()))
        step_s.append(time.perf_counter() - t0)
        phases_s.append(dict(timer.totals))
    train_s = time.perf_counter() - loop_start
    if pipe is not None:
        dmp = pipe.detach()
    quality = evaluate(source, dmp, cfg.train.eval_batch_size, world, rank)
    optimal = source.optimal_metrics() or {}
    window = phases_s[1:] or phases_s
    summary = {
        **quality,
        "optimal_auc": optimal.get("optimal_auc"),
        "optimal_logloss": optimal.get("optimal_logloss"),
        "examples_per_s": steps * bs * world / train_s if steps else 0.0,
        "step_ms": step_stats(step_s) if step_s else None,
        "step_breakdown_ms": {k: 1e3 * float(np.mean([p.get(k, 0.0) for p in window])) for k in sorted(window[0])},
        "train_logloss_last": float(np.mean(losses[-cfg.train.log_every :])) if losses else None,
        "world": {"hosts": topo.layout.hosts, "ranks_per_host": topo.layout.ranks_per_host},
        "mode": f"torchrec_{sharding}",
        "qcomms": qcomms,
        "pipeline": pipeline,
        "model": trec.model.name,
        "towers": None if trec.model.is_flat else trec.model.towers,
        "steps": steps,
        "seed": cfg.train.seed,
    }
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--sharding", choices=SHARDINGS, required=True)
    p.add_argument("--steps", type=int, default=0, help="shorthand for --set train.steps=N")
    p.add_argument("--qcomms", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--pipeline", action="store_true", help="TorchRec's TrainPipelineSparseDist")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    overrides = args.set + ([f"train.steps={args.steps}"] if args.steps else [])
    try:
        cfg = load_config(args.config, overrides)
    except UserError as e:
        raise SystemExit(f"torchrec_train: error: {e}") from None
    run_rank(train, cfg, None, args.sharding, args.out, args.qcomms, args.pipeline)


if __name__ == "__main__":
    main()
