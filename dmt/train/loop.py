"""Training and evaluation, on one device or as one rank of a distributed run.

    for step in steps:  this rank's batch -> model (one-device, flat or SPTT) -> BCE loss / W
                        -> backward -> sum dense gradients over sharing ranks -> optimizers
    at the end:         evaluate on the held-out stream, write summary.json and checkpoints

The one-device run is the reference: a distributed run of the same config computes the same
global-batch gradients (see `dmt verify`).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from dmt.config import Config
from dmt.data import make_source
from dmt.data.base import DataSource
from dmt.data.loader import prefetch
from dmt.distributed.comm import union_s
from dmt.distributed.model import DistributedModel
from dmt.distributed.plan import plan_flat, plan_sptt
from dmt.distributed.topology import Topology
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel
from dmt.models.build import build_model
from dmt.sparse import Batch
from dmt.timing import PhaseTimer
from dmt.train import checkpoint as ckpt
from dmt.train.metrics import click_metrics
from dmt.train.observe import RunLog
from dmt.train.optim import dense_optimizer, embedding_optimizer
from dmt.train.resources import link_counters, link_delta, peak_rss_bytes


@dataclass
class Trainee:
    """What a rank trains: the network it calls, the parameters it holds and their optimizers."""

    source: DataSource
    model: MultiTowerModel  # the one-device module (sharded in place when distributed)
    net: torch.nn.Module  # model itself, or its DistributedModel
    named: list[tuple[str, torch.nn.Parameter]]
    optimizers: list[torch.optim.Optimizer]
    topo: Topology | None = None
    _timer: PhaseTimer | None = None

    @property
    def dm(self) -> DistributedModel | None:
        return self.net if isinstance(self.net, DistributedModel) else None

    @property
    def timer(self) -> PhaseTimer:
        if self.dm is not None:
            return self.dm.timer
        if self._timer is None:
            self._timer = PhaseTimer()
        return self._timer

    @property
    def world(self) -> int:
        return self.topo.layout.world if self.topo else 1

    @property
    def rank(self) -> int:
        return self.topo.rank if self.topo else 0

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def mode(self) -> str:
        return self.dm.plan.mode if self.dm else "single"


def build(cfg: Config, topo: Topology | None = None) -> Trainee:
    """Source, model on torch seed train.seed (identical on every rank), its sharding, optimizers."""
    source = make_source(cfg.data)
    torch.manual_seed(cfg.train.seed)
    # a rank of a sharded run creates its own tables only, once the plan says which (DistributedModel)
    model = build_model(cfg.model, source.features, source.num_dense, tables=None if topo is None else ())
    if topo is None:
        net, named = model, list(model.named_parameters())
        emb, dense = list(model.embeddings.parameters()), model.dense_parameters()
    else:
        if cfg.dist.mode == "sptt":
            widths = [tm.out_features for tm in model.tower_modules]
            plan = plan_sptt(source.features, model.towers, model.dim, topo.layout, widths)
        else:
            plan = plan_flat(source.features, model.dim, topo.layout)
        net = DistributedModel(model, plan, topo)
        named = net.held_named_parameters()
        emb, dense = net.embedding_parameters(), net.dense_parameters()
    device = cfg.train.device
    net.to(device)
    optimizers = []
    if emb:  # a rank may own no table (more ranks than tables)
        optimizers.append(embedding_optimizer(emb, cfg.train))
    if dense:
        optimizers.append(dense_optimizer(dense, cfg.train))
    return Trainee(source, model, net, named, optimizers, topo)


def forward_backward(t: Trainee, batch: Batch) -> tuple[float, torch.Tensor]:
    """Gradients of the global-batch mean loss on this rank's parameters. -> (local loss, logits [B])."""
    timer = t.timer
    if t.dm is not None:
        logits = t.net(batch.dense, batch.sparse)  # times its own phases
    else:
        with timer("forward"):
            logits = t.net(batch.dense, batch.sparse)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    for opt in t.optimizers:
        opt.zero_grad(set_to_none=True)
    if t.dm is not None:
        t.dm.backward(loss / t.world)  # times its own phases: backward, grad_sync
    else:
        with timer("backward"):
            loss.backward()
    return float(loss.detach()), logits.detach()


