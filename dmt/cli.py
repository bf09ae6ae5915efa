"""The `dmt` command line: train, verify, eval, data (describe, convert), demo, partition, estimate, plan,
emulate (its contract: docs/design.md, section 5).

Every measuring command takes --out PATH and writes JSON there; progress and tables go to the
terminal. A user mistake prints one line `dmt: error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dmt.distributed.launch import RankFailure
from dmt.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"dmt: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=required,
        help="TOML config file, or the name of a shipped config (demo, synthetic_dlrm, ...)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.steps=20 dist.mode=sptt",
    )


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=0, help="launch N local ranks (0: one process, or torchrun's)")
    p.add_argument("--ranks-per-host", type=int, default=0, help="group ranks into emulated hosts of L ranks")


def _write_json(path: str | Path, payload: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2))


def cmd_train(args: argparse.Namespace) -> int:
    from dmt.config import load_config
    from dmt.train.report import print_summary
    from dmt.train.run import run_training

    cfg = load_config(args.config, args.set)
    # torchrun restarted the ranks after a failure (--max-restarts): continue from the last checkpoint
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    resume = args.resume or restarted
    summary = run_training(cfg, args.out, resume=resume, nproc=args.nproc, ranks_per_host=args.ranks_per_host)
    if summary is not None:
        print_summary(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Flat baseline and SPTT + Tower Modules side by side on the same data and cluster: the
    time-dilated emulated cluster where this machine allows it, loopback links elsewhere."""
    from dmt.config import load_config
    from dmt.emulate.demo import can_emulate, dilation, gpu_prediction, run_emulated
    from dmt.errors import UserError
    from dmt.train.report import print_comparison
    from dmt.train.run import run_training

    out = Path(args.out)
    runs = [
        ("flat", ["dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"]),
        (
            f"sptt+tm cr{args.compression_ratio:g}",
            ["dist.mode=sptt", "model.tower_module=compress", f"model.compression_ratio={args.compression_ratio}"],
        ),
    ]
    runs = [(name, [*overrides, *args.set]) for name, overrides in runs]
    why_not = "--loopback given" if args.loopback else can_emulate(args.hosts, args.ranks_per_host)
    if why_not is None:
        try:  # this machine's speed decides whether any batch fits the links it can shape
            d = dilation(args.config, runs, args.hosts, args.ranks_per_host, args.like)
        except UserError as e:
            why_not = str(e)
    if why_not is None:
        rows = run_emulated(args.config, runs, args.hosts, args.ranks_per_host, args.like, out, d)
    else:
        rows = []
        for name, overrides in runs:
            cfg = load_config(args.config, overrides)
            print(f"== {name}: {args.hosts} hosts x {args.ranks_per_host} ranks, loopback links", flush=True)
            summary = run_training(
                cfg, out / name.split()[0], nproc=args.hosts * args.ranks_per_host, ranks_per_host=args.ranks_per_host
            )
            rows.append({"name": name, "summary": summary})
    print()
    print_comparison(rows)
    flat, sptt = rows[0]["summary"], rows[1]["summary"]
    if why_not is None:
        batch = rows[0]["dilation"]["batch_size"]
    else:
        batch = load_config(args.config, runs[0][1]).train.batch_size
    cfgs = [load_config(args.config, [*o, f"train.batch_size={batch}"]) for _, o in runs]
    gpu = gpu_prediction(cfgs, args.hosts, args.ranks_per_host, args.like)
    result = {
        "runs": {r["name"]: r["summary"] for r in rows},
        "links": "emulated" if why_not is None else "loopback",
        "speedup": sptt["examples_per_s"] / flat["examples_per_s"],
        "cross_host_bytes_ratio": sptt["comm"]["cross_host_bytes"] / max(flat["comm"]["cross_host_bytes"], 1),
        "auc_difference": sptt["auc"] - flat["auc"],
        "like": args.like,
        "gpu_predicted_speedup": gpu[1] / gpu[0],
    }
    print(
        f"\nSPTT+TM vs flat: {result['speedup']:.2f}x examples/s, "
        f"{result['cross_host_bytes_ratio']:.2f}x cross-host bytes, AUC {result['auc_difference']:+.4f}"
    )
    if why_not is None:
        result["dilation"] = rows[0]["dilation"]
        result["predicted_speedup"] = rows[1]["predicted_examples_per_s"] / rows[0]["predicted_examples_per_s"]
        print(
            f"measured on links standing for {args.like}: {result['speedup']:.2f}x; the cost model predicted "
            f"{result['predicted_speedup']:.2f}x for this emulated cluster"
        )
    else:
        print(f"links: loopback ({why_not}), so this speedup shows compute alone")
    print(
        f"cost model, {args.hosts} x {args.ranks_per_host} {args.like} at {batch} samples per GPU: "
        f"{result['gpu_predicted_speedup']:.2f}x end to end"
    )
    _write_json(out / "summary.json", result)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dmt.train.checkpoint import load_file, model_weights
    from dmt.train.loop import build, evaluate

    cfg, state = load_file(args.checkpoint)
    t = build(cfg)
    t.model.module.load_state_dict(model_weights(state))
    result = {**evaluate(t, cfg.train.eval_batch_size), "step": int(state["step"]), "model": t.model.module.name}
    result.update(t.source.optimal_metrics() or {})
    print(json.dumps(result, indent=2))
    if args.out:
        _write_json(args.out, result)
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    from dmt.config import load_config
    from dmt.data import make_source

    cfg = load_config(args.config, args.set)
    info = make_source(cfg.data).describe()
    for f in info["features"]:
        print(
            f"{f['name']:>12}  table={f['table']:<10} rows={f['cardinality']:>9}  ids/sample={f['pooling_factor']:.2f}"
        )
    for key in ("planted_groups", "optimal_auc", "optimal_logloss", "rows", "malformed_rows"):
        if key in info:
            print(f"{key}: {info[key]}")
    _write_json(args.out, info)
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    """Criteo TSV -> Parquet or npy day files, once (resumable); prints how to read the result."""
    from dmt.config import load_config
    from dmt.data.convert import convert

    cfg = load_config(args.config, args.set)
    done = convert(cfg.data, args.out, args.to, args.rows_per_part, args.row_group_rows, progress=not args.quiet)
    print(
        f"{done.to} in {done.out}: rows {done.rows}, malformed rows skipped {done.malformed_rows}; "
        f"{len(done.written)} written now, {len(done.skipped)} already there"
    )
    print("read it with: --set " + " ".join(done.read_with))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dmt.config import load_config
    from dmt.distributed.launch import launch
    from dmt.train.run import check_cluster
    from dmt.verification import verify_rank

    cfg = load_config(args.config, args.set)
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    layout = check_cluster(cfg, args.hosts * args.ranks_per_host, args.ranks_per_host)
    diffs = launch(layout.world, verify_rank, cfg, layout.ranks_per_host, args.steps)[0]
    ok = max(diffs.values()) <= args.tolerance
    result = {
        "ok": ok,
        "max_abs_diff": diffs,
        "tolerance": args.tolerance,
        "steps": args.steps,
        "world": {"hosts": layout.hosts, "ranks_per_host": layout.ranks_per_host},
        "mode": cfg.dist.mode,
        "arch": cfg.model.arch,
    }
    print(
        f"verify {cfg.model.arch} {cfg.dist.mode} on {layout.hosts}x{layout.ranks_per_host}, {args.steps} steps: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        + f" -> {'OK' if ok else 'MISMATCH'} (tolerance {args.tolerance:g})"
    )
    _write_json(args.out, result)
    return 0 if ok else 1


