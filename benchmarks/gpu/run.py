"""The one-command GPU check: dmt's training path on one CUDA device against the CPU reference.

    bash benchmarks/gpu/run.sh [--steps 200] [--out benchmarks/gpu]

1. the CPU reference: the first training step's loss of configs/synthetic_dmt_dlrm (fp32), here;
2. (needs a GPU from here on; without one it stops with one line) the same first step on CUDA,
   fp32 (equal to the CPU's within 1e-4) and bf16 (reported);
3. `dmt verify` with a world of one on CUDA (NCCL);
4. a short training run on CUDA, fp32 and bf16: examples/s, step time, AUC;
5. resume on CUDA: 10 steps, then 10 more from the checkpoint, against 20 straight (<= 1e-5);
6. lookup + update time of the embedding backends where benchmarks/embedding exists.
Every part records its result or its error; results.md and results.json carry the command,
commit and machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import provenance, provenance_lines

CONFIG = "synthetic_dmt_dlrm"
SMALL = ["train.batch_size=256", "data.synthetic.eval_samples=8192", "train.progress=false", "train.tensorboard=false"]


def first_step_loss(device: str, precision: str) -> float:
    from dmt.config import load_config
    from dmt.train.loop import build, train_step

    cfg = load_config(CONFIG, [*SMALL, f"train.device={device}", f"train.precision={precision}"])
    t = build(cfg)
    batch = next(t.source.train_batches(cfg.train.batch_size)).to(device)
    loss, _ = train_step(t, batch)
    return float(loss)


def dmt_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmt", *args], capture_output=True, text=True, timeout=timeout)


def part(results: dict, name: str, fn) -> None:
    start = time.perf_counter()
    try:
        results[name] = {"result": fn(), "seconds": round(time.perf_counter() - start, 1)}
    except Exception as e:  # noqa: BLE001 - a part that fails is recorded, the others still run
        results[name] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"}
    print(f"{name}: {results[name]}", flush=True)


def verify_on_cuda(tmp: Path) -> dict:
    out = tmp / "verify.json"
    r = dmt_cli(
        "verify",
        "--config",
        CONFIG,
        "--set",
        *SMALL,
        "train.device=cuda",
        "--hosts",
        "1",
        "--ranks-per-host",
        "1",
        "--out",
        str(out),
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return json.loads(out.read_text())


def train_on_cuda(tmp: Path, steps: int, precision: str) -> dict:
    run = tmp / f"train_{precision}"
    r = dmt_cli(
        "train",
        "--config",
        CONFIG,
        "--set",
        *SMALL,
        "train.device=cuda",
        f"train.steps={steps}",
        f"train.precision={precision}",
        "--out",
        str(run),
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    s = json.loads((run / "summary.json").read_text())
    return {k: s[k] for k in ("examples_per_s", "step_ms", "auc", "logloss", "step_breakdown_ms")}


def resume_on_cuda(tmp: Path) -> dict:
    def run(out: Path, steps: int, resume: bool) -> None:
        args = [
            "train",
            "--config",
            CONFIG,
            "--set",
            *SMALL,
            "train.device=cuda",
            f"train.steps={steps}",
            "--out",
            str(out),
        ]
        r = dmt_cli(*args, *(["--resume"] if resume else []))
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip().splitlines()[-1])

    run(tmp / "resumed", 10, False)
    run(tmp / "resumed", 20, True)
    run(tmp / "straight", 20, False)
    a = torch.load(tmp / "resumed" / "model.pt", weights_only=True)["state"]
    b = torch.load(tmp / "straight" / "model.pt", weights_only=True)["state"]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if k.startswith("model/"))
    return {"max_abs_diff": diff, "ok": diff <= 1e-5}


def embedding_backends() -> dict:
    if not Path("benchmarks/embedding/run.py").is_file():
        return {"skipped": "benchmarks/embedding is not in this checkout"}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.embedding.run", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["failed"])[-1])
    return {"output": r.stdout.strip().splitlines()[-12:]}


def report(result: dict, out: Path) -> None:
    lines = ["# GPU check", "", *provenance_lines(result), ""]
    for name, value in result["parts"].items():
        lines.append(f"- **{name}**: `{json.dumps(value)}`")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default="benchmarks/gpu")
    args = p.parse_args()
    result = {**provenance(), "parts": {}}
    parts = result["parts"]
    part(parts, "cpu first-step loss (fp32)", lambda: first_step_loss("cpu", "fp32"))
    if not torch.cuda.is_available():
        print("benchmarks/gpu: no CUDA device here (torch.cuda.is_available() is False); the rest needs a GPU")
        raise SystemExit(2)
    result["gpu"] = torch.cuda.get_device_name(0)
    part(parts, "cuda first-step loss (fp32)", lambda: first_step_loss("cuda", "fp32"))
    part(parts, "cuda first-step loss (bf16)", lambda: first_step_loss("cuda", "bf16"))
    cpu, cuda = parts["cpu first-step loss (fp32)"], parts["cuda first-step loss (fp32)"]
    if "result" in cpu and "result" in cuda:
        parts["first-step loss, cuda - cpu (fp32)"] = {
            "result": cuda["result"] - cpu["result"],
            "ok": abs(cuda["result"] - cpu["result"]) <= 1e-4,
        }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        part(parts, "dmt verify, world of one on CUDA", lambda: verify_on_cuda(tmp))
        for precision in ("fp32", "bf16"):
            part(parts, f"training on CUDA ({precision})", lambda p=precision: train_on_cuda(tmp, args.steps, p))
        part(parts, "resume on CUDA", lambda: resume_on_cuda(tmp))
    part(parts, "embedding backends (lookup + update)", embedding_backends)
    report(result, Path(args.out))
    print(f"wrote {args.out}/results.md")


if __name__ == "__main__":
    main()