def train_step(t: Trainee, batch: Batch) -> tuple[float, torch.Tensor]:
    """One optimizer step on this rank's batch. -> (local loss, logits [B])."""
    result = forward_backward(t, batch)
    with t.timer("optimizer"):
        for opt in t.optimizers:
            opt.step()
    return result


@torch.no_grad()
def predict(t: Trainee, batch_size: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """-> (labels [n], probabilities [n]) over the whole evaluation stream (every rank gets all)."""
    t.net.eval()
    batches = list(t.source.eval_batches(batch_size, t.rank, t.world))
    count = len(batches)
    if t.topo is not None:  # every rank must join every collective: pad with empty batches
        n = torch.tensor([count], device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        empty = batches[0].slice_samples(0, 0) if batches else None
        if empty is None:
            raise UserError("a rank got no evaluation data: raise the evaluation set size")
        batches += [empty] * (int(n) - count)
    labels, probs = [], []
    for batch in batches:
        batch = batch.to(device)
        labels.append(batch.labels.cpu())
        probs.append(torch.sigmoid(t.net(batch.dense, batch.sparse)).cpu())
    t.net.train()
    mine = (torch.cat(labels).numpy(), torch.cat(probs).numpy())
    if t.topo is None:
        return mine
    everyone: list = [None] * t.world
    dist.all_gather_object(everyone, mine)
    return np.concatenate([e[0] for e in everyone]), np.concatenate([e[1] for e in everyone])


def evaluate(t: Trainee, batch_size: int, device: str = "cpu") -> dict:
    labels, probs = predict(t, batch_size, device)
    return {**click_metrics(labels, probs), "eval_samples": int(labels.size)}


def save(t: Trainee, cfg: Config, out: Path, step: int) -> None:
    state_dict = t.dm.state_dict_held() if t.dm else t.model.state_dict()
    state = ckpt.flat_state(t.named, state_dict, t.optimizers, step)
    if t.topo is None:
        ckpt.save_file(out, cfg, state)
    else:
        ckpt.save_sharded(out, cfg, state)


def resume_from(t: Trainee, out: Path) -> int:
    """Load the latest checkpoint in `out` if there is one. -> the step to start from."""
    if t.topo is None:
        if not (out / ckpt.FILE).exists():
            return 0
        _, state = ckpt.load_file(out)
        return ckpt.restore(state, t.model, set(t.model.state_dict()), t.named, t.optimizers)
    location = ckpt.sharded_location(out)
    if location is None:
        return 0
    held = t.dm.state_dict_held()
    state = ckpt.load_sharded(
        location, [f"model/{n}" for n in held] + ["step"], prefixes=tuple(f"optim/{n}/" for n, _ in t.named)
    )
    return ckpt.restore(state, t.model, set(held), t.named, t.optimizers)


def _mean_over_ranks(t: Trainee, values: dict[str, float], op: str = "mean") -> dict[str, float]:
    """Mean (or "min") of each value over all ranks; every rank must call it with the same keys."""
    if t.topo is None:
        return values
    keys = sorted(values)
    v = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=t.device)
    dist.all_reduce(v, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return dict(zip(keys, (v if op == "min" else v / t.world).tolist(), strict=True))


def comm_time_ms(t: Trainee, comm: list[dict]) -> dict:
    """Milliseconds per step inside collectives (warm-up step left out): all-to-alls by phase and
    summed, the gradient all-reduces, "busy", the time with any collective in flight (the
    all-reduce overlaps the backward's exchanges, so busy < alltoall + allreduce), and where the
    ranks share a clock "after_last_arrival", busy counted only once every member has arrived.

    "mean": the mean over ranks, which includes waiting for late members; "min": per entry the
    rank that waited least (it arrived last), the closest a measurement gets to the transfer alone.
    """
    steps = comm[1:] or comm

    def ms(values: list[float]) -> float:
        return 1e3 * float(np.mean(values))

    phases = sorted({p for c in steps for p in c["seconds_by_phase"]})
    per_rank = {p: ms([c["seconds_by_phase"].get(p, 0.0) for c in steps]) for p in phases}
    totals = {"allreduce": ms([c["allreduce_s"] for c in steps]), "busy": ms([c["busy_s"] for c in steps])}
    net = _after_last_arrival_ms(t, steps)
    if net is not None:
        totals["after_last_arrival"] = net
    out = {}
    for op in ("mean", "min"):
        by_phase = _mean_over_ranks(t, per_rank, op)
        out[op] = {"alltoall": sum(by_phase.values()), **_mean_over_ranks(t, totals, op), "by_phase": by_phase}
    return out


def _after_last_arrival_ms(t: Trainee, steps: list[dict]) -> float | None:
    """ms per step with a collective in flight counted from the moment its last member entered it:
    communication net of waiting for late ranks (compute imbalance). Needs one clock for all ranks,
    so only when they share a machine (a local run, the emulator); else None."""
    mine = (socket.gethostname(), [c["intervals"] for c in steps[-200:]])  # the last steps suffice
    everyone: list = [None] * t.world
    dist.all_gather_object(everyone, mine)
    if len({host for host, _ in everyone}) > 1:
        return None
    per_step = []
    for s, calls in enumerate(mine[1]):
        seen: dict[tuple, int] = {}
        spans = []
        for start, end, group in calls:
            k = seen[group] = seen.get(group, -1) + 1  # the k-th call of this group, on every member
            entered = [[c for c in everyone[m][1][s] if c[2] == group][k][0] for m in group]
            spans.append((max(start, *entered), end))
        per_step.append(union_s([(a, b) for a, b in spans if b > a]))
    return 1e3 * float(np.mean(per_step))


def train(cfg: Config, out_dir: str | Path, resume: bool = False, topo: Topology | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = cfg.train.device
    t = build(cfg, topo)
    start = resume_from(t, out) if resume else 0
    steps, bs = cfg.train.steps, cfg.train.batch_size
    stream = prefetch(t.source.train_batches(bs, t.rank, t.world, start), cfg.data.prefetch, device.startswith("cuda"))
    step_s, losses, log, comm, phases_s = [], [], [], [], []
    show = cfg.train.progress and t.rank == 0
    runlog = RunLog(out, enabled=t.rank == 0, tensorboard=cfg.train.tensorboard)
    bar = tqdm(range(start, steps), desc=f"train {t.model.name} ({t.mode})", disable=not show, unit="step")
    link_before = _link_counters(t)
    loop_start = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        t.timer.reset()
        with t.timer("data"):
            batch = next(stream).to(device)
        if t.dm is not None:
            t.dm.counter.reset()
        loss, _ = train_step(t, batch)
        losses.append(loss)
        step_s.append(time.perf_counter() - t0)
        phases_s.append(dict(t.timer.totals))
        if t.dm is not None:
            comm.append(t.dm.counter.snapshot())
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
            window = slice(-cfg.train.log_every, None)
            mean_loss = float(np.mean(losses[window]))
            record = {
                "step": step + 1,
                "train_logloss": mean_loss,
                "examples_per_s": len(step_s[window]) * bs * t.world / sum(step_s[window]),
                "step_ms": {k: 1e3 * v for k, v in _mean_phases(phases_s[window]).items()},
            }
            if comm:
                record["cross_host_bytes"] = float(np.mean([c["cross_host_bytes"] for c in comm[window]]))
                record["intra_host_bytes"] = float(np.mean([c["intra_host_bytes"] for c in comm[window]]))
            log.append(record)
            runlog.record(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < steps:
            save(t, cfg, out, step + 1)
    train_s = time.perf_counter() - loop_start
    stream.close()  # stops the background loader; the source reports what it skipped
    link = link_delta(link_before, _link_counters(t))
    peak_rss = peak_rss_bytes()  # set-up and training; evaluation comes after
    bar.close()

    save(t, cfg, out, steps)
    if t.topo is not None and t.rank == 0:
        ckpt.export_sharded(out / ckpt.SHARDS, out)
    quality = evaluate(t, cfg.train.eval_batch_size, device)
    optimal = t.source.optimal_metrics() or {}
    per_step = {
        k: float(np.mean([c[k] for c in comm])) if comm else 0.0
        for k in ("intra_host_bytes", "cross_host_bytes", "messages", "allreduce_bytes")
    }
    per_step = _mean_over_ranks(t, per_step)
    phases = sorted({p for c in comm for p in c["by_phase"]})
    by_phase = _mean_over_ranks(t, {p: float(np.mean([c["by_phase"].get(p, 0) for c in comm])) for p in phases})
    layout = t.topo.layout if t.topo else None
    malformed = getattr(t.source, "malformed", None)  # file sources count rows they skipped
    malformed_rows = _mean_over_ranks(t, {"n": sum(c.rows for c in malformed.values()) if malformed else 0})
    time_ms = comm_time_ms(t, comm) if comm else None
    summary = {
        **quality,
        "optimal_auc": optimal.get("optimal_auc"),
        "optimal_logloss": optimal.get("optimal_logloss"),
        "examples_per_s": (steps - start) * bs * t.world / train_s if steps > start else 0.0,
        "step_ms": step_stats(step_s) if step_s else None,
        "comm": {**per_step, "by_phase": by_phase, "time_ms": time_ms},
        "world": {"hosts": layout.hosts if layout else 1, "ranks_per_host": layout.ranks_per_host if layout else 1},
        "mode": t.mode,
        "model": t.model.name,
        "towers": None if t.model.is_flat else t.model.towers,
        "steps": steps,
        "seed": cfg.train.seed,
        "malformed_rows": round(malformed_rows["n"] * t.world),
        "step_breakdown_ms": {k: 1e3 * v for k, v in _mean_phases(phases_s[1:] or phases_s).items()},
        **_per_rank_resources(t, peak_rss, link, comm),
        "train_log": log,
    }
    if t.rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    runlog.close(summary)
    return summary


def _link_counters(t: Trainee) -> dict[str, int] | None:
    """The host interface's counters, read by each host's first rank between two barriers (so that
    every rank's traffic of the window lies inside it). None outside an emulated cluster."""
    if t.topo is None or link_counters() is None:
        return None
    dist.barrier()
    counters = link_counters() if t.topo.local == 0 else None
    dist.barrier()
    return counters


def _per_rank_resources(t: Trainee, peak_rss: int, link: dict | None, comm: list[dict]) -> dict:
    """peak_rss_bytes per rank and, on an emulated cluster, link_train: per host, what its link
    carried during the training loop beside what the host's ranks counted sending across hosts."""
    mine = (
        peak_rss,
        link,
        sum(c["cross_host_bytes"] for c in comm),
        sum(c["allreduce_cross_host_bytes"] for c in comm),
    )
    if t.topo is None:
        return {"peak_rss_bytes": [peak_rss]}
    everyone: list = [None] * t.world
    dist.all_gather_object(everyone, mine)
    out: dict = {"peak_rss_bytes": [e[0] for e in everyone]}
    layout = t.topo.layout
    if everyone[0][1] is not None:
        out["link_train"] = [
            {
                "host": h,
                **everyone[layout.rank(h, 0)][1],
                "counted_cross_host_bytes": sum(everyone[r][2] for r in layout.host_ranks(h)),
                # payload all-reduced over groups spanning hosts, per rank (a ring sends 2 (W-1) / W of it)
                "allreduce_payload_bytes_per_rank": everyone[layout.rank(h, 0)][3],
            }
            for h in range(layout.hosts)
        ]
    return out


def _mean_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for p in phases for k in p})
    return {k: float(np.mean([p.get(k, 0.0) for p in phases])) for k in names}


def step_stats(step_s: list[float]) -> dict[str, float]:
    ms = np.asarray(step_s[1:] or step_s) * 1e3  # the first step pays for warm-up
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90))}
