"""What a training run reports: per-step records while it runs, summary.json at the end.

StepRecorder   per step: wall time, loss, phase times, the exchanges' counters; the training
               loop's wall time, the link's kernel counters around it (emulated clusters) and
               the peak resident memory
summarize      quality + speed + bytes per tier + time in collectives + resources, averaged
               over ranks where each rank measures its own part (summary.json)
"""

from __future__ import annotations

import socket
import time

import numpy as np
import torch

from dmt.config import Config
from dmt.distributed.comm import union_s
from dmt.guard import allowed_sync
from dmt.train.resources import link_counters, link_delta, peak_rss_bytes


class StepRecorder:
    def __init__(self, t, global_batch: int) -> None:
        self.t, self.global_batch = t, global_batch
        self.step_s: list[float] = []
        self.losses: list[torch.Tensor] = []  # detached, read only at log time (no sync per step)
        self.phases: list[dict[str, float]] = []
        self.comm: list[dict] = []
        self.log: list[dict] = []
        self.windows: list[tuple[float, float]] = []  # each step's (start, end) on the host clock
        self._step_start = 0.0
        self.startup_rss: int | None = None  # peak resident memory once the model was built

    def start(self) -> None:
        self.link_before = self._link_counters()
        self.loop_start = time.perf_counter()
        self._record_end, self._checkpoint_s = self.loop_start, 0.0

    def checkpointed(self, seconds: float) -> None:
        """A checkpoint was saved between steps, taking `seconds`: the next record's checkpoint_s."""
        self._checkpoint_s += seconds

    def begin_step(self) -> None:
        self._step_start = time.perf_counter()
        self.t.timer.reset()
        self.t.model.counter.reset()

    def end_step(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)
        end = time.perf_counter()
        self.step_s.append(end - self._step_start)
        self.windows.append((self._step_start, end))
        self.phases.append(dict(self.t.timer.totals))
        self.comm.append(self.t.model.counter.snapshot())

    def stop(self) -> None:
        self.train_s = time.perf_counter() - self.loop_start
        self.link = link_delta(self.link_before, self._link_counters())
        self.peak_rss = peak_rss_bytes()  # set-up and training; evaluation comes after

    def log_record(self, step: int, every: int) -> dict:
        """The record of the last `every` steps (metrics.jsonl, TensorBoard, the progress bar)."""
        window = slice(-every, None)
        now = time.perf_counter()
        record = {
            "step": step,
            "train_logloss": _read(torch.stack(self.losses[window]).mean()),
            "examples_per_s": len(self.step_s[window]) * self.global_batch / sum(self.step_s[window]),
            # since the last record, all of it: steps, logging and checkpoints (a stall can fall in any)
            "wall_s": now - self._record_end,
            "checkpoint_s": self._checkpoint_s,
            "step_ms": {k: 1e3 * v for k, v in mean_phases(self.phases[window]).items()},
            "cross_host_bytes": float(np.mean([c["cross_host_bytes"] for c in self.comm[window]])),
            "intra_host_bytes": float(np.mean([c["intra_host_bytes"] for c in self.comm[window]])),
        }
        self.log.append(record)
        self._record_end, self._checkpoint_s = now, 0.0  # the windows tile the loop
        return record

    def _link_counters(self) -> dict[str, int] | None:
        """The host interface's counters, read by each host's first rank between two barriers (so
        that every rank's traffic of the window lies inside it). None outside an emulated cluster."""
        if link_counters() is None:
            return None
        topo = self.t.topo
        topo.barrier()
        counters = link_counters() if topo.local == 0 else None
        topo.barrier()
        return counters


def summarize(t, cfg: Config, rec: StepRecorder, quality: dict, start: int) -> dict:
    """The run's summary.json (collective: every rank calls it)."""
    steps, comm = cfg.train.steps, rec.comm
    optimal = t.source.optimal_metrics() or {}
    per_step = {
        k: float(np.mean([c[k] for c in comm])) if comm else 0.0
        for k in ("intra_host_bytes", "cross_host_bytes", "messages", "allreduce_bytes")
    }
    phases = sorted({p for c in comm for p in c["by_phase"]})
    by_phase = {p: float(np.mean([c["by_phase"].get(p, 0) for c in comm])) for p in phases}
    cross = {p: float(np.mean([c["cross_host_by_phase"].get(p, 0) for c in comm])) for p in phases}
    malformed = getattr(t.source, "malformed", None)  # file sources count rows they skipped
    skipped = sum(c.rows for c in malformed.values()) if malformed else 0
    layout = t.topo.layout
    model = t.model.module
    return {
        **quality,
        "optimal_auc": optimal.get("optimal_auc"),
        "optimal_logloss": optimal.get("optimal_logloss"),
        "examples_per_s": (steps - start) * rec.global_batch / rec.train_s if steps > start else 0.0,
        "step_ms": step_stats(rec.step_s) if rec.step_s else None,
        "comm": {
            **mean_over_ranks(t, per_step),
            "by_phase": mean_over_ranks(t, by_phase),
            "cross_host_by_phase": mean_over_ranks(t, cross),
            # on a GPU the host clock sees a collective only being queued: times need train.profile
            "time_ms": (
                comm_time_ms(t, comm, rec.windows) if comm and (t.device.type == "cpu" or cfg.train.profile) else None
            ),
        },
        "world": {"hosts": layout.hosts, "ranks_per_host": layout.ranks_per_host},
        "mode": t.mode,
        "model": model.name,
        "towers": None if model.is_flat else model.towers,
        "sharding": t.model.plan.table_summary(),
        "steps": steps,
        "seed": cfg.train.seed,
        "malformed_rows": round(sum(t.topo.all_gather_object(skipped))),
        "step_breakdown_ms": {k: 1e3 * v for k, v in mean_phases(rec.phases[1:] or rec.phases).items()},
        **per_rank_resources(t, rec),
        "train_log": rec.log,
    }


