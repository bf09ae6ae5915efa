"""`dmt estimate`: predicted communication, time and memory per step and rank for the three modes.

    flat     the baseline: tables table-wise over all W ranks, one identity tower
    sptt     SPTT with identity Tower Modules (CR 1): same math, topology-aware placement
    sptt_tm  SPTT with the config's Tower Modules and compression ratio

Towers for the SPTT modes: the config's (model.towers, towers_file or num_towers) when there are
at least as many as hosts, else the feature order cut into one equal chunk per host. Tables are
sharded as model.table_sharding says, "auto" ones fitted to the memory per GPU (dist.memory_gb,
else the preset's memory_gb; dmt/cost/fit.py): a mode that cannot fit keeps its tables whole and
says why in "memory_problem". Byte counts are the mean over ranks (as a run's summary reports
them); times follow timing.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmt.config import Config
from dmt.cost.compute import OpCounts
from dmt.cost.fit import GB, MemoryBudget, fit_workload
from dmt.cost.memory import RUNTIME_BYTES, RankMemory, memory_summary, rank_memory
from dmt.cost.presets import Cluster
from dmt.cost.step import StepTiming, step_timing
from dmt.cost.timing import ModeTiming, TimingModel, mode_timing
from dmt.cost.traffic import ModeTraffic, make_plan, traffic
from dmt.cost.workload import (
    ModelShape,
    Workload,
    config_towers,
    equal_towers,
    feature_specs,
    flat_model_config,
    id_statistics,
    model_shape,
    tower_model_config,
    wire_widths,
)
from dmt.distributed.plan import ShardingPlan, requested_kinds
from dmt.distributed.topology import Layout
from dmt.errors import UserError
from dmt.figures import save_figure
from dmt.specs import FeatureSpec

MODES = ("flat", "sptt", "sptt_tm")
SCALING_GPUS = tuple(2**k for k in range(3, 13))  # 8 .. 4096


@dataclass(frozen=True)
class ModeEstimate:
    mode: str
    traffic: ModeTraffic
    timing: ModeTiming
    memory: list[RankMemory] | None = None
    step: StepTiming | None = None  # end to end, when the cluster has compute rates
    memory_problem: str | None = None  # why the plan does not fit the memory per GPU (None: it fits)

    @property
    def step_s(self) -> float | None:
        return None if self.step is None else self.step.step_s

    @property
    def examples_per_s(self) -> float | None:
        """Samples the whole cluster trains per second, end to end."""
        layout = self.traffic.plan.layout
        return None if self.step is None else layout.world * self.traffic.workload.batch_size / self.step.step_s

    def summary(self) -> dict:
        mean = self.traffic.mean()
        out = {
            "sharding": self.traffic.plan.table_summary(),
            "fits_memory": self.memory_problem is None,
            "comm_s": self.timing.comm_s,
            "cross_host_bytes": mean["cross_host_bytes"],
            "intra_host_bytes": mean["intra_host_bytes"],
            "messages": mean["messages"],
            "allreduce_bytes": mean["allreduce_bytes"],
            "step_s": self.step_s,
            "compute_s": None if self.step is None else self.step.compute_s,
            "exposed_comm_s": None if self.step is None else self.step.exposed_s,
            "overlap_s": None if self.step is None else self.step.overlap_s,
            "examples_per_s": self.examples_per_s,
            "towers": len(self.traffic.workload.shape.towers),
            "tower_widths": list(self.traffic.workload.shape.tower_widths),
            "by_phase": mean["by_phase"],
            "by_phase_tier": mean["by_phase_tier"],
        }
        if self.memory is not None:
            out["memory"] = memory_summary(self.memory)
        if self.memory_problem is not None:
            out["memory_problem"] = self.memory_problem
        return out


@dataclass
class Estimator:
    """A config's features and model variants, cached over layouts."""

    cfg: Config
    cluster: Cluster
    model: TimingModel = dataclasses.field(default_factory=TimingModel)

    def __post_init__(self) -> None:
        features, self.num_dense = feature_specs(self.cfg.data)
        self.features: list[FeatureSpec] = features
        self.names = [f.name for f in features]
        self._shapes: dict[tuple, ModelShape] = {}
        self._ids = None

    # ---- model variants ---------------------------------------------------------------------

    def shape(
        self, mode: str, towers: list[list[str]] | None = None, ratio: float | tuple[float, ...] | None = None
    ) -> ModelShape:
        """ratio: one compression ratio for every tower, one per tower (a tuple), or None (the config's)."""
        key = (mode, None if towers is None else tuple(map(tuple, towers)), ratio)
        if key not in self._shapes:
            m = self.cfg.model
            if mode == "flat":
                mcfg = flat_model_config(m)
            else:
                mcfg = tower_model_config(m, towers, compress=mode == "sptt_tm", ratio=ratio)
            self._shapes[key] = model_shape(mcfg, self.features, self.num_dense)
        return self._shapes[key]

    def towers_for(self, hosts: int, strict: bool = True) -> tuple[list[list[str]], str]:
        """-> (towers, where they come from). strict: the config's towers must cover every host."""
        named = config_towers(self.cfg, self.names)
        if named is not None and len(named) >= hosts:
            return named, "config"
        if named is not None and strict:
            raise UserError(
                f"the config has {len(named)} towers for {hosts} hosts: SPTT needs at least one tower per host; "
                "use fewer hosts or more towers (model.num_towers)"
            )
        if hosts > len(self.names):
            raise UserError(f"{hosts} hosts need a tower each but the config has only {len(self.names)} features")
        return equal_towers(self.names, hosts), "equal chunks, one per host"

    def workload(self, shape: ModelShape) -> Workload:
        """The config's batch, widths (per table and on the wire) and (dist.dedup_ids) id statistics."""
        t, d, m = self.cfg.train, self.cfg.dist, self.cfg.model
        if d.dedup_ids and self._ids is None:
            self._ids = id_statistics(self.cfg.data)
        return Workload(
            tuple(self.features),
            shape,
            m.embedding_dim,
            t.batch_size,
            **wire_widths(d),
            ids=self._ids if d.dedup_ids else None,
            dims=m.embedding_dims or None,
        )

    def budget(self) -> MemoryBudget | None:
        """Memory per GPU: dist.memory_gb, else the preset's; None when neither is known."""
        gb = self.cfg.dist.memory_gb or self.cluster.memory_gb
        if not gb:
            return None
        t = self.cfg.train
        runtime = RUNTIME_BYTES["cpu" if self.cluster.name == "emulated" else "cuda"]
        return MemoryBudget(gb * GB, t.batch_size, t.embedding_optimizer, t.dense_optimizer, runtime)

    def sharding(self, mode: str, workload: Workload, layout: Layout) -> tuple[ShardingPlan, str | None]:
        """-> (the plan a run of `mode` would use, why it does not fit or None)."""
        plan_mode = "flat" if mode == "flat" else "sptt"
        tables = list(dict.fromkeys(f.table for f in self.features))
        kinds = requested_kinds(tables, self.cfg.model.table_sharding, plan_mode)
        whole = {t: "table" if k == "auto" else k for t, k in kinds.items()}
        budget = self.budget()
        if budget is None:
            return make_plan(mode, workload, layout, whole), None
        try:
            return fit_workload(workload, layout, plan_mode, kinds, budget)[0], None
        except UserError as e:
            return make_plan(mode, workload, layout, whole), str(e)

    # ---- estimates --------------------------------------------------------------------------

    def run(
        self, mode: str, shape: ModelShape, layout: Layout, memory: bool = True, ops: OpCounts | None = None
    ) -> ModeEstimate:
        """ops: the operators a rank's step launches, for a cluster that charges them (op_s > 0)."""
        workload = self.workload(shape)
        sharding, problem = self.sharding(mode, workload, layout)
        tr = traffic(mode, workload, layout, sharding)
        timing = mode_timing(tr, self.cluster, self.model, pipelined=self.cfg.train.pipeline)
        t = self.cfg.train
        mem = rank_memory(tr, t.embedding_optimizer, t.dense_optimizer) if memory else None
        step = step_timing(tr, timing, self.cluster, ops, t.dense_optimizer)
        return ModeEstimate(mode, tr, timing, mem, step, problem)

    def modes(
        self, layout: Layout, strict: bool = True, memory: bool = True, ratios: tuple[float, ...] | None = None
    ) -> dict[str, ModeEstimate]:
        """ratios: per-tower compression ratios for sptt_tm instead of the config's."""
        towers, _ = self.towers_for(layout.hosts, strict)
        return {
            "flat": self.run("flat", self.shape("flat"), layout, memory),
            "sptt": self.run("sptt", self.shape("sptt", towers), layout, memory),
            "sptt_tm": self.run("sptt_tm", self.shape("sptt_tm", towers, ratios), layout, memory),
        }

    def budget_ratios(self, hosts: int) -> tuple[float, ...] | None:
        """Per-tower ratios that spend the cross-host floats of the config's uniform ratio in whole
        units of its built-in family (DLRM: d-wide embeddings, DCN: floats), shared by tower size
        (dmt/partition/budget.py at mix 1): what a cluster whose towers cannot take the uniform
        ratio sends instead. None for other models, per-tower configs and mixed widths."""
        from dmt.partition.budget import propose_ratios

        m = self.cfg.model
        if m.arch not in ("dlrm", "dcn") or m.tower_compression_ratios or m.embedding_dims:
            return None
        towers, _ = self.towers_for(hosts, strict=False)
        granule = m.embedding_dim if m.arch == "dlrm" else 1
        no_interaction = np.zeros((len(self.names), len(self.names)))
        p = propose_ratios(towers, self.names, no_interaction, m.embedding_dim, m.compression_ratio, granule, 1.0)
        return tuple(p["compression_ratios"])


