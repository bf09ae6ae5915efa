"""Measured speed on an emulated cluster (needs root): flat, SPTT (CR 1) and SPTT + Tower Modules
(CR 2, 4, 8), each with fp32 and bf16 exchanges (pooled rows, their gradients and the dense
all-reduce), serial and pipelined, ids deduplicated; plus each model with plain fp32 ids and a
serial step (the runs before deduplication, pipelining and bf16), and flat with every table cut
row-wise (over the world, and over one host: table_row) and SPTT CR 1 with row-wise tables.
On 2 hosts x 2 ranks and 4 hosts x 1 rank, cross-host links shaped with tbf, each beside the cost
model's prediction for the same emulated topology. One run of the script produces every row.

    .venv/bin/python -m benchmarks.emulated.run [--mbit 100] [--steps 200] [--only SUBSTRING]

Per topology, a calibration run (dmt/emulate/probe.py) first measures the cluster's latencies, loopback
bandwidth and per-process runtime memory; `dmt.cost.presets.emulated` turns them and the tbf rate
into a Cluster. Then each training run is predicted (communication time, per-rank memory) and
measured. Writes results.json and results.md here:

    speed       median step time and examples/s, speedup over flat at the same wire settings
    limit       examples/s against the communication-bound rate: the bytes the busiest host link
                carried per training step (kernel counters, headers included) at the link's rate
    comm        predicted all-to-all + all-reduce seconds per step against the measured time with a
                collective in flight inside each step's window, counted once its last member arrived
                (a pipelined step's window also holds the next batch's input exchange)
    ids         the ids' share (counts and ids of the input exchanges) of the cross-host bytes,
                before (plain ids) and after deduplication
    wire        the TCP payload the host's link carried during the training loop (kernel counters:
                bytes - 66 B of Ethernet/IPv4/TCP headers per packet) against our counters: the
                all-to-all bytes the host's ranks sent across hosts plus the ring all-reduce's
                2 (W - 1) / W of the dense gradients
    memory      peak resident memory per rank against runtime (calibrated) + model state (predicted)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import provenance, provenance_lines
from dmt.config import load_config
from dmt.cost.estimate import Estimator
from dmt.cost.presets import emulated
from dmt.cost.traffic import is_input_phase
from dmt.distributed.topology import Layout
from dmt.emulate import emulate

HERE = Path(__file__).parent
HEADER_BYTES = 66  # per packet on the wire: Ethernet 14 + IPv4 20 + TCP with timestamps 32
MODELS = [  # name, cost-model mode, compression ratio, overrides
    ("flat", "flat", None, ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"]),
    ("sptt cr1", "sptt", None, ["dist.mode=sptt", "model.tower_module=identity"]),
    *[
        (
            f"sptt+tm cr{cr}",
            "sptt_tm",
            float(cr),
            ["dist.mode=sptt", "model.tower_module=compress", f"model.compression_ratio={cr}"],
        )
        for cr in (2, 4)
    ],
    # CR 8 cannot be delivered by the demo's towers of 4 features x 32 (16 floats are half an
    # embedding): its most compressed model sends one embedding per tower, ratios 4, 4, 8, 8 (6 overall)
    (
        "sptt+tm cr4,4,8,8",
        "sptt_tm",
        None,
        ["dist.mode=sptt", "model.tower_module=compress", "model.tower_compression_ratios=[4.0, 4.0, 8.0, 8.0]"],
    ),
]
SHARDED = [  # name, cost-model mode, overrides: every table row-wise over the world, over one host, inside SPTT's host
    ("flat row", "flat", [*MODELS[0][3], 'model.table_sharding={"*"="row"}']),
    ("flat table_row", "flat", [*MODELS[0][3], 'model.table_sharding={"*"="table_row"}']),
    ("sptt cr1 row", "sptt", [*MODELS[1][3], 'model.table_sharding={"*"="row"}']),
]
PRECISIONS = {"fp32": "fp32", "bf16": "bf16"}


def wire_settings(precision: str, pipelined: bool, dedup: bool) -> list[str]:
    return [
        f"dist.comm_precision={precision}",
        f"dist.allreduce_precision={precision}",
        f"train.pipeline={str(pipelined).lower()}",
        f"dist.dedup_ids={str(dedup).lower()}",
    ]


def run_name(model: str, precision: str, pipelined: bool, dedup: bool) -> str:
    return f"{model} {precision} {'pipelined' if pipelined else 'serial'}{'' if dedup else ' plain-ids'}"


RUNS = [  # name, model, cost-model mode, compression ratio, overrides, (precision, pipelined, dedup)
    *[
        (run_name(m, p, pipe, True), m, mode, ratio, [*ov, *wire_settings(p, pipe, True)], (p, pipe, True))
        for p in PRECISIONS
        for pipe in (False, True)
        for m, mode, ratio, ov in MODELS
    ],
    *[
        (
            run_name(m, "fp32", False, False),
            m,
            mode,
            ratio,
            [*ov, *wire_settings("fp32", False, False)],
            ("fp32", False, False),
        )
        for m, mode, ratio, ov in MODELS
    ],
    *[  # tables cut into row shards (issue 12), fp32 serial with deduplicated ids like the grid's first rows
        (
            run_name(m, "fp32", False, True),
            m,
            mode,
            None,
            [*ov, *wire_settings("fp32", False, True)],
            ("fp32", False, True),
        )
        for m, mode, ov in SHARDED
    ],
]


def calibrate(hosts: int, per_host: int, mbit: float, queue_ms: float) -> dict:
    out = Path("runs/bench_emulated") / f"{hosts}x{per_host}" / "calibration"
    return emulate(hosts, per_host, mbit, ["--out", str(out)], entry=("dmt.emulate.probe",), queue_ms=queue_ms)


def predict(config: str, overrides: list[str], mode: str, ratio: float | None, layout: Layout, cluster) -> dict:
    cfg = load_config(config, overrides)
    est = Estimator(cfg, cluster)
    towers = None if mode == "flat" else est.towers_for(layout.hosts)[0]
    e = est.run(mode, est.shape(mode, towers, ratio), layout)
    tiers = e.traffic.mean()["by_phase_tier"]
    return {
        "comm_ms": 1e3 * e.timing.comm_s,
        "alltoall_ms": 1e3 * e.timing.alltoall_s,
        "allreduce_ms": 1e3 * e.timing.allreduce_s,
        "input_ms": 1e3 * e.timing.input_s,
        "exposed_ms": 1e3 * e.timing.exposed_s,
        "cross_host_bytes": e.traffic.mean()["cross_host_bytes"],
        "ids_cross_host_bytes": sum(t["cross_host_bytes"] for p, t in tiers.items() if is_input_phase(p)),
        "model_state_bytes": max(r.total_bytes for r in e.memory),
    }


def wire(summary: dict, world: int) -> list[dict]:
    """Per host: TCP payload on the link against the counted bytes (see the module docstring)."""
    out = []
    for h in summary["link_train"]:
        payload = h["tx_bytes"] - HEADER_BYTES * h["tx_packets"]
        counted = h["counted_cross_host_bytes"] + 2 * (world - 1) / world * h["allreduce_payload_bytes_per_rank"]
        out.append(
            {
                "host": h["host"],
                "tx_bytes": h["tx_bytes"],
                "tx_payload_bytes": payload,
                "counted_bytes": counted,
                "payload_vs_counted": payload / counted - 1,
                "tx_bytes_vs_counted": h["tx_bytes"] / counted - 1,
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="dmt/configs/demo.toml")
    p.add_argument("--mbit", type=float, default=100.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--topologies", default="2x2,4x1")
    p.add_argument("--queue-ms", type=float, default=100.0, help="link queue depth (dmt emulate --queue-ms)")
    p.add_argument(
        "--repredict", action="store_true", help="only redo the predictions of the stored results (cost model changed)"
    )
    p.add_argument("--only", default="", help="run only the runs whose name contains this (a short try)")
    args = p.parse_args()
    stem = "results" if args.queue_ms == 100 else f"results_queue{args.queue_ms:g}ms"
    if args.repredict:
        result = json.loads((HERE / f"{stem}.json").read_text())
        repredict(result)
        (HERE / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (HERE / f"{stem}.md").write_text(report(result))
        return
    rows, calibrations = [], {}
    for topo in args.topologies.split(","):
        hosts, per_host = (int(x) for x in topo.split("x"))
        layout = Layout(hosts, per_host)
        cal = calibrate(hosts, per_host, args.mbit, args.queue_ms)
        calibrations[topo] = {k: v for k, v in cal.items() if k != "link_bytes"}  # runtime RSS kept
        cluster = emulated(
            args.mbit,
            cal["loopback_gbps"] or 1.0,
            cal["latency_intra_s"],
            cal["latency_cross_s"],
            cal["emulation"]["burst_bytes"],
        )
        runtime_rss = max(cal["runtime_rss_bytes"])
        for name, model, mode, ratio, overrides, (precision, pipelined, dedup) in RUNS:
            if args.only not in name:
                continue
            out = Path("runs/bench_emulated") / topo / name.replace(" ", "_").replace("+", "_")
            settings = [
                f"train.steps={args.steps}",
                "train.progress=false",
                "train.tensorboard=false",
                "data.synthetic.eval_samples=8192",
                *overrides,
            ]
            train_args = ["--config", args.config, "--set", *settings, "--out", str(out)]
            pred = predict(args.config, settings, mode, ratio, layout, cluster)  # first: a bad model costs no run
            s = emulate(hosts, per_host, args.mbit, train_args, queue_ms=args.queue_ms)
            measured = s["comm"]["time_ms"]["min"]
            rows.append(
                {
                    "topology": topo,
                    "run": name,
                    "model": model,
                    "precision": precision,
                    "pipelined": pipelined,
                    "dedup_ids": dedup,
                    "global_batch": layout.world * load_config(args.config, settings).train.batch_size,
                    "examples_per_s": s["examples_per_s"],
                    "step_ms": s["step_ms"],
                    "step_breakdown_ms": s["step_breakdown_ms"],
                    "auc": s["auc"],
                    "cross_host_bytes_per_step_rank": s["comm"]["cross_host_bytes"],
                    "ids_cross_host_bytes_per_step_rank": sum(
                        b for ph, b in s["comm"]["cross_host_by_phase"].items() if is_input_phase(ph)
                    ),
                    "link_tx_bytes_per_step": [h["tx_bytes"] / args.steps for h in s["link_train"]],
                    "allreduce_bytes_per_step_rank": s["comm"]["allreduce_bytes"],
                    "comm_measured_ms": measured,
                    "comm_predicted_ms": pred,
                    "comm_error": pred["comm_ms"] / measured.get("after_last_arrival", measured["busy"]) - 1,
                    "wire": wire(s, layout.world),
                    "peak_rss_bytes": s["peak_rss_bytes"],
                    "memory_predicted_bytes": runtime_rss + pred["model_state_bytes"],
                    "memory_error": (runtime_rss + pred["model_state_bytes"]) / max(s["peak_rss_bytes"]) - 1,
                }
            )
            print(json.dumps({k: rows[-1][k] for k in ("topology", "run", "examples_per_s", "comm_error")}), flush=True)
    for r in rows:
        limit(r, args.mbit)
        base = flat_of(rows, r)
        r["speedup_vs_flat"] = r["examples_per_s"] / base["examples_per_s"] if base else None
    result = {
        **provenance(),
        "cross_host_mbit": args.mbit,
        "queue_ms": args.queue_ms,
        "steps": args.steps,
        "config": args.config,
        "calibration": calibrations,
        "results": rows,
    }
    (HERE / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (HERE / f"{stem}.md").write_text(report(result))


def flat_of(rows: list[dict], r: dict) -> dict | None:
    """The flat run of the same topology and wire settings as `r`."""
    same = ("topology", "precision", "pipelined", "dedup_ids")
    return next((x for x in rows if x["model"] == "flat" and all(x[k] == r[k] for k in same)), None)


def limit(r: dict, mbit: float) -> None:
    """The communication-bound rate: the busiest host link's bytes per step (headers included) at
    the link's rate -> the fewest ms a step can take, and the examples/s that allows."""
    wire_ms = 1e3 * max(r["link_tx_bytes_per_step"]) / (mbit * 1e6 / 8)
    r["wire_ms_per_step"] = wire_ms
    r["comm_bound_examples_per_s"] = 1e3 * r["global_batch"] / wire_ms
    r["share_of_comm_bound"] = r["examples_per_s"] / r["comm_bound_examples_per_s"]


