"""Faults to inject into an emulated cluster (`dmt emulate --fault ...`).

    outage:host=H,start=S,duration=D     host H's link to the other hosts drops every packet
                                         from S to S + D seconds after training starts
    loss:host=H,percent=P[,start=S][,duration=D]
                                         the link drops P % of its packets (default: all run long)
    kill:rank=R,step=K                   rank R kills itself (SIGKILL) as it begins step K, on
                                         the first attempt only (a restarted rank trains on)

Times count from the end of the training loop's first step (when the run's metrics.jsonl appears),
so that set-up time on a busy machine, the first step's included, does not move the fault. An outage
takes the host's port on the switch down; loss switches a netem qdisc in front of the link's token
bucket in both directions (kernels without netem refuse it); a kill is done by the rank itself
(`kill_if_due`, called by the training loop at every step), which the emulator arms through
DMT_FAULT_KILL.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dmt.errors import UserError

KILL_ENV = "DMT_FAULT_KILL"
KINDS = {
    "outage": ("host", "start", "duration"),
    "loss": ("host", "percent", "start", "duration"),
    "kill": ("rank", "step"),
}
REQUIRED = {"outage": ("host", "start", "duration"), "loss": ("host", "percent"), "kill": ("rank", "step")}


@dataclass(frozen=True)
class Fault:
    kind: str  # outage, loss or kill
    host: int | None = None
    start: float = 0.0  # seconds after the training loop starts
    duration: float | None = None  # None: to the end of the run
    percent: float = 100.0  # packets dropped while the fault lasts (an outage: all)
    rank: int | None = None
    step: int | None = None

    @property
    def on_link(self) -> bool:
        return self.kind in ("outage", "loss")


def parse_fault(text: str) -> Fault:
    """`kind:key=value,...` (see the module docstring) -> Fault; UserError names what is wrong."""
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise UserError(f"--fault '{text}': unknown kind '{kind}'; allowed: {', '.join(KINDS)}")
    values: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KINDS[kind]:
            takes = ", ".join(k + "=N" for k in KINDS[kind])
            raise UserError(f"--fault '{text}': bad item '{item}'; {kind} takes {takes}")
        try:
            values[key] = float(value)
        except ValueError:
            raise UserError(f"--fault '{text}': {key}='{value}' is not a number") from None
    missing = [k for k in REQUIRED[kind] if k not in values]
    if missing:
        raise UserError(f"--fault '{text}': {kind} needs {', '.join(k + '=N' for k in missing)}")
    for key in ("host", "rank", "step"):
        if key in values and (values[key] < 0 or values[key] != int(values[key])):
            raise UserError(f"--fault '{text}': {key} must be a whole number >= 0, got {values[key]:g}")
    if values.get("start", 0) < 0 or values.get("duration", 1) <= 0:
        raise UserError(f"--fault '{text}': start must be >= 0 and duration > 0")
    if kind == "loss" and not 0 < values["percent"] <= 100:
        raise UserError(f"--fault '{text}': percent must be in (0, 100], got {values['percent']:g}")
    ints = {k: int(values[k]) for k in ("host", "rank", "step") if k in values}
    floats = {k: values[k] for k in ("start", "duration", "percent") if k in values}
    return Fault(kind, **ints, **floats)


def check_faults(faults: list[Fault], hosts: int, world: int) -> None:
    for f in faults:
        if f.host is not None and f.host >= hosts:
            raise UserError(f"--fault {f.kind}: host {f.host} does not exist; hosts are 0..{hosts - 1}")
        if f.rank is not None and f.rank >= world:
            raise UserError(f"--fault {f.kind}: rank {f.rank} does not exist; ranks are 0..{world - 1}")
    if len([f for f in faults if f.kind == "kill"]) > 1:
        raise UserError("--fault kill: at most one killed rank per run")


def kill_env(faults: list[Fault]) -> dict[str, str]:
    """The environment that arms a kill fault in the ranks."""
    kill = next((f for f in faults if f.kind == "kill"), None)
    return {KILL_ENV: f"{kill.rank}:{kill.step}"} if kill else {}


def kill_if_due(step: int, rank: int) -> None:
    """(in a rank) SIGKILL this process if DMT_FAULT_KILL names this rank and step, on the first
    attempt of the run only (torchrun's TORCHELASTIC_RESTART_COUNT is 0)."""
    armed = os.environ.get(KILL_ENV)
    if not armed or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    r, k = (int(x) for x in armed.split(":"))
    if r == rank and k == step:
        os.kill(os.getpid(), signal.SIGKILL)


class LinkFaults:
    """Switches outages and loss on and off in a thread; `stop()` ends them and returns what happened.

    set_loss(host, percent) applies a loss rate to both directions of a host's link."""

    def __init__(self, faults: list[Fault], set_loss, started: Path, not_before: float) -> None:
        self.faults = [f for f in faults if f.on_link]
        self.set_loss, self.started, self.not_before = set_loss, started, not_before
        self.applied: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LinkFaults:
        if self.faults:
            self._thread.start()
        return self

    def _training_started(self) -> float | None:
        try:
            mtime = self.started.stat().st_mtime
        except FileNotFoundError:
            return None
        return time.time() if mtime >= self.not_before else None

    def _run(self) -> None:
        t0 = None
        while t0 is None and not self._stop.wait(0.1):
            t0 = self._training_started()
        if t0 is None:
            return
        events = []  # (when, host, percent, fault)
        for f in self.faults:
            events.append((t0 + f.start, f, f.percent))
            if f.duration is not None:
                events.append((t0 + f.start + f.duration, f, 0.0))
        active: dict[int, dict[Fault, float]] = {}
        for when, f, percent in sorted(events, key=lambda e: e[0]):
            if self._stop.wait(max(0.0, when - time.time())):
                return
            on = active.setdefault(f.host, {})
            if percent > 0:
                on[f] = percent
            else:
                on.pop(f, None)
            self.set_loss(f.host, max(on.values(), default=0.0))
            record = {**asdict(f), "at_s": time.time() - t0, "on": percent > 0}
            self.applied.append({k: v for k, v in record.items() if v is not None})

    def stop(self) -> list[dict]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        return self.applied


def stalls(metrics: Path) -> dict:
    """How long training stood still, from the run's metrics.jsonl: the wall time of each log window
    (since the record before: its steps, logging and any checkpoint save, where a stall can fall as
    well as in a step) beyond the median window's, a window with a save beyond the median window
    plus the median save. -> {stalled_s, longest_window_s, median_window_s, windows}"""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        return {"stalled_s": None, "longest_window_s": None, "median_window_s": None, "windows": 0}
    plain = sorted(r["wall_s"] for r in records if not r["checkpoint_s"]) or [0.0]
    saves = sorted(r["checkpoint_s"] for r in records if r["checkpoint_s"]) or [0.0]
    median, median_save = plain[len(plain) // 2], saves[len(saves) // 2]
    expected = [median + (median_save if r["checkpoint_s"] else 0.0) for r in records]
    return {
        "stalled_s": sum(max(0.0, r["wall_s"] - e) for r, e in zip(records, expected, strict=True)),
        "longest_window_s": max(r["wall_s"] for r in records),
        "median_window_s": median,
        "windows": len(records),
    }
