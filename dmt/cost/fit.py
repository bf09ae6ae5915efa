"""Memory-aware planning: tables whose sharding is "auto" are cut until every rank fits its budget.

    budget      dist.memory_gb per rank; 0 (the default): on CUDA the device's memory, on CPU
                the machine's memory shared by the ranks that run on it
    predicted   per rank: tables and shards, optimizer state, Tower Modules, head, the largest
                exchange buffer, the exchanges' activations and the process runtime (memory.py)

`fit_plan` starts with every "auto" table whole and, while a rank is over its budget, cuts the
auto table that takes the most of that rank's memory one step further: whole -> "table_row"
(flat, several ranks per host: rows over one host) -> "row" (rows over the group: the world in
flat, the tower's host in SPTT). A plan that still does not fit (a pinned table, or nothing left
to cut) is refused with one line that names the rank and what it would hold, before any process
starts (`dmt train` checks the plan in the launching process: dmt/train/run.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dmt.cost.memory import RUNTIME_BYTES, RankMemory, rank_memory
from dmt.cost.traffic import make_plan, traffic
from dmt.cost.workload import Workload, workload_of
from dmt.distributed.plan import ShardingPlan, requested_kinds
from dmt.distributed.topology import Layout
from dmt.errors import UserError

GB = 1e9


@dataclass(frozen=True)
class MemoryBudget:
    """What each rank may use and what it runs: bytes per rank, samples per rank and step, the
    optimizers, the per-process runtime and whether ids carry weights (`dmt.plan(..., budget=)`).

    >>> import dmt
    >>> feats = [dmt.FeatureSpec("user", "users", 10_000_000), dmt.FeatureSpec("item", "catalog", 1000)]
    >>> with dmt.deferred_tables():
    ...     model = dmt.DLRM(feats, num_dense=0, dim=16)
    >>> budget = dmt.MemoryBudget(bytes_per_rank=1e9, batch_size=512)  # table + state 0.68 GB, runtime 0.39
    >>> dmt.plan(model, dmt.Layout(2, 2), "flat", budget=budget).table_summary()["users"]
    'table_row x2 over ranks [0, 1]'
    """

    bytes_per_rank: float
    batch_size: int
    embedding_optimizer: str = "rowwise_adagrad"
    dense_optimizer: str = "adam"
    runtime_bytes: float = RUNTIME_BYTES["cpu"]
    weighted: bool = False


def machine_share_bytes(ranks_here: int, device: str = "cpu") -> float:
    """The automatic budget of one rank: a CUDA device's memory, or this machine's physical
    memory divided among the `ranks_here` ranks that run on it."""
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(ranks_here, 1)


def config_budget(cfg, layout: Layout) -> MemoryBudget:
    """The budget a config asks for (dist.memory_gb, else automatic) on `layout`; the ranks on this
    machine are the launcher's LOCAL_WORLD_SIZE, else the whole world."""
    t, device = cfg.train, cfg.train.device
    per_rank = cfg.dist.memory_gb * GB
    if per_rank <= 0:
        per_rank = machine_share_bytes(int(os.environ.get("LOCAL_WORLD_SIZE", layout.world)), device)
    runtime = RUNTIME_BYTES["cuda" if device.startswith("cuda") else "cpu"]
    return MemoryBudget(per_rank, t.batch_size, t.embedding_optimizer, t.dense_optimizer, runtime)


def plan_memory(plan: ShardingPlan, workload: Workload, budget: MemoryBudget) -> list[RankMemory]:
    mode = "flat" if plan.mode == "flat" else "sptt"
    tr = traffic(mode, workload, plan.layout, plan)
    return rank_memory(tr, budget.embedding_optimizer, budget.dense_optimizer, budget.runtime_bytes)


def _next_kind(kind: str, mode: str, layout: Layout) -> str | None:
    steps = ["table", "table_row", "row"] if mode == "flat" and layout.ranks_per_host > 1 else ["table", "row"]
    return steps[steps.index(kind) + 1] if kind in steps[:-1] else None