def repredict(result: dict) -> None:
    """Predict the stored measurements again from their calibrations (the predictions never see the
    measurements, so this is the same as a fresh run with the current cost model)."""
    settings_of = {name: (mode, ratio, overrides) for name, _, mode, ratio, overrides, _ in RUNS}
    for r in result["results"]:
        hosts, per_host = (int(x) for x in r["topology"].split("x"))
        cal = result["calibration"][r["topology"]]
        cluster = emulated(
            result["cross_host_mbit"],
            cal["loopback_gbps"] or 1.0,
            cal["latency_intra_s"],
            cal["latency_cross_s"],
            cal["emulation"]["burst_bytes"],
        )
        mode, ratio, overrides = settings_of[r["run"]]
        settings = [f"train.steps={result['steps']}", "data.synthetic.eval_samples=8192", *overrides]
        pred = predict(result["config"], settings, mode, ratio, Layout(hosts, per_host), cluster)
        measured = r["comm_measured_ms"]
        r["comm_predicted_ms"] = pred
        r["comm_error"] = pred["comm_ms"] / measured.get("after_last_arrival", measured["busy"]) - 1
        runtime = max(cal["runtime_rss_bytes"])
        r["memory_predicted_bytes"] = runtime + pred["model_state_bytes"]
        r["memory_error"] = r["memory_predicted_bytes"] / max(r["peak_rss_bytes"]) - 1
    result["predicted_at"] = provenance()["commit"]