def speedups(modes: dict[str, ModeEstimate]) -> dict:
    """flat time / mode time, for communication alone and (with a compute rate) the whole step."""
    flat = modes["flat"].timing
    out = {}
    for name in ("sptt", "sptt_tm"):
        t = modes[name].timing
        out[f"{name}_over_flat"] = {
            "comm": _ratio(flat.comm_s, t.comm_s),
            "step": modes["flat"].step_s / modes[name].step_s if modes["flat"].step_s and modes[name].step_s else None,
            "cross_host_bytes_ratio": _ratio(
                modes[name].traffic.mean()["cross_host_bytes"], modes["flat"].traffic.mean()["cross_host_bytes"]
            ),
        }
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def scaling(est: Estimator, ranks_per_host: int, gpus: tuple[int, ...] = SCALING_GPUS) -> list[dict]:
    """One row per cluster size: comm and step seconds of each mode and the speedups."""
    rows = []
    for n in gpus:
        if n % ranks_per_host or n < ranks_per_host:
            continue
        layout = Layout(n // ranks_per_host, ranks_per_host)
        row: dict = {"gpus": n, "hosts": layout.hosts}
        try:
            try:
                modes = est.modes(layout, strict=False, memory=False)
            except UserError:  # the towers of this many hosts cannot take the uniform ratio: spend its bytes
                ratios = est.budget_ratios(layout.hosts)
                if ratios is None:
                    raise
                modes = est.modes(layout, strict=False, memory=False, ratios=ratios)
                row["compression_ratios"] = sorted(set(ratios))
        except UserError as e:
            flat = est.run("flat", est.shape("flat"), layout, memory=False)
            row.update({"flat": _short(flat), "sptt": None, "sptt_tm": None, "speedup": None, "note": str(e)})
            rows.append(row)
            continue
        row.update({m: _short(e) for m, e in modes.items()})
        row["speedup"] = speedups(modes)
        rows.append(row)
    return rows


def _short(e: ModeEstimate) -> dict:
    mean = e.traffic.mean()
    return {
        "comm_s": e.timing.comm_s,
        "step_s": e.step_s,
        "examples_per_s": e.examples_per_s,
        "cross_host_bytes": mean["cross_host_bytes"],
        "intra_host_bytes": mean["intra_host_bytes"],
        "messages": mean["messages"],
    }


def estimate_report(
    cfg: Config,
    cluster: Cluster,
    layout: Layout,
    model: TimingModel | None = None,
    config_path: str | None = None,
    gpus: tuple[int, ...] = SCALING_GPUS,
) -> dict:
    """The JSON payload of `dmt estimate`."""
    est = Estimator(cfg, cluster, model or TimingModel())
    modes = est.modes(layout)
    towers, source = est.towers_for(layout.hosts)
    payload = {
        "preset": cluster.name,
        "cluster": dataclasses.asdict(cluster),
        "timing_model": dataclasses.asdict(est.model),
        "world": {"hosts": layout.hosts, "ranks_per_host": layout.ranks_per_host},
        "config": config_path,
        "arch": cfg.model.arch,
        "features": len(est.features),
        "embedding_dim": cfg.model.embedding_dim,
        "batch_size": cfg.train.batch_size,
        "towers": {"count": len(towers), "source": source},
        **{m: e.summary() for m, e in modes.items()},
        "speedup": speedups(modes),
        "breakdown": {m: e.timing.as_dict() for m, e in modes.items()},
        "end_to_end": {m: e.step.as_dict() for m, e in modes.items() if e.step is not None},
        "scaling": scaling(est, layout.ranks_per_host, gpus),
    }
    return payload


# ---- terminal output and the chart -------------------------------------------------------------


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:10.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:9.3f}"


