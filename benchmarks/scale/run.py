"""A table bigger than one rank's memory budget trains on 2 hosts x 2 ranks (CPU, gloo).

    .venv/bin/python -m benchmarks.scale.run [--rows 20000000] [--memory-gb 1.0] [--steps 100]

Data: TorchRec-style npy day files (`data.source = "criteo_npy"`) written under
runs/bench_scale/data (generated here, never committed): 4 one-hot features over tables of
[rows, 1000, 1000, 1000] rows (uniform ids), 4 dense values, labels from a fixed logistic rule.
Model: DLRM, d = 16, so the big table alone is rows * 16 * 4 bytes (1.28 GB at 20M rows).

Three measurements, each a `dmt train --nproc 4 --ranks-per-host 2` with dist.memory_gb set:

    refused     model.table_sharding = {"*" = "table"}: the plan must be refused before any rank
                starts, with one line (exit code 2)
    runtime     a rank process with torch, dmt, its process groups and the optimizers' code
                loaded, and nothing of its own built (the per-process constant, measured here
                on 4 ranks)
    trained     the default ("auto"): the planner cuts the big table; per rank, the predicted
                memory (cost model: dmt/cost/fit.py with its runtime constant) against the
                measured peak resident memory over set-up and training, and the peak once the
                model is built against the rank's shard plus the measured runtime

Writes results.json and results.md here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import provenance, provenance_lines

HERE = Path(__file__).parent
RUNS = Path("runs/bench_scale")
SMALL = 1000  # rows of the three small tables
BASE = "synthetic_dlrm"  # the shipped flat DLRM config; every setting that matters is overridden
MIB = 2**20


def write_data(folder: Path, rows: int, train: int, test: int, seed: int = 0) -> None:
    """day_0 (train) and day_1 (test) npy files: ids uniform over each table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(4)
    for day, n in ((0, train), (1, test)):
        dense = rng.standard_normal((n, 4)).astype(np.float32)
        sparse = np.stack([rng.integers(0, size, n) for size in (rows, SMALL, SMALL, SMALL)], 1).astype(np.int32)
        labels = (rng.random(n) < 1 / (1 + np.exp(-(dense @ w)))).astype(np.int32)
        for name, array in (("dense", dense), ("sparse", sparse), ("labels", labels)):
            np.save(folder / f"day_{day}_{name}.npy", array)


def settings(data: Path, rows: int, memory_gb: float, steps: int) -> list[str]:
    return [
        "data.source=criteo_npy",
        f"data.train_path={data}",
        "data.num_dense=4",
        "data.num_sparse=4",
        f"data.table_sizes=[{rows}, {SMALL}, {SMALL}, {SMALL}]",
        "data.train_days=[0]",
        "data.test_days=[1]",
        "model.arch=dlrm",
        "model.embedding_dim=16",
        "model.bottom_mlp=[16]",
        "model.top_mlp=[32]",
        "model.tower_module=identity",
        "dist.mode=flat",
        f"dist.memory_gb={memory_gb}",
        f"train.steps={steps}",
        "train.batch_size=512",
        "train.eval_batch_size=4096",
        "train.log_every=50",
        "train.progress=false",
        "train.tensorboard=false",
    ]


def dmt_train(overrides: list[str], out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "dmt", "train", "--config", BASE, "--nproc", "4", "--ranks-per-host", "2"]
    argv += ["--set", *overrides]
    return subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True)


def _runtime_rank(cfg, topo) -> int:
    """A rank with the code a training rank runs loaded and nothing of its own built: torch, dmt,
    the process groups, and one step of both optimizers on a one-value parameter (torch loads
    more of itself the first time an optimizer is made)."""
    import torch

    import dmt.models.build  # noqa: F401 - what `dmt train` has loaded before it builds a table
    import dmt.train.loop  # noqa: F401
    from dmt.train.optim import RowWiseAdagrad
    from dmt.train.resources import peak_rss_bytes

    weight = torch.nn.Parameter(torch.zeros(1, 1, device="cpu"))
    for opt in (torch.optim.Adam([weight]), RowWiseAdagrad([weight])):
        weight.grad = torch.ones_like(weight)
        opt.step()
    return peak_rss_bytes()


def measure_runtime() -> list[int]:
    """Peak resident memory of 4 rank processes (2 x 2) that build nothing."""
    from dmt.config import Config
    from dmt.distributed.launch import launch

    return [v for _, v in sorted(launch(4, _runtime_rank, Config(), 2).items())]