def _find(rows: list[dict], topology: str, model: str, precision: str, pipelined: bool, dedup: bool = True):
    return next(
        (
            r
            for r in rows
            if (r["topology"], r["model"], r["precision"], r["pipelined"], r["dedup_ids"])
            == (topology, model, precision, pipelined, dedup)
        ),
        None,
    )


def acceptance(rows: list[dict]) -> list[str]:
    """The issue's speed goals, one line each, per topology (only where the runs exist)."""
    lines = []
    for topo in dict.fromkeys(r["topology"] for r in rows):
        cr4 = _find(rows, topo, "sptt+tm cr4", "bf16", True)
        flat = _find(rows, topo, "flat", "bf16", True)
        cr1 = _find(rows, topo, "sptt cr1", "bf16", True)
        if cr4 is not None:
            lines.append(
                f"- {topo}: pipelined bf16 SPTT+TM CR 4 runs at {100 * cr4['share_of_comm_bound']:.0f}% of its "
                f"communication-bound rate ({cr4['examples_per_s']:.0f} of {cr4['comm_bound_examples_per_s']:.0f} "
                f"examples/s: {cr4['wire_ms_per_step']:.1f} ms of wire per step against a "
                f"{cr4['step_ms']['median']:.1f} ms median step; goal 80%)"
                + (
                    f", {cr4['examples_per_s'] / flat['examples_per_s']:.2f}x pipelined bf16 flat (goal 2.5x)"
                    if flat
                    else ""
                )
            )
        if cr1 is not None and flat is not None:
            lines.append(
                f"- {topo}: pipelined bf16 SPTT CR 1 runs at {cr1['examples_per_s'] / flat['examples_per_s']:.2f}x "
                "pipelined bf16 flat (goal 1.0x)"
            )
    errors = [abs(r["comm_error"]) for r in rows]
    if errors:
        lines.append(f"- cost model: largest communication-time error {100 * max(errors):.1f}% (goal 15%)")
    return lines


