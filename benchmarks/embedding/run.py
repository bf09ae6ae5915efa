"""Lookup + update time per step of the two embedding backends (model.embedding_backend).

    .venv/bin/python -m benchmarks.embedding.run [--tables 26] [--rows 100000] [--dim 32] [--batch 4096]
        [--steps 30] [--threads 1] [--device cpu|cuda]

One step: pool a batch of one-hot samples (uniform ids) over every table, backward of a random
linear function of the pooled rows, and the row-wise Adagrad update:

    torch    dmt's EmbeddingBagCollection: one nn.EmbeddingBag per table (sparse gradients), then
             dmt's RowWiseAdagrad over the sparse gradients (the reference backend)
    fbgemm   dmt's FusedEmbeddingBagCollection: one FBGEMM table-batched kernel, exact row-wise
             Adagrad fused into its backward (no optimizer step)

Median milliseconds over the steps after 3 warm-up steps. Writes results.json and results.md here
(results_cuda.* for --device cuda; the fbgemm row needs the CUDA build of fbgemm-gpu there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import provenance, provenance_lines
from dmt.modules.embedding import EmbeddingBagCollection
from dmt.sparse import KeyedJagged
from dmt.specs import FeatureSpec
from dmt.train.optim import RowWiseAdagrad

HERE = Path(__file__).parent
WARMUP = 3


def _collection(backend: str, features: list[FeatureSpec], dim: int, device: str):
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection.from_features(features, dim=dim, pooling="sum")
    if backend == "fbgemm":
        from dmt.modules.fused import FusedEmbeddingBagCollection

        ebc = FusedEmbeddingBagCollection.like(ebc)
        ebc.configure("rowwise_adagrad", lr=0.05)
        return ebc.to(device), None
    ebc = ebc.to(device)
    return ebc, RowWiseAdagrad(list(ebc.parameters()), lr=0.05)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_backend(backend: str, args) -> dict:
    features = [FeatureSpec(f"f{i:02d}", f"t{i:02d}", args.rows) for i in range(args.tables)]
    ebc, optimizer = _collection(backend, features, args.dim, args.device)
    gen = torch.Generator().manual_seed(1)
    keys = [f.name for f in features]
    times = []
    for _ in range(WARMUP + args.steps):
        ids = torch.randint(0, args.rows, (args.tables * args.batch,), generator=gen)
        kj = KeyedJagged(keys, ids, torch.ones(args.tables * args.batch, dtype=torch.long)).to(args.device)
        weight = torch.randn(args.batch, args.tables * args.dim, generator=gen).to(args.device)
        _sync(args.device)
        start = time.perf_counter()
        pooled = ebc.pool(kj)  # [batch, tables * dim]
        (pooled * weight).sum().backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(args.device)
        times.append(time.perf_counter() - start)
    ms = 1e3 * np.asarray(times[WARMUP:])
    return {"backend": backend, "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--load-note", default="", help="a sentence on other load on the machine during the run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, skipped = [], {}
    for backend in ("torch", "fbgemm"):
        try:
            rows.append(time_backend(backend, args))
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            skipped[backend] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(json.dumps(rows[-1] if backend not in skipped else {backend: skipped[backend]}), flush=True)
    result = {
        **provenance(),
        "device": args.device,
        "threads": args.threads,
        "tables": args.tables,
        "rows": args.rows,
        "dim": args.dim,
        "batch": args.batch,
        "steps": args.steps,
        "load": args.load_note,
        "results": rows,
        "skipped": skipped,
    }
    stem = "results" if args.device == "cpu" else f"results_{args.device.split(':')[0]}"
    (HERE / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (HERE / f"{stem}.md").write_text(report(result))


def report(result: dict) -> str:
    by = {r["backend"]: r for r in result["results"]}
    lines = [
        f"# Embedding lookup + row-wise Adagrad update per step, {result['device']}",
        "",
        *provenance_lines(result, f", {result['threads']} thread(s){'; ' + result['load'] if result['load'] else ''}"),
        f"Workload: {result['tables']} tables of {result['rows']:,} x {result['dim']}, {result['batch']:,} one-hot "
        f"samples (uniform ids), sum pooling; median of {result['steps']} steps after {WARMUP} warm-up steps",
        "",
        "| backend | median ms per step | p90 ms |",
        "|---|---|---|",
        *(f"| {r['backend']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |" for r in result["results"]),
        "",
    ]
    if "torch" in by and "fbgemm" in by:
        lines.append(f"fbgemm is {by['torch']['median_ms'] / by['fbgemm']['median_ms']:.2f}x as fast as torch.")
    lines += [f"- {b} did not run: {why}" for b, why in result["skipped"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
