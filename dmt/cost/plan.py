"""`dmt plan`: search towers per host and compression ratio for the fastest predicted step.

Candidates on H hosts x L ranks:
    towers   the config's towers when it names them, else H * k equal chunks of the feature
             order (model.num_towers) for k = 1, 2, 4, ... while there are enough features
    CR       1, 2, 4, ... <= --max-compression-ratio; CR 1 is SPTT with identity Tower Modules,
             CR > 1 the config's Tower Module (model.tower_module) with that ratio

Each candidate's tables are sharded as model.table_sharding says, "auto" ones fitted to the
memory per GPU (dmt/cost/fit.py); candidates that do not fit are skipped, with the line that
says which rank would hold what. The rest are ranked by their predicted step seconds (timing.py;
communication seconds when the preset has no compute rate), against the flat baseline on the
same cluster, and the recommended one's sharding is printed per table. The compression ratio is
the knob that trades model quality for speed: the search only respects the bound it is given, it
does not predict AUC.
"""

from __future__ import annotations

import dataclasses

from dmt.config import Config
from dmt.cost.estimate import Estimator
from dmt.cost.presets import Cluster
from dmt.cost.timing import TimingModel
from dmt.cost.workload import config_towers, equal_towers
from dmt.distributed.topology import Layout
from dmt.errors import UserError


def _powers_of_two(limit: float) -> list[int]:
    out, k = [], 1
    while k <= limit:
        out.append(k)
        k *= 2
    return out


def tower_options(est: Estimator, hosts: int) -> list[tuple[int, list[list[str]]]]:
    """-> [(towers per host, towers)] to try."""
    named = config_towers(est.cfg, est.names)
    if named is not None:
        if len(named) < hosts:
            raise UserError(f"the config has {len(named)} towers for {hosts} hosts: SPTT needs one tower per host")
        return [(len(named) // hosts, named)]
    per_host = _powers_of_two(len(est.names) / hosts)
    if not per_host:
        raise UserError(f"{hosts} hosts need a tower each but the config has only {len(est.names)} features")
    return [(k, equal_towers(est.names, hosts * k)) for k in per_host]


def plan_report(
    cfg: Config, cluster: Cluster, layout: Layout, max_compression_ratio: float, model: TimingModel | None = None
) -> dict:
    """The JSON payload of `dmt plan`: every candidate and the recommended one."""
    if max_compression_ratio < 1:
        raise UserError(f"--max-compression-ratio must be >= 1, got {max_compression_ratio}")
    est = Estimator(cfg, cluster, model or TimingModel())
    flat = est.run("flat", est.shape("flat"), layout, memory=False)
    candidates = []
    for per_host, towers in tower_options(est, layout.hosts):
        for cr in _powers_of_two(max_compression_ratio):
            mode = "sptt" if cr == 1 else "sptt_tm"
            try:
                run = est.run(mode, est.shape(mode, towers, None if cr == 1 else float(cr)), layout, memory=False)
            except UserError as e:  # e.g. a cut that splits a shared table
                candidates.append({"towers_per_host": per_host, "compression_ratio": cr, "error": str(e)})
                continue
            if run.memory_problem is not None:
                candidates.append({"towers_per_host": per_host, "compression_ratio": cr, "error": run.memory_problem})
                continue
            mean = run.traffic.mean()
            t = run.timing
            candidates.append(
                {
                    "towers_per_host": per_host,
                    "towers": len(towers),
                    "compression_ratio": cr,
                    "tower_module": "identity" if cr == 1 else cfg.model.tower_module,
                    "comm_s": t.comm_s,
                    "step_s": run.step_s,
                    "cross_host_bytes": mean["cross_host_bytes"],
                    "intra_host_bytes": mean["intra_host_bytes"],
                    "messages": mean["messages"],
                    "speedup_comm": flat.timing.comm_s / t.comm_s if t.comm_s > 0 else None,
                    "speedup_step": flat.step_s / run.step_s if run.step_s else None,
                    "sharding": run.traffic.plan.table_summary(),
                }
            )
    ok = [c for c in candidates if "error" not in c]
    if not ok:
        raise UserError("no tower layout fits this config: " + "; ".join(c["error"] for c in candidates))
    best = min(ok, key=lambda c: (c["step_s"] or c["comm_s"], c["compression_ratio"], c["towers_per_host"]))
    flat_mean = flat.traffic.mean()
    return {
        "preset": cluster.name,
        "cluster": dataclasses.asdict(cluster),
        "world": {"hosts": layout.hosts, "ranks_per_host": layout.ranks_per_host},
        "max_compression_ratio": max_compression_ratio,
        "flat": {
            "comm_s": flat.timing.comm_s,
            "step_s": flat.step_s,
            "cross_host_bytes": flat_mean["cross_host_bytes"],
            "intra_host_bytes": flat_mean["intra_host_bytes"],
            "messages": flat_mean["messages"],
            "sharding": flat.traffic.plan.table_summary(),
            "fits_memory": flat.memory_problem is None,
            **({"memory_problem": flat.memory_problem} if flat.memory_problem else {}),
        },
        "candidates": candidates,
        "recommended": best,
    }


def print_plan(payload: dict) -> None:
    w = payload["world"]
    print(
        f"dmt plan: {payload['preset']} {w['hosts']} hosts x {w['ranks_per_host']} ranks, "
        f"CR <= {payload['max_compression_ratio']:g}; flat comm {payload['flat']['comm_s'] * 1e3:.3f} ms"
    )
    print(f"{'towers/host':>11} {'towers':>6} {'CR':>4} {'cross MB':>10} {'comm ms':>9} {'comm x':>7} {'step x':>7}")
    for c in payload["candidates"]:
        if "error" in c:
            print(f"{c['towers_per_host']:11d} {'-':>6} {c['compression_ratio']:4d}  skipped: {c['error']}")
            continue
        step = f"{c['speedup_step']:7.2f}" if c["speedup_step"] else "      -"
        print(
            f"{c['towers_per_host']:11d} {c['towers']:6d} {c['compression_ratio']:4d} "
            f"{c['cross_host_bytes'] / 1e6:10.2f} {c['comm_s'] * 1e3:9.3f} {c['speedup_comm']:7.2f} {step}"
        )
    b = payload["recommended"]
    print(
        f"recommended: {b['towers_per_host']} tower(s) per host ({b['towers']} towers), CR {b['compression_ratio']}: "
        f"{b['speedup_comm']:.2f}x less communication time than flat"
        + (f", {b['speedup_step']:.2f}x step" if b["speedup_step"] else "")
    )
    if not payload["flat"]["fits_memory"]:
        print(f"flat baseline: {payload['flat']['memory_problem']}")
    cut = {t: how for t, how in b["sharding"].items() if not how.startswith("table ")}
    whole = len(b["sharding"]) - len(cut)
    print(f"sharding (recommended): {whole} table(s) whole on one rank each" + (", cut into shards:" if cut else ""))
    for table, how in cut.items():
        print(f"  {table:>12}  {how}")
