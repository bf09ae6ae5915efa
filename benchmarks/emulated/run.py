"""Measured speed on an emulated cluster (needs root): flat (tables whole, row-wise over the world,
table-row-wise), SPTT (CR 1, tables whole and row-wise inside the host) and SPTT + Tower Modules
(CR 2, 4, 8) on 2 hosts x 2 ranks and 4 hosts x 1 rank, cross-host links shaped with tbf, each
beside the cost model's prediction for the same emulated topology.

    .venv/bin/python -m benchmarks.emulated.run [--mbit 100] [--steps 200] [--runs "flat,flat row"]

Per topology, a calibration run (calibrate.py) first measures the cluster's latencies, loopback
bandwidth and per-process runtime memory; `dmt.cost.presets.emulated` turns them and the tbf rate
into a Cluster. Then each training run is predicted (communication time, per-rank memory) and
measured. Writes results.json and results.md here:

    speed       median step time and examples/s, speedup over flat
    comm        predicted all-to-all + all-reduce seconds per step against the measured time with a
                collective in flight ("busy", the rank that waited least)
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
from dmt.distributed.topology import Layout
from dmt.emulate import emulate

HERE = Path(__file__).parent
HEADER_BYTES = 66  # per packet on the wire: Ethernet 14 + IPv4 20 + TCP with timestamps 32
FLAT = ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"]
SPTT = ["dist.mode=sptt", "model.tower_module=identity"]
RUNS = [  # name, cost-model mode, compression ratio, overrides
    ("flat", "flat", None, FLAT),
    ("flat row", "flat", None, [*FLAT, 'model.table_sharding={"*"="row"}']),
    ("flat table_row", "flat", None, [*FLAT, 'model.table_sharding={"*"="table_row"}']),
    ("sptt cr1", "sptt", None, SPTT),
    (
        "sptt cr1 row",
        "sptt",
        None,
        ["dist.mode=sptt", "model.tower_module=identity", 'model.table_sharding={"*"="row"}'],
    ),
    *[
        (
            f"sptt+tm cr{cr}",
            "sptt_tm",
            float(cr),
            ["dist.mode=sptt", "model.tower_module=compress", f"model.compression_ratio={cr}"],
        )
        for cr in (2, 4, 8)
    ],
]


def calibrate(hosts: int, per_host: int, mbit: float, queue_ms: float) -> dict:
    out = Path("runs/bench_emulated") / f"{hosts}x{per_host}" / "calibration"
    return emulate(
        hosts, per_host, mbit, ["--out", str(out)], entry=("benchmarks.emulated.calibrate",), queue_ms=queue_ms
    )


def predict(config: str, overrides: list[str], mode: str, ratio: float | None, layout: Layout, cluster) -> dict:
    cfg = load_config(config, overrides)
    est = Estimator(cfg, cluster)
    towers = None if mode == "flat" else est.towers_for(layout.hosts)[0]
    e = est.run(mode, est.shape(mode, towers, ratio), layout)
    return {
        "comm_ms": 1e3 * e.timing.comm_s,
        "alltoall_ms": 1e3 * e.timing.alltoall_s,
        "allreduce_ms": 1e3 * e.timing.allreduce_s,
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
    p.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    p.add_argument("--queue-ms", type=float, default=100.0, help="link queue depth (dmt emulate --queue-ms)")
    p.add_argument(
        "--repredict", action="store_true", help="only redo the predictions of the stored results (cost model changed)"
    )
    args = p.parse_args()
    stem = "results" if args.queue_ms == 100 else f"results_queue{args.queue_ms:g}ms"
    if args.runs:  # a subset never overwrites the full table
        stem += "_subset"
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
        for name, mode, ratio, overrides in RUNS:
            if args.runs and name not in args.runs.split(","):
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
            s = emulate(hosts, per_host, args.mbit, train_args, queue_ms=args.queue_ms)
            pred = predict(args.config, settings, mode, ratio, layout, cluster)
            measured = s["comm"]["time_ms"]["min"]
            rows.append(
                {
                    "topology": topo,
                    "run": name,
                    "examples_per_s": s["examples_per_s"],
                    "step_ms": s["step_ms"],
                    "step_breakdown_ms": s["step_breakdown_ms"],
                    "auc": s["auc"],
                    "cross_host_bytes_per_step_rank": s["comm"]["cross_host_bytes"],
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
        base = next((x for x in rows if x["topology"] == r["topology"] and x["run"] == "flat"), None)
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


def repredict(result: dict) -> None:
    """Predict the stored measurements again from their calibrations (the predictions never see the
    measurements, so this is the same as a fresh run with the current cost model)."""
    settings_of = {name: (mode, ratio, overrides) for name, mode, ratio, overrides in RUNS}
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
        "## Speed",
        "",
        "| topology | run | examples/s | speedup vs flat | median step ms | cross-host B/step/rank | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['run']} | {r['examples_per_s']:.0f} "
            f"| {'-' if r['speedup_vs_flat'] is None else format(r['speedup_vs_flat'], '.2f') + 'x'} "
            f"| {r['step_ms']['median']:.1f} | {r['cross_host_bytes_per_step_rank']:,.0f} | {r['auc']:.4f} |"
        )
    lines += [
        "",
        "## Communication time: cost model against measurement (ms per step)",
        "",
        "Predicted: `dmt.cost` on `presets.emulated(rate, calibrated loopback and latencies)`, all-to-alls and the "
        "ring all-reduce one after another. Measured, per step, on the rank where it is smallest: *net*, the time "
        "with a collective in flight counted from the moment its last member entered it (communication without "
        "the wait for late ranks, which is compute imbalance; the error column uses it); *busy*, the same "
        "including those waits; the all-to-alls alone (per phase) and the all-reduce alone, which overlaps the "
        "backward's exchanges and so is not additive.",
        "",
        "| topology | run | predicted all-to-all | predicted all-reduce | predicted total | measured net "
        "| measured busy | measured all-to-all | measured all-reduce | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, m = r["comm_predicted_ms"], r["comm_measured_ms"]
        lines.append(
            f"| {r['topology']} | {r['run']} | {p['alltoall_ms']:.1f} | {p['allreduce_ms']:.1f} | {p['comm_ms']:.1f} "
            f"| {m.get('after_last_arrival', float('nan')):.1f} | {m['busy']:.1f} | {m['alltoall']:.1f} "
            f"| {m['allreduce']:.1f} | {100 * r['comm_error']:+.1f}% |"
        )
    lines += ["", "## How close CR 4 gets to its limit", ""]
    for topo in dict.fromkeys(r["topology"] for r in rows):
        flat = next((r for r in rows if r["topology"] == topo and r["run"] == "flat"), None)
        cr4 = next((r for r in rows if r["topology"] == topo and r["run"] == "sptt+tm cr4"), None)
        if cr4 is None or flat is None:
            continue
        byte_share = cr4["cross_host_bytes_per_step_rank"] / flat["cross_host_bytes_per_step_rank"]
        step, busy = cr4["step_ms"]["median"], cr4["comm_measured_ms"]["busy"]
        intra = sum(v for k, v in cr4["comm_measured_ms"]["by_phase"].items() if k.startswith("intra."))
        lines.append(
            f"- {topo}: SPTT+TM CR 4 runs at {cr4['speedup_vs_flat']:.2f}x flat. It sends {byte_share:.2f} of flat's "
            f"cross-host bytes, so a step that were all cross-host transfer would gain {1 / byte_share:.1f}x. Of its "
            f"{step:.0f} ms median step, {busy:.0f} ms have a collective in flight ({intra:.0f} ms of them in the "
            f"intra-host hop of SPTT steps 2 and 4) and {step - busy:.0f} ms have none: data, lookups, Tower "
            "Modules, the dense part, the optimizer and the copies between them, which compression does not shrink."
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