def report(result: dict) -> str:
    rows = result["results"]
    mib = 2**20
    lines = [
        f"# Emulated cluster, cross-host links shaped to {result['cross_host_mbit']:g} Mbit/s per host, "
        f"queues of {result['queue_ms']:g} ms",
        "",
        *provenance_lines(result, " (each emulated host pinned to its own share of them)"),
        f"Config: `{result['config']}`, {result['steps']} steps per run, one run each",
        *(
            [
                f"Predictions redone from the stored calibrations with the cost model at `{result['predicted_at']}` "
                "(`--repredict`)"
            ]
            if "predicted_at" in result
            else []
        ),
        "",
        "Runs: each model at fp32 and bf16 (pooled rows, their gradients and the dense all-reduce on the wire), "
        "serial and pipelined (the next batch's input exchange in flight while a batch trains), ids deduplicated "
        "and bit-packed; *plain-ids* rows: fp32, serial, ids as int32 (the runs before this work).",
        "",
        "## Goals",
        "",
        *acceptance(rows),
        "",
        "## Speed",
        "",
        "Speedup: against flat at the same precision, step and ids. Comm-bound: examples/s if a step took only the "
        "busiest host link's bytes per step (kernel counters, headers included) at the link rate.",
        "",
        "| topology | run | examples/s | speedup vs flat | median step ms | wire ms/step | share of comm-bound "
        "| cross-host B/step/rank | AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = "-" if r["speedup_vs_flat"] is None else f"{r['speedup_vs_flat']:.2f}x"
        lines.append(
            f"| {r['topology']} | {r['run']} | {r['examples_per_s']:.0f} | {speedup} "
            f"| {r['step_ms']['median']:.1f} | {r['wire_ms_per_step']:.1f} | {100 * r['share_of_comm_bound']:.0f}% "
            f"| {r['cross_host_bytes_per_step_rank']:,.0f} | {r['auc']:.4f} |"
        )
    lines += [
        "",
        "## Ids on the wire, before and after deduplication",
        "",
        "Ids' share: the input exchanges' counts and ids among the cross-host bytes each rank sends per step "
        "(our counters; predicted: the cost model, for deduplicated ids its expectation for the synthetic Zipf ids).",
        "",
        "| topology | model | plain ids: id B/step/rank | share | deduplicated: id B/step/rank | share "
        "| predicted deduplicated | id bytes saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for topo in dict.fromkeys(r["topology"] for r in rows):
        for model, *_ in MODELS:
            before, after = _find(rows, topo, model, "fp32", False, False), _find(rows, topo, model, "fp32", False)
            if before is None or after is None:
                continue
            b, a = before["ids_cross_host_bytes_per_step_rank"], after["ids_cross_host_bytes_per_step_rank"]
            lines.append(
                f"| {topo} | {model} | {b:,.0f} | {100 * b / before['cross_host_bytes_per_step_rank']:.1f}% "
                f"| {a:,.0f} | {100 * a / after['cross_host_bytes_per_step_rank']:.1f}% "
                f"| {after['comm_predicted_ms']['ids_cross_host_bytes']:,.0f} | {1 - a / b:.0%} |"
            )
    lines += [
        "",
        "## Communication time: cost model against measurement (ms per step)",
        "",
        "Predicted: `dmt.cost` on `presets.emulated(rate, calibrated loopback and latencies)`, all-to-alls and the "
        "ring all-reduce one after another; *exposed* leaves out the input exchange a pipelined step hides. "
        "Measured, per step, on the rank where it is smallest: *net*, the time inside the step's window with a "
        "collective in flight counted from the moment its last member entered it (a pipelined step's window holds "
        "the next batch's input exchange; the error column uses it); *busy*, the collectives of the step's own "
        "batch including the waits for late ranks; the all-to-alls alone and the all-reduce alone, which overlaps "
        "the backward's exchanges and so is not additive.",
        "",
        "| topology | run | predicted all-to-all | predicted all-reduce | predicted total | predicted exposed "
        "| measured net | measured busy | measured all-to-all | measured all-reduce | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, m = r["comm_predicted_ms"], r["comm_measured_ms"]
        lines.append(
            f"| {r['topology']} | {r['run']} | {p['alltoall_ms']:.1f} | {p['allreduce_ms']:.1f} | {p['comm_ms']:.1f} "
            f"| {p.get('exposed_ms', p['comm_ms']):.1f} | {m.get('after_last_arrival', float('nan')):.1f} "
            f"| {m['busy']:.1f} | {m['alltoall']:.1f} | {m['allreduce']:.1f} | {100 * r['comm_error']:+.1f}% |"
        )
    lines += [
        "",
        "## The wire against our counters (training loop only, per host)",
        "",
        f"TCP payload = tx bytes - {HEADER_BYTES} B per packet (Ethernet 14 + IPv4 20 + TCP with timestamps 32). "
        "Counted = the all-to-all bytes the host's ranks counted sending across hosts + 2 (W - 1) / W of the "
        "dense gradients all-reduced over the world (gloo's ring crosses each host boundary on one edge).",
        "",
        "| topology | run | host | tx bytes | TCP payload | counted | payload vs counted | tx bytes vs counted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for w in r["wire"]:
            lines.append(
                f"| {r['topology']} | {r['run']} | {w['host']} | {w['tx_bytes']:,.0f} | {w['tx_payload_bytes']:,.0f} "
                f"| {w['counted_bytes']:,.0f} | {100 * w['payload_vs_counted']:+.2f}% "
                f"| {100 * w['tx_bytes_vs_counted']:+.2f}% |"
            )
    lines += [
        "",
        "## Memory per rank (MiB)",
        "",
        "Predicted = the runtime of one rank process (calibrated: torch, dmt and process groups loaded, nothing "
        "built) + the cost model's model state of the largest rank (tables, optimizer state, Tower Modules, dense "
        "head, communication buffers). Measured: peak resident memory of the largest rank over set-up and training.",
        "",
        "| topology | run | predicted | measured peak (max rank) | error |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['run']} | {r['memory_predicted_bytes'] / mib:.0f} "
            f"| {max(r['peak_rss_bytes']) / mib:.0f} | {100 * r['memory_error']:+.1f}% |"
        )
    lines += ["", "## Calibration", ""]
    for topo, cal in result["calibration"].items():
        lines.append(f"- {topo}: `{json.dumps({k: v for k, v in cal.items() if k != 'runtime_rss_bytes'})}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