def mean_over_ranks(t, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all ranks (every rank calls it with the same keys)."""
    everyone = t.topo.all_gather_object(values)
    return {k: float(np.mean([e[k] for e in everyone])) for k in values}


def least_over_ranks(t, values: dict[str, float]) -> dict[str, float]:
    """The smallest of each value over all ranks (every rank calls it with the same keys)."""
    everyone = t.topo.all_gather_object(values)
    return {k: float(min(e[k] for e in everyone)) for k in values}


def comm_time_ms(t, comm: list[dict], windows: list[tuple[float, float]] | None = None) -> dict:
    """Milliseconds per step inside collectives (warm-up step left out): all-to-alls by phase and
    summed, the gradient all-reduces, "busy", the time with any collective in flight (the
    all-reduce overlaps the backward's exchanges, so busy < alltoall + allreduce), and where the
    ranks share a clock "after_last_arrival", busy counted only once every member has arrived.

    "mean": the mean over ranks, which includes waiting for late members; "min": per entry the
    rank that waited least (it arrived last), the closest a measurement gets to the transfer alone.
    windows: each step's wall-clock span; "after_last_arrival" then counts, per step, the time
    inside its window with any collective in flight, whichever batch it serves (a pipelined step
    runs the next batch's input exchange during its own window).
    """
    steps = comm[1:] or comm
    windows = (windows[1:] if len(comm) > 1 else windows) if windows else None

    def ms(values: list[float]) -> float:
        return 1e3 * float(np.mean(values))

    phases = sorted({p for c in steps for p in c["seconds_by_phase"]})
    per_rank = {p: ms([c["seconds_by_phase"].get(p, 0.0) for c in steps]) for p in phases}
    totals = {"allreduce": ms([c["allreduce_s"] for c in steps]), "busy": ms([c["busy_s"] for c in steps])}
    net = _after_last_arrival_ms(t, steps, windows)
    if net is not None:
        totals["after_last_arrival"] = net
    out = {}
    for how, reduce in (("mean", mean_over_ranks), ("min", least_over_ranks)):
        by_phase = reduce(t, per_rank)
        out[how] = {"alltoall": sum(by_phase.values()), **reduce(t, totals), "by_phase": by_phase}
    return out


def _after_last_arrival_ms(t, steps: list[dict], windows: list[tuple[float, float]] | None = None) -> float | None:
    """ms per step with a collective in flight counted from the moment its last member entered it:
    communication net of waiting for late ranks (compute imbalance); with `windows`, counted inside
    each step's window. Needs one clock for all ranks, so only when they share a machine (a local
    run, the emulator); else None."""
    steps, windows = steps[-200:], (windows[-200:] if windows else None)  # the last steps suffice
    mine = (socket.gethostname(), [c["intervals"] for c in steps])
    everyone = t.topo.all_gather_object(mine)
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
        per_step.append([(a, b) for a, b in spans if b > a])
    if windows is None or len(windows) != len(per_step):
        return 1e3 * float(np.mean([union_s(spans) for spans in per_step]))
    every = [span for spans in per_step for span in spans]
    inside = [union_s([(max(a, lo), min(b, hi)) for a, b in every if b > lo and a < hi]) for lo, hi in windows]
    return 1e3 * float(np.mean(inside))


def per_rank_resources(t, rec: StepRecorder) -> dict:
    """peak_rss_bytes per rank and, on an emulated cluster, link_train: per host, what its link
    carried during the training loop beside what the host's ranks counted sending across hosts."""
    mine = (
        rec.peak_rss,
        rec.link,
        rec.startup_rss,
        sum(c["cross_host_bytes"] for c in rec.comm),
        sum(c["allreduce_cross_host_bytes"] for c in rec.comm),
    )
    everyone = t.topo.all_gather_object(mine)
    out: dict = {"peak_rss_bytes": [e[0] for e in everyone], "startup_peak_rss_bytes": [e[2] for e in everyone]}
    layout = t.topo.layout
    if everyone[0][1] is not None:
        out["link_train"] = [
            {
                "host": h,
                **everyone[layout.rank(h, 0)][1],
                "counted_cross_host_bytes": sum(everyone[r][3] for r in layout.host_ranks(h)),
                # payload all-reduced over groups spanning hosts, per rank (a ring sends 2 (W-1) / W of it)
                "allreduce_payload_bytes_per_rank": everyone[layout.rank(h, 0)][4],
            }
            for h in range(layout.hosts)
        ]
    return out


def mean_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for p in phases for k in p})
    return {k: float(np.mean([p.get(k, 0.0) for p in phases])) for k in names}


def step_stats(step_s: list[float]) -> dict[str, float]:
    ms = np.asarray(step_s[1:] or step_s) * 1e3  # the first step pays for warm-up
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90))}


def _read(value: torch.Tensor) -> float:
    with allowed_sync("the logged loss, once per log interval"):
        return float(value)
