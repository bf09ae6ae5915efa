"""Training: one loop for every topology, a world of one included.

    build:       data source, the model (tables deferred), dmt.shard(model, topology), optimizers
    train_step:  logits = model(dense, sparse) on this rank's batch -> BCE loss (local mean)
                 -> loss.backward() (gradient sync hangs on autograd) -> optimizers' step();
                 with train.pipeline the batch arrives with its input exchange done (pipeline.py)
    train:       steps from the start (or the checkpoint), logging, checkpoints; then the final
                 checkpoint, evaluation (evaluate.py) and summary.json (summary.py)

The one-device run is the reference: a sharded run of the same config computes the same
global-batch gradients (see `dmt verify`).
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dmt.config import Config
from dmt.cost.fit import rank_plan
from dmt.data import make_source
from dmt.data.base import DataSource
from dmt.data.loader import prefetch
from dmt.distributed.ids import RoutedIds
from dmt.distributed.sharded import ShardedModel, shard
from dmt.distributed.topology import Topology
from dmt.distributed.wire import WireOptions
from dmt.emulate.faults import kill_if_due
from dmt.models.build import build_model
from dmt.modules.embedding import deferred_tables
from dmt.sparse import Batch
from dmt.timing import PhaseTimer
from dmt.train import checkpoint as ckpt
from dmt.train.evaluate import evaluate
from dmt.train.observe import RunLog
from dmt.train.optim import make_optimizers
from dmt.train.pipeline import PipelinedBatches, training_batches
from dmt.train.resources import peak_rss_bytes
from dmt.train.summary import StepRecorder, summarize


@dataclass
class Trainee:
    """What a rank trains: its sharded model, the data, the optimizers of what it holds."""

    source: DataSource
    model: ShardedModel
    optimizers: list[torch.optim.Optimizer]
    topo: Topology

    @property
    def timer(self) -> PhaseTimer:
        return self.model.timer

    @property
    def world(self) -> int:
        return self.topo.layout.world

    @property
    def rank(self) -> int:
        return self.topo.rank

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def mode(self) -> str:
        return self.model.plan.mode

    @property
    def named(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters this rank holds, by their one-device names."""
        return list(self.model.module.named_parameters())


def build(cfg: Config, topo: Topology | None = None) -> Trainee:
    """Source, model on torch seed train.seed (identical on every rank; each rank creates only its
    own tables), its sharding over `topo` (default: a world of one), optimizers."""
    topo = topo if topo is not None else Topology.single()
    source = make_source(cfg.data)
    torch.manual_seed(cfg.train.seed)
    with deferred_tables():
        model = build_model(cfg.model, source.features, source.num_dense)
    if cfg.train.precision == "bf16" and cfg.train.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    wire = WireOptions.from_config(cfg.dist)
    sharding = rank_plan(cfg, model, topo)  # model.table_sharding fitted to dist.memory_gb
    sharded = shard(
        model,
        topo,
        cfg.dist.mode,
        sharding=sharding,
        profile=cfg.train.profile,
        precision=cfg.train.precision,
        wire=wire,
    )
    sharded = sharded.to(cfg.train.device)
    return Trainee(source, sharded, make_optimizers(sharded, cfg.train), topo)


def train_step(t: Trainee, batch: Batch, routed: RoutedIds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's batch (`routed`: its input exchange, already done).
    -> (local mean loss, logits [B]), both detached."""
    timer = t.timer
    with timer("forward"):
        logits = t.model(batch.dense, routed if routed is not None else batch.sparse)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    for opt in t.optimizers:
        opt.zero_grad(set_to_none=True)
    with timer("backward"):
        loss.backward()
    with timer("optimizer"):
        for opt in t.optimizers:
            opt.step()
    return loss.detach(), logits.detach()


def train(cfg: Config, out_dir: str | Path, resume: bool = False, topo: Topology | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = build(cfg, topo)
    startup_rss = peak_rss_bytes()  # model built: this rank's tables and shards, nothing trained yet
    start = ckpt.resume(t.model, t.optimizers, t.topo, out) if resume else 0
    steps, bs, device = cfg.train.steps, cfg.train.batch_size, cfg.train.device
    # batches made ahead by a background worker (pinned for a GPU): the step only takes them
    stream = prefetch(t.source.train_batches(bs, t.rank, t.world, start), cfg.data.prefetch, device.startswith("cuda"))
    runlog = RunLog(out, enabled=t.rank == 0, tensorboard=cfg.train.tensorboard)
    recorder = StepRecorder(t, global_batch=bs * t.world)
    recorder.startup_rss = startup_rss
    bar = tqdm(
        range(start, steps),
        desc=f"train {t.model.module.name} ({t.mode})",
        disable=not (cfg.train.progress and t.rank == 0),
        unit="step",
    )
    recorder.start()
    batches = training_batches(t, stream, steps - start, device, cfg.train.pipeline)
    for step in bar:
        kill_if_due(step, t.rank)  # `dmt emulate --fault kill:...` only
        recorder.begin_step()
        with t.timer("data"):
            batch, sparse = next(batches)
        loss, _ = train_step(t, batch, sparse if isinstance(sparse, RoutedIds) else None)
        recorder.end_step(loss)
        if step == start:
            runlog.steps_running()
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
            record = recorder.log_record(step + 1, cfg.train.log_every)
            runlog.record(record)
            bar.set_postfix(loss=f"{record['train_logloss']:.4f}")
        if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < steps:
            saving = time.perf_counter()
            ckpt.save(t.model, t.optimizers, t.topo, cfg, out, step + 1)
            recorder.checkpointed(time.perf_counter() - saving)
    recorder.stop()
    if isinstance(batches, PipelinedBatches):
        batches.close()  # its thread has routed its last batch
    stream.close()  # stops the background loader; the source reports what it skipped
    bar.close()

    ckpt.save(t.model, t.optimizers, t.topo, cfg, out, steps)
    quality = evaluate(t, cfg.train.eval_batch_size, device)
    summary = summarize(t, cfg, recorder, quality, start)  # the run's last collective
    if t.rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    runlog.close(summary)
    topo = t.topo
    del t, recorder  # the export reads the checkpoint back chunk by chunk: this rank's copy goes first
    gc.collect()  # (the gradient hooks hold the model in reference cycles)
    ckpt.export(topo, out)
    return summary