def print_report(payload: dict) -> None:
    w = payload["world"]
    print(
        f"dmt estimate: {payload['preset']} {w['hosts']} hosts x {w['ranks_per_host']} ranks, "
        f"{payload['arch']} with {payload['features']} features, d={payload['embedding_dim']}, "
        f"B={payload['batch_size']} per rank, {payload['towers']['count']} towers ({payload['towers']['source']})"
    )
    print("\ncommunication alone, per step and rank:")
    print(
        f"{'mode':8} {'cross MB':>10} {'intra MB':>10} {'msgs':>7} {'a2a ms':>9} {'allred ms':>9} "
        f"{'comm ms':>9} {'mem GB':>8}"
    )
    for m in MODES:
        s, b = payload[m], payload["breakdown"][m]
        mem = s.get("memory", {}).get("max_total_bytes")
        print(
            f"{m:8} {_mb(s['cross_host_bytes'])} {_mb(s['intra_host_bytes'])} {s['messages']:7.0f} "
            f"{_ms(b['alltoall_s'])} {_ms(b['allreduce_s'])} {_ms(s['comm_s'])} "
            f"{'-' if mem is None else f'{mem / 1e9:8.2f}'}"
        )
    e2e = payload.get("end_to_end") or {}
    if e2e:
        print("\nend to end (compute + communication, with the overlap the code has):")
        print(f"{'mode':8} {'step ms':>9} {'compute':>9} {'exposed':>9} {'overlap':>9} {'examples/s':>12}")
        for m in MODES:
            e = e2e[m]
            eps = payload[m]["examples_per_s"]
            print(
                f"{m:8} {_ms(e['step_s'])} {_ms(e['compute_s'])} {_ms(e['exposed_comm_s'])} {_ms(e['overlap_s'])} "
                f"{eps:12,.0f}"
            )
    for name, sp in payload["speedup"].items():
        step = "-" if sp["step"] is None else f"{sp['step']:.2f}x"
        print(
            f"{name}: end to end {step}, communication {sp['comm']:.2f}x, "
            f"cross-host bytes x{sp['cross_host_bytes_ratio']:.3f}"
        )
    print(f"\nscaling ({payload['world']['ranks_per_host']} ranks per host): predicted ms per step")
    print(
        f"{'GPUs':>6} {'hosts':>6} {'flat step':>10} {'tm step':>10} {'flat comm':>10} {'tm comm':>10} "
        f"{'step x':>7} {'comm x':>7}"
    )
    for r in payload["scaling"]:
        sp = (r.get("speedup") or {}).get("sptt_tm_over_flat") or {}
        comm_x = f"{sp['comm']:7.2f}" if sp else "      -"
        step_x = f"{sp['step']:7.2f}" if sp.get("step") else "      -"
        cells = [
            _ms((r[m] or {}).get(k)) if r[m] else "        -" for k in ("step_s", "comm_s") for m in ("flat", "sptt_tm")
        ]
        spent = r.get("compression_ratios")
        note = f"  per-tower ratios {', '.join(f'{c:.3g}' for c in spent)}" if spent else ""
        print(
            f"{r['gpus']:6d} {r['hosts']:6d} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} {cells[3]:>10} "
            f"{step_x} {comm_x}{note}"
        )
    if any(r.get("compression_ratios") for r in payload["scaling"]):
        print("per-tower ratios: those towers cannot take the uniform ratio; its bytes are spent by tower size")


