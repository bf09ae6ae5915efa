"""Why the slowed like-h100 runs are slower than predicted (needs root for part 2).

    .venv/bin/python -m benchmarks.emulated.overhead

1. Calibration repeats: the demo config's flat baseline, five times in a row. Each time: its
   one-device step at batch 256 and at 8, the two rate microbenchmarks, op_s as the one-batch fit
   (batch 256 alone) gives it, and the two-batch fit's time dilation against h100 (dilate.py).
2. CPU per emulated step: paper_dlrm_small SPTT+TM CR 4, batch 32, on 2x2 at 320 Mbit/s per rank
   and 83 Mbit/s per uplink (the like-h100 rates), unslowed and with compute slowed 11.5x. The
   run's processes' CPU seconds (getrusage of children, user + sys) at 240 steps less those at 80,
   over 160 steps and 4 ranks: a rank's CPU per step, gloo's threads and the kernel's shaping
   included; beside it the one-device step's compute.

Writes results_overhead.json and .md here.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

from benchmarks.common import provenance, provenance_lines
from dmt.config import load_config
from dmt.cost.calibrate import dense_tflops, fit_cpu, measure_step, memory_gbps
from dmt.cost.presets import emulated

HERE = Path(__file__).parent
FLAT = ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity", "train.tensorboard=false"]
TM4 = ["model.tower_module=compress", "model.compression_ratio=4"]
RUN = ["train.batch_size=32", "train.progress=false", "train.tensorboard=false", "data.synthetic.eval_samples=1024"]


def calibration_repeats(times: int = 5) -> list[dict]:
    from dmt.emulate.dilate import dilate_config

    cfg = load_config("demo", FLAT)
    small = load_config("demo", [*FLAT, "train.batch_size=8"])
    rows = []
    for _ in range(times):
        m, m8 = measure_step("256", cfg), measure_step("8", small)
        rates = (dense_tflops(), memory_gbps(cfg.model.embedding_dim))
        one_batch = fit_cpu(emulated(100.0, 1.0, 0.0, 0.0), [(cfg, "flat", None, m)], rates)
        d = dilate_config("h100", cfg, 2, 2)
        rows.append(
            {
                "step_256_ms": 1e3 * m.compute_s,
                "step_8_ms": 1e3 * m8.compute_s,
                "tflops": rates[0],
                "memory_gbps": rates[1],
                "one_batch_op_s": one_batch.op_s,
                "dilation_factor": d.factor,
                "dilation_batch": d.batch_size,
                "compute_slowdown": d.compute_slowdown,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_per_step(slowdown: float | None, short: int = 80, long: int = 240) -> float:
    """A rank's CPU seconds per emulated step (see the module docstring)."""
    from dmt.emulate import emulate

    spent = []
    for steps in (short, long):
        before = _children_cpu_s()
        args = ["--config", "paper_dlrm_small", "--set", *RUN, *TM4, f"train.steps={steps}"]
        out = f"runs/bench_overhead/s{slowdown}_{steps}"
        emulate(2, 2, 83.0, [*args, "--out", out], intra_host_mbit=320.0, compute_slowdown=slowdown)
        spent.append(_children_cpu_s() - before)
    return (spent[1] - spent[0]) / (long - short) / 4


def main() -> None:
    result = {**provenance(), "calibration": calibration_repeats()}
    one_device = measure_step("tm4", load_config("paper_dlrm_small", [*RUN, *TM4]))
    result["one_device_compute_ms"] = 1e3 * one_device.compute_s
    result["rank_cpu_ms_per_step"] = {str(s): 1e3 * cpu_per_step(s) for s in (None, 11.5)}
    print(json.dumps({k: result[k] for k in ("one_device_compute_ms", "rank_cpu_ms_per_step")}), flush=True)
    (HERE / "results_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "results_overhead.md").write_text("\n".join(report(result)) + "\n")


def report(result: dict) -> list[str]:
    cal = result["calibration"]
    lines = ["# Calibration repeats and a rank's CPU per emulated step", "", *provenance_lines(result), ""]
    lines += ["## The demo config's flat baseline, calibrated five times in a row", ""]
    lines += ["| step b256 ms | step b8 ms | TFLOP/s | GB/s | one-batch op_s | dilation | batch | slowdown |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in cal:
        s = r["compute_slowdown"]
        lines.append(
            f"| {r['step_256_ms']:.2f} | {r['step_8_ms']:.2f} | {r['tflops']:.3f} | {r['memory_gbps']:.2f} | "
            f"{r['one_batch_op_s']:.2e} | {r['dilation_factor']:.0f}x | {r['dilation_batch']} | "
            f"{'-' if s is None else f'{s:.1f}x'} |"
        )
    cpu = result["rank_cpu_ms_per_step"]
    lines += [
        "",
        "## A rank's CPU per step, paper_dlrm_small SPTT+TM CR 4, batch 32, 2x2 at 320 / 83 Mbit/s",
        "",
        f"- unslowed: {cpu['None']:.1f} ms; compute slowed 11.5x: {cpu['11.5']:.1f} ms",
        f"- the one-device step's compute at the same batch: {result['one_device_compute_ms']:.1f} ms",
    ]
    return lines


if __name__ == "__main__":
    main()