def predict(overrides: list[str]) -> tuple[dict, list[dict]]:
    """The plan `dmt train` will use and the cost model's memory per rank (runtime included)."""
    import torch

    from dmt.config import load_config
    from dmt.cost.fit import config_budget, config_plan, plan_memory
    from dmt.cost.workload import workload_of
    from dmt.data import make_source
    from dmt.distributed.topology import Layout
    from dmt.models.build import build_model
    from dmt.modules.embedding import deferred_tables

    cfg = load_config(BASE, overrides)
    layout = Layout(2, 2)
    source = make_source(cfg.data)
    with deferred_tables(), torch.device("meta"):
        model = build_model(cfg.model, source.features, source.num_dense)
    budget = config_budget(cfg, layout)
    sharding = config_plan(cfg, model, layout, budget)
    memory = plan_memory(sharding, workload_of(model, budget.batch_size), budget)
    return sharding.table_summary(), [m.as_dict() for m in memory]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--memory-gb", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--train-rows", type=int, default=200_000)
    args = p.parse_args()
    data = RUNS / "data"
    write_data(data, args.rows, args.train_rows, 20_000)
    overrides = settings(data, args.rows, args.memory_gb, args.steps)

    refused = dmt_train([*overrides, 'model.table_sharding={"*" = "table"}'], RUNS / "refused")
    runtime = measure_runtime()
    sharding, predicted = predict(overrides)
    run = dmt_train(overrides, RUNS / "trained")
    if run.returncode != 0:
        raise SystemExit(f"the run failed ({run.returncode}): {run.stderr[-3000:]}")
    summary = json.loads((RUNS / "trained" / "summary.json").read_text())
    peak, startup = summary["peak_rss_bytes"], summary["startup_peak_rss_bytes"]
    ranks = []
    for r, pred in enumerate(predicted):
        shard = pred["table_bytes"]
        ranks.append(
            {
                "rank": r,
                "predicted_bytes": pred["total_bytes"],
                "predicted": pred,
                "peak_rss_bytes": peak[r],
                "peak_vs_predicted": peak[r] / pred["total_bytes"] - 1,
                "under_budget": peak[r] <= args.memory_gb * 1e9,
                "startup_peak_rss_bytes": startup[r],
                "startup_over_shard_bytes": startup[r] - shard,
                "runtime_rss_bytes": runtime[r],
            }
        )
    result = {
        **provenance(),
        "rows": args.rows,
        "memory_gb": args.memory_gb,
        "steps": args.steps,
        "overrides": overrides,
        "refused": {
            "exit_code": refused.returncode,
            "stderr": [line for line in refused.stderr.splitlines() if line.startswith("dmt: error:")],
        },
        "sharding": summary["sharding"],
        "planned_sharding": sharding,
        "examples_per_s": summary["examples_per_s"],
        "auc": summary["auc"],
        "ranks": ranks,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    (HERE / "results.md").write_text(report(result))
    print(report(result))


def report(result: dict) -> str:
    gb = result["memory_gb"]
    big = result["rows"] * 16 * 4
    lines = [
        f"# A {result['rows']:,}-row table ({big / 1e9:.2f} GB) on 2 hosts x 2 ranks with {gb:g} GB per rank",
        "",
        *provenance_lines(result, " (shared with other jobs: timings are not final)"),
        "",
        "## Table-wise forced: refused before any rank starts",
        "",
        f"Exit code {result['refused']['exit_code']}:",
        "",
        *[f"    {line}" for line in result["refused"]["stderr"]],
        "",
        "## Auto: the planner cuts the table and it trains",
        "",
        f"Sharding: `{json.dumps(result['sharding'])}`; {result['examples_per_s']:.0f} examples/s, "
        f"AUC {result['auc']:.4f} (the labels depend on the dense values only).",
        "",
        "Predicted: the cost model's per-rank memory (tables, optimizer state, exchange buffers and activations, "
        f"dense parts, and its runtime constant of {result['ranks'][0]['predicted']['runtime_bytes'] / MIB:.0f} MiB). "
        "Measured: peak resident memory over set-up and training (`peak_rss_bytes`).",
        "",
        "| rank | predicted MiB | measured peak MiB | measured vs predicted | under the budget |",
        "|---|---|---|---|---|",
    ]
    for r in result["ranks"]:
        lines.append(
            f"| {r['rank']} | {r['predicted_bytes'] / MIB:.0f} | {r['peak_rss_bytes'] / MIB:.0f} "
            f"| {100 * r['peak_vs_predicted']:+.1f}% | {'yes' if r['under_budget'] else 'NO'} |"
        )
    lines += [
        "",
        "## Start-up: peak once the model is built, against the rank's shard",
        "",
        "Runtime: the peak of a rank process with torch, dmt, its process groups and the optimizers' code loaded "
        "and nothing of its own built (measured on 4 ranks here, beside the run). Start-up peak: once `build` has "
        "made the rank's model (its shard), data source and optimizers. Start-up peak - shard bytes is what "
        "construction needed beyond the shard; it must not exceed the runtime.",
        "",
        "| rank | shard MiB | start-up peak MiB | start-up - shard MiB | runtime MiB | beyond the runtime MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["ranks"]:
        shard = r["predicted"]["table_bytes"]
        lines.append(
            f"| {r['rank']} | {shard / MIB:.0f} | {r['startup_peak_rss_bytes'] / MIB:.0f} "
            f"| {r['startup_over_shard_bytes'] / MIB:.0f} | {r['runtime_rss_bytes'] / MIB:.0f} "
            f"| {(r['startup_over_shard_bytes'] - r['runtime_rss_bytes']) / MIB:+.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