def plot_scaling(payload: dict, path: str | Path) -> Path:
    """Comm and step time per mode against GPUs (log-log), speedup on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["scaling"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, color in zip(MODES, ("C0", "C1", "C2"), strict=True):
        for key, style in (("step_s", "o-"), ("comm_s", "^:")):
            pts = [(r["gpus"], r[m][key] * 1e3) for r in rows if r[m] and r[m][key]]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color, label=f"{m} {key.split('_')[0]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("predicted ms per step")
    ax.set_title(f"{payload['preset']}: step (end to end) and communication")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    for key, style in (("step", "o-"), ("comm", "^:")):
        pts = [
            (r["gpus"], r["speedup"]["sptt_tm_over_flat"][key])
            for r in rows
            if r.get("speedup") and r["speedup"]["sptt_tm_over_flat"][key]
        ]
        if pts:
            ax2.plot(*zip(*pts, strict=True), style, label=f"sptt_tm / flat, {'end to end' if key == 'step' else key}")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("GPUs")
    ax2.set_ylabel("predicted speedup")
    ax2.set_title(f"{payload['world']['ranks_per_host']} GPUs per host")
    ax2.legend()
    ax2.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


MAX_WORLD = 65536  # every rank is enumerated: keep the sums cheap


def load_inputs(
    config: str, overrides: list[str], preset: str, cluster_items: list[str], hosts: int, ranks_per_host: int
) -> tuple[Config, Cluster, Layout]:
    """CLI arguments -> (config, cluster, layout); UserError names whatever is wrong."""
    from dmt.config import load_config
    from dmt.cost.presets import cluster, parse_overrides

    layout = Layout(hosts, ranks_per_host)
    if layout.world > MAX_WORLD:
        raise UserError(
            f"--hosts {hosts} x --ranks-per-host {ranks_per_host} = {layout.world} ranks; at most {MAX_WORLD}"
        )
    return load_config(config, overrides), cluster(preset, **parse_overrides(cluster_items)), layout