def cmd_partition(args: argparse.Namespace) -> int:
    """Tower Partitioner: towers JSON for model.towers_file, plus a heatmap PNG beside it."""
    from dmt.config import load_config
    from dmt.partition.run import print_partition, run_partition

    cfg = load_config(args.config, args.set)
    payload = run_partition(
        cfg,
        args.towers,
        args.out,
        method=args.method,
        source_kind=args.source,
        checkpoint=args.checkpoint,
        cost=args.cost,
        tolerance=args.tolerance,
        seed=args.seed,
        samples=args.samples,
        budget_ratio=args.budget_ratio,
        budget_mix=args.budget_mix,
    )
    print_partition(payload)
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from dmt.emulate import emulate
    from dmt.emulate.faults import parse_fault
    from dmt.emulate.rates import choose_rates
    from dmt.emulate.report import print_emulation

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    faults = [parse_fault(f) for f in args.fault]
    rates = choose_rates(args, train_args)
    summary = emulate(
        args.hosts,
        args.ranks_per_host,
        rates.cross_host_mbit,
        rates.train_args,
        queue_ms=args.queue_ms,
        intra_host_mbit=rates.intra_host_mbit,
        faults=faults,
        max_restarts=args.max_restarts,
        compute_slowdown=rates.compute_slowdown,
    )
    if rates.dilation is not None:
        summary["dilation"] = rates.dilation
        _write_json(Path(_out_of(rates.train_args)) / "summary.json", summary)
    print_emulation(summary)
    return 0