def fit_workload(
    workload: Workload, layout: Layout, mode: str, kinds: Mapping[str, str], budget: MemoryBudget
) -> tuple[ShardingPlan, list[RankMemory]]:
    """Resolve "auto" kinds against the budget (module docstring). -> (plan, its memory per rank);
    raises UserError when it cannot fit."""
    auto = [t for t, k in kinds.items() if k == "auto"]
    chosen = {t: "table" if k == "auto" else k for t, k in kinds.items()}
    dims = {f.table: (f.num_embeddings, workload.width(f)) for f in workload.features}
    while True:
        sharding = make_plan(mode, workload, layout, chosen)
        memory = plan_memory(sharding, workload, budget)
        worst = max(memory, key=lambda m: (m.total_bytes, -m.rank))
        if worst.total_bytes <= budget.bytes_per_rank:
            return sharding, memory
        on_worst = {t: n * d for t, (n, d) in dims.items() if sharding.table_owner.get(t) == worst.rank}
        on_worst |= {t: s.num_rows * s.width for t, s in sharding.shards_on(worst.rank).items()}
        movable = [t for t in auto if t in on_worst and _next_kind(chosen[t], mode, layout)]
        if not movable:
            raise UserError(refusal(sharding, worst, budget, dims))
        table = max(movable, key=lambda t: (on_worst[t], t))
        chosen[table] = _next_kind(chosen[table], mode, layout)


def refusal(sharding: ShardingPlan, worst: RankMemory, budget: MemoryBudget, dims: Mapping) -> str:
    """One line: which rank would hold what, against the budget."""
    held = [f"{t} [{n:,} x {d}] whole" for t, (n, d) in dims.items() if sharding.table_owner.get(t) == worst.rank]
    held += [
        f"{t} rows {s.rows[0]:,}:{s.rows[1]:,} cols {s.cols[0]}:{s.cols[1]} ({sharding.kinds[t]})"
        for t, s in sharding.shards_on(worst.rank).items()
    ]
    return (
        f"the {sharding.mode} plan does not fit: rank {worst.rank} would hold {worst.total_bytes / GB:.3f} GB "
        f"> dist.memory_gb={budget.bytes_per_rank / GB:.3f} ({worst.describe()}; tables: {', '.join(held) or 'none'}); "
        "let model.table_sharding say 'auto' or 'row' for the big tables, or use more ranks"
    )


def fit_plan(model, layout: Layout, mode: str, kinds: Mapping[str, str], budget: MemoryBudget) -> ShardingPlan:
    """`dmt.plan` with a budget: the model's workload fitted (see fit_workload)."""
    workload = workload_of(model, budget.batch_size, budget.weighted)
    sharding, _ = fit_workload(workload, layout, mode, kinds, budget)
    return sharding


def config_plan(cfg, model, layout: Layout, budget: MemoryBudget | None = None) -> ShardingPlan:
    """The plan a config trains with: model.table_sharding, fitted to the budget (config_budget by
    default), every pinned kind checked against it too."""
    if layout.world == 1:
        from dmt.distributed.plan import plan

        return plan(model, layout, cfg.dist.mode)
    budget = budget or config_budget(cfg, layout)
    kinds = requested_kinds(list(model.embeddings.specs), cfg.model.table_sharding, cfg.dist.mode)
    workload = workload_of(model, budget.batch_size, budget.weighted)
    sharding, _ = fit_workload(workload, layout, cfg.dist.mode, kinds, budget)
    return sharding


def rank_plan(cfg, model, topo) -> ShardingPlan:
    """Collective: `config_plan` on this rank, checked to be every rank's plan (ranks on machines
    of different memory would otherwise cut tables differently and wait on each other forever)."""
    sharding = config_plan(cfg, model, topo.layout)
    if len(set(topo.all_gather_object(sharding.describe()))) > 1:
        raise UserError("the ranks planned different shardings (their memory budgets differ): set dist.memory_gb")
    return sharding
