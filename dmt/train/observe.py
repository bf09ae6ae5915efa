"""What a run leaves to look at, beside summary.json (rank 0 only):

DIR/metrics.jsonl    one JSON record per log interval (loss, examples/s, bytes per tier, phase times,
                     the interval's wall seconds and the checkpoint saves' share of them)
DIR/tensorboard/     the same as TensorBoard scalars, plus the final AUC and log loss
DIR/curves.png       training log loss, examples/s and step-time breakdown over steps
"""

from __future__ import annotations

import json
from pathlib import Path

from dmt.figures import save_figure


class RunLog:
    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out, self.enabled = out, enabled
        self.records: list[dict] = []
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def steps_running(self) -> None:
        """After the first step (its set-up, such as gloo connecting its peers, is over): start an
        empty metrics.jsonl, whose appearance starts the clock of `dmt emulate --fault`."""
        if self.enabled:
            (self.out / "metrics.jsonl").write_text("")

    def record(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.records.append(rec)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            step = rec["step"]
            self.writer.add_scalar("train/logloss", rec["train_logloss"], step)
            self.writer.add_scalar("speed/examples_per_s", rec["examples_per_s"], step)
            for phase, ms in rec["step_ms"].items():
                self.writer.add_scalar(f"step_ms/{phase}", ms, step)
            for tier in ("cross_host_bytes", "intra_host_bytes"):
                if tier in rec:
                    self.writer.add_scalar(f"comm/{tier}", rec[tier], step)

    def close(self, summary: dict) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key in ("auc", "logloss", "ne"):
                self.writer.add_scalar(f"eval/{key}", summary[key], summary["steps"])
            self.writer.close()
        if self.records:
            plot_curves(self.records, summary, self.out / "curves.png")


def plot_curves(records: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(steps, [r["train_logloss"] for r in records], marker=".")
    if summary.get("optimal_logloss") is not None:
        axes[0].axhline(summary["optimal_logloss"], color="gray", linestyle="--", label="Bayes-optimal (eval)")
        axes[0].legend()
    axes[0].set(
        title=f"{summary['model']} ({summary['mode']}): eval AUC {summary['auc']:.4f}",
        xlabel="step",
        ylabel="train log loss",
    )
    axes[1].plot(steps, [r["examples_per_s"] for r in records], marker=".")
    axes[1].set(title="throughput", xlabel="step", ylabel="examples/s (all ranks)")
    phases = sorted({k for r in records for k in r["step_ms"]})
    bottom = [0.0] * len(records)
    for phase in phases:
        values = [r["step_ms"].get(phase, 0.0) for r in records]
        axes[2].bar(
            steps, values, bottom=bottom, width=0.8 * (steps[1] - steps[0] if len(steps) > 1 else 1), label=phase
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[2].set(title="step time by phase", xlabel="step", ylabel="ms")
    axes[2].legend(fontsize=7, loc="lower left", framealpha=0.6)
    save_figure(fig, path, dpi=90)
