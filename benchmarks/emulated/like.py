"""The emulated cluster at a GPU's ratios (needs root): two tiers of links, time-dilated to stand
for a GPU cluster (`dmt emulate --like`), flat / SPTT CR 1 / SPTT+TM CR 2, 4 and per-tower 4, 4, 8, 8
measured beside the cost model's end-to-end prediction.

    .venv/bin/python -m benchmarks.emulated.like --like h100 [--topologies 2x2,4x1]
        [--configs demo,paper_dlrm_small] [--steps 200]

Per config and topology:
    1. dilation, on the flat baseline (dmt/emulate/dilate.py): how much slower this machine computes
       its step than the GPU, the batch per rank the link rates need, both rates
    2. the CPU preset: one-device steps of all five variants at that batch (operators counted,
       times measured), the operator cost fitted over them, and each variant's sharded step on
       local loopback ranks for the CPU a rank spends beyond the model's terms (host_s,
       dmt/cost/calibrate.py), --repeats times round robin over the variants, the median
    3. the links' facts: the calibration probe on the two-tier cluster at those rates
    4. each variant trained on that cluster --repeats times, round robin; the prediction
       (dmt/emulate/predict.py) beside the median run
    5. the same layout and batch predicted on the GPU preset: what the emulated cluster stands for
    6. each variant again at the same batch and uplink rate with free intra-host links (loopback
       inside a host, as in results.md): what the intra-host tier costs SPTT at the GPU's ratio

Writes results_like_<gpu>.json and .md here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from benchmarks.common import provenance, provenance_lines
from benchmarks.emulated.run import MODELS
from dmt.config import load_config
from dmt.cost.calibrate import fit_cpu, host_seconds_by_variant, measure_step
from dmt.cost.presets import PRESETS, emulated
from dmt.emulate import emulate
from dmt.emulate.dilate import dilate_config
from dmt.emulate.predict import emulated_cluster, link_facts, predict
from dmt.errors import UserError

HERE = Path(__file__).parent
RUNS_DIR = Path("runs/bench_like")


def settings(steps: int, batch: int, overrides: list[str]) -> list[str]:
    return [
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        "train.progress=false",
        "train.tensorboard=false",
        "data.synthetic.eval_samples=8192",
        *(["model.num_towers=0"] if "dist.mode=flat" in overrides else []),
        *overrides,
    ]


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("+", "_")


def median_run(summaries: list[dict]) -> dict:
    """The run whose examples/s is the median (the lower middle of an even count)."""
    ordered = sorted(summaries, key=lambda r: r["examples_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def one(config: str, topo: str, like: str, steps: int, repeats: int, free_intra_host: bool) -> list[dict]:
    hosts, per_host = (int(x) for x in topo.split("x"))
    flat = load_config(config, settings(steps, load_config(config).train.batch_size, MODELS[0][3]))
    try:
        d = dilate_config(like, flat, hosts, per_host)
    except UserError as e:  # the rates this GPU needs do not fit this machine's links
        print(f"{config} {topo}: {e}", flush=True)
        return [{"config": config, "topology": topo, "refused": str(e)}]
    print(json.dumps({"config": config, "topology": topo, **d.as_dict()}), flush=True)
    variants = [(name, mode, ratio, settings(steps, d.batch_size, ov)) for name, mode, ratio, ov in MODELS]
    measured = {name: measure_step(name, load_config(config, s)) for name, _, _, s in variants}
    cpu = fit_cpu(
        emulated(100.0, 1.0, 0.0, 0.0),
        [(load_config(config, s), mode, ratio, measured[name]) for name, mode, ratio, s in variants],
    )
    host_s = host_seconds_by_variant(
        [(name, load_config(config, s), mode, ratio, measured[name].ops) for name, mode, ratio, s in variants],
        cpu,
        hosts,
        per_host,
        rounds=repeats,
    )
    cpu = dataclasses.replace(cpu, cores_shared=d.cores_shared)
    base = RUNS_DIR / Path(config).stem / topo
    facts = link_facts(hosts, per_host, d.uplink_mbit, base / "probe", intra_host_mbit=d.intra_mbit)
    cluster = emulated_cluster(facts, cpu)
    runs: dict[str, list[dict]] = {name: [] for name, *_ in variants}
    for round_ in range(repeats):  # round robin, so that the machine's drift spreads over all variants
        for name, _, _, s in variants:
            out = base / slug(name) / f"run{round_}"
            train = ["--config", config, "--set", *s, "--out", str(out)]
            summary = emulate(
                hosts, per_host, d.uplink_mbit, train, intra_host_mbit=d.intra_mbit, compute_slowdown=d.compute_slowdown
            )
            runs[name].append(summary)
            print(
                json.dumps(
                    {
                        "config": config,
                        "topology": topo,
                        "run": name,
                        "round": round_,
                        "examples_per_s": summary["examples_per_s"],
                    }
                ),
                flush=True,
            )
    rows = []
    for name, mode, ratio, s in variants:
        cfg = load_config(config, s)
        summary = median_run(runs[name])
        est = predict(
            cfg, dataclasses.replace(cluster, host_s=host_s[name]), hosts, per_host, mode, ratio, measured[name].ops
        )
        gpu = predict(cfg, PRESETS[like], hosts, per_host, mode, ratio, measured[name].ops)
        rows.append(
            {
                "config": config,
                "topology": topo,
                "run": name,
                "batch_size": d.batch_size,
                "examples_per_s": summary["examples_per_s"],
                "examples_per_s_runs": [r["examples_per_s"] for r in runs[name]],
                "step_ms": summary["step_ms"],
                "step_breakdown_ms": summary["step_breakdown_ms"],
                "auc": summary["auc"],
                "comm": {k: v for k, v in summary["comm"].items() if k != "by_phase"},
                "link_tiers": summary.get("link_tiers"),
                "predicted": {"examples_per_s": est.examples_per_s, **est.step.as_dict()},
                "error": est.examples_per_s / summary["examples_per_s"] - 1,
                "gpu_predicted": {"examples_per_s": gpu.examples_per_s, **gpu.step.as_dict()},
                "one_device_ms": {"compute": 1e3 * measured[name].compute_s, "data": 1e3 * measured[name].data_s},
                "host_ms": 1e3 * host_s[name],
            }
        )
        if free_intra_host:
            free = emulate(
                hosts,
                per_host,
                d.uplink_mbit,
                ["--config", config, "--set", *s, "--out", str(base / slug(name) / "free_intra")],
                compute_slowdown=d.compute_slowdown,
            )
            rows[-1]["free_intra_host_examples_per_s"] = free["examples_per_s"]
        keys = ("config", "topology", "run", "examples_per_s", "error", "free_intra_host_examples_per_s")
        print(json.dumps({k: rows[-1].get(k) for k in keys}), flush=True)
    for r in rows:
        base_row = rows[0]
        r["speedup_vs_flat"] = r["examples_per_s"] / base_row["examples_per_s"]
        r["predicted_speedup_vs_flat"] = r["predicted"]["examples_per_s"] / base_row["predicted"]["examples_per_s"]
        r["gpu_speedup_vs_flat"] = r["gpu_predicted"]["examples_per_s"] / base_row["gpu_predicted"]["examples_per_s"]
        if "free_intra_host_examples_per_s" in r:
            free_flat = base_row["free_intra_host_examples_per_s"]
            r["free_intra_host_speedup_vs_flat"] = r["free_intra_host_examples_per_s"] / free_flat
    calibration = {
        "dilation": d.as_dict(),
        "cpu": {k: getattr(cpu, k) for k in ("peak_tflops", "memory_gbps", "op_s", "data_s_per_sample")},
        "links": {k: facts[k] for k in ("latency_cross_s", "latency_intra_s", "cross_goodput_gbps")},
    }
    for r in rows:
        r["calibration"] = calibration
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--like", choices=sorted(PRESETS), default="h100")
    p.add_argument("--configs", default="demo,paper_dlrm_small")
    p.add_argument("--topologies", default="2x2,4x1")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs and host_s calibrations of each variant, round robin; the medians count",
    )
    p.add_argument(
        "--no-free-intra-host", action="store_true", help="skip the runs with loopback inside hosts (step 6)"
    )
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    rows = []
    for config in args.configs.split(","):
        for topo in args.topologies.split(","):
            rows += one(config, topo, args.like, args.steps, args.repeats, not args.no_free_intra_host)
    result = {**provenance(), "like": args.like, "steps": args.steps, "repeats": args.repeats, "results": rows}
    (HERE / f"results_like_{args.like}.json").write_text(json.dumps(result, indent=2))
    (HERE / f"results_like_{args.like}.md").write_text(report(result))


def spread(row: dict) -> str:
    runs = row.get("examples_per_s_runs", [])
    return f" ({min(runs):.0f}-{max(runs):.0f})" if len(runs) > 1 else ""


def report(result: dict) -> str:
    like = result["like"]
    refused = [r for r in result["results"] if "refused" in r]
    rows = [r for r in result["results"] if "refused" not in r]
    lines = [
        f"# Emulated cluster at {like}'s ratios: two tiers of links, time-dilated",
        "",
        *provenance_lines(result, " (each emulated host pinned to its own share of them)"),
        f"{result['steps']} steps per run; each variant run {result.get('repeats', 1)} times, round robin: "
        "examples/s is the median run's (all runs' range in brackets), and the other columns are that run's",
        "",
        "## Speed: measured against the cost model's end-to-end prediction",
        "",
        f"Predicted: `dmt.emulate.predict` (links: the configured rates and the probe's latencies; compute: "
        f"this CPU's preset). {like}: the same layout and batch on the {like} preset (what the emulated "
        "cluster stands for; latencies there are not dilated, see docs/emulation.md).",
        "",
        "| config | topology | batch/rank | run | examples/s | predicted | error | speedup | predicted speedup "
        f"| {like} speedup | AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['topology']} | {r['batch_size']} | {r['run']} "
            f"| {r['examples_per_s']:.0f}{spread(r)} "
            f"| {r['predicted']['examples_per_s']:.0f} | {100 * r['error']:+.1f}% | {r['speedup_vs_flat']:.2f}x "
            f"| {r['predicted_speedup_vs_flat']:.2f}x | {r['gpu_speedup_vs_flat']:.2f}x | {r['auc']:.4f} |"
        )
    for r in refused:
        lines.append(f"| {r['config']} | {r['topology']} | - | refused: {r['refused']} | | | | | | | |")
    free = [r for r in rows if "free_intra_host_speedup_vs_flat" in r]
    if free:
        lines += [
            "",
            "## Against free intra-host links (loopback inside hosts, the same batch and uplink rate)",
            "",
            f"| config | topology | run | speedup at {like}'s ratio | speedup with free intra-host links "
            "| examples/s with free intra-host links |",
            "|---|---|---|---|---|---|",
        ]
        for r in free:
            lines.append(
                f"| {r['config']} | {r['topology']} | {r['run']} | {r['speedup_vs_flat']:.2f}x "
                f"| {r['free_intra_host_speedup_vs_flat']:.2f}x | {r['free_intra_host_examples_per_s']:.0f} |"
            )
    lines += [
        "",
        "## Where the predicted step goes (ms): compute, exposed communication, overlap",
        "",
        "| config | topology | run | measured step | predicted step | compute | exposed comm | overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pr = r["predicted"]
        lines.append(
            f"| {r['config']} | {r['topology']} | {r['run']} | {r['step_ms']['median']:.1f} | {1e3 * pr['step_s']:.1f} "
            f"| {1e3 * pr['compute_s']:.1f} | {1e3 * pr['exposed_comm_s']:.1f} | {1e3 * pr['overlap_s']:.1f} |"
        )
    lines += ["", "## The tiers' wire bytes against our counters (training loop, TCP payload)", ""]
    lines += ["| config | topology | run | intra-host | cross-host |", "|---|---|---|---|---|"]
    for r in rows:
        t = r["link_tiers"]
        cells = [
            f"{100 * (t[k]['payload_bytes'] / t[k]['counted_bytes'] - 1):+.2f}%" if t[k]["counted_bytes"] else "-"
            for k in ("intra", "cross")
        ]
        lines.append(f"| {r['config']} | {r['topology']} | {r['run']} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Calibration", ""]
    seen = set()
    for r in rows:
        key = (r["config"], r["topology"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- {r['config']} {r['topology']}: `{json.dumps(r['calibration'])}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