def _out_of(train_args: list[str]) -> str:
    return train_args[train_args.index("--out") + 1]


def cmd_estimate(args: argparse.Namespace) -> int:
    """Predicted comm, time and memory per step for flat, sptt and sptt_tm; scaling table (+ chart)."""
    from dmt.cost.estimate import SCALING_GPUS, estimate_report, load_inputs, plot_scaling, print_report

    cfg, cluster, layout = load_inputs(
        args.config, args.set, args.preset, args.cluster, args.hosts, args.ranks_per_host
    )
    gpus = tuple(n for n in SCALING_GPUS if n <= args.max_gpus)
    payload = estimate_report(cfg, cluster, layout, config_path=args.config, gpus=gpus)
    if args.plot:
        payload["plot"] = str(plot_scaling(payload, Path(args.out).with_suffix(".png")))
    print_report(payload)
    _write_json(args.out, payload)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Towers per host x compression ratio search on the cost model."""
    from dmt.cost.estimate import load_inputs
    from dmt.cost.plan import plan_report, print_plan

    cfg, cluster, layout = load_inputs(
        args.config, args.set, args.preset, args.cluster, args.hosts, args.ranks_per_host
    )
    payload = plan_report(cfg, cluster, layout, args.max_compression_ratio)
    print_plan(payload)
    _write_json(args.out, payload)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dmt", description="Disaggregated Multi-Tower training for recommendation models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model; writes DIR/summary.json and a checkpoint")
    _add_config(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    _add_cluster(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="flat and SPTT+TM side by side on a local multi-process cluster")
    _add_config(p, required=False)
    p.set_defaults(config="demo")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--compression-ratio", type=float, default=4.0)
    p.add_argument(
        "--like", choices=["v100", "a100", "h100"], default="h100", help="the GPU the emulated links stand for"
    )
    p.add_argument("--loopback", action="store_true", help="loopback links even where the emulator could run")
    p.add_argument("--out", default="runs/demo", help="directory for both runs and summary.json")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the held-out data")
    p.add_argument("--checkpoint", required=True, help="run directory or model.pt")
    p.add_argument("--out", help="JSON file for the metrics")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("verify", help="prove a sharded run equals the one-device model")
    _add_config(p)
    p.add_argument("--hosts", type=int, required=True)
    p.add_argument("--ranks-per-host", type=int, required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--out", required=True, help="JSON file")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("partition", help="Tower Partitioner: feature towers as JSON (model.towers_file) + heatmap")
    _add_config(p)
    p.add_argument("--checkpoint", help="flat dlrm/dcn run directory or model.pt: its interactions drive TP")
    p.add_argument("--towers", type=int, required=True, help="number of towers K")
    p.add_argument("--method", choices=["tp", "sequential", "random", "greedy"], default="tp")
    p.add_argument(
        "--source", choices=["dlrm", "dcn", "data"], help="interactions (default: the checkpoint's family, else data)"
    )
    p.add_argument("--cost", default="ids", help="pooled_width, ids, table_bytes, or a mix like ids=1,table_bytes=0.5")
    p.add_argument("--tolerance", type=float, default=0.05, help="TP bound per tower: (1 + tolerance) * total / K")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, help="data samples for the interaction source")
    p.add_argument(
        "--budget-ratio",
        type=float,
        help="also propose per-tower compression ratios that spend the cross-host bytes of this uniform ratio",
    )
    p.add_argument(
        "--budget-mix",
        type=float,
        default=0.5,
        help="share of the budget spent by tower size (1: uniform), not interaction",
    )
    p.add_argument("--out", required=True, help="JSON file; the heatmap is written beside it as .png")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("emulate", help="train on an emulated multi-host cluster with shaped links (root)")
    p.add_argument("--hosts", type=int, required=True)
    p.add_argument("--ranks-per-host", type=int, required=True)
    p.add_argument("--cross-host-mbit", type=float, help="shaped rate of each host's link (two tiers: uplink), Mbit/s")
    p.add_argument(
        "--intra-host-mbit", type=float, help="two tiers: each rank's own shaped link into its host's switch, Mbit/s"
    )
    p.add_argument(
        "--ratio-of",
        choices=["v100", "a100", "h100"],
        help="two tiers at this GPU's ratio of intra-host to cross-host bandwidth (the presets' table)",
    )
    p.add_argument(
        "--like",
        choices=["v100", "a100", "h100"],
        help="two tiers, both rates scaled by how much slower this machine computes the step than this GPU",
    )
    p.add_argument(
        "--queue-ms",
        type=float,
        default=100.0,
        help="longest wait in a link's queue before a packet drops (default 100: deep, lossless)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:K=V,...",
        help="outage:host=H,start=S,duration=D | loss:host=H,percent=P[,start=S,duration=D] | kill:rank=R,step=K",
    )
    p.add_argument(
        "--max-restarts", type=int, default=0, help="torchrun restarts every rank up to N times after a failure"
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of `dmt train`")
    p.set_defaults(func=cmd_emulate)

    for name, text in (
        ("estimate", "predicted comm, time and memory per step: flat vs sptt vs sptt_tm, and a scaling table"),
        ("plan", "cost-model search over towers per host and compression ratio"),
    ):
        p = sub.add_parser(name, help=text)
        _add_config(p)
        p.add_argument("--preset", choices=["v100", "a100", "h100"], required=True, help="cluster preset")
        p.add_argument("--hosts", type=int, required=True)
        p.add_argument("--ranks-per-host", type=int, required=True)
        p.add_argument(
            "--cluster", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override preset fields"
        )
        p.add_argument("--out", required=True, help="JSON file")
        if name == "estimate":
            p.add_argument("--plot", action="store_true", help="draw the scaling chart as a PNG beside --out")
            p.add_argument("--max-gpus", type=int, default=4096, help="largest cluster of the scaling table")
            p.set_defaults(func=cmd_estimate)
        else:
            p.add_argument("--max-compression-ratio", type=float, required=True, help="largest CR to try")
            p.set_defaults(func=cmd_plan)

    data = sub.add_parser("data", help="data sources").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser
    )
    p = data.add_parser("describe", help="features, sizes and (synthetic) the planted truth")
    _add_config(p)
    p.add_argument("--out", required=True, help="JSON file")
    p.set_defaults(func=cmd_data_describe)
    p = data.add_parser("convert", help="Criteo TSV files -> Parquet or npy day files, parsed and hashed once")
    _add_config(p)
    p.add_argument("--to", choices=["parquet", "npy"], default="parquet")
    p.add_argument("--out", required=True, help="output folder (holds manifest.json; rerun to continue)")
    p.add_argument("--rows-per-part", type=int, default=1_000_000, help="input lines per Parquet file")
    p.add_argument("--row-group-rows", type=int, default=1024, help="rows per Parquet row group")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"dmt: error: {e}", file=sys.stderr)
        return 2
    except RankFailure as e:
        print(f"dmt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dmt: interrupted", file=sys.stderr)
        return 130
