"""Where things live: tables on ranks (flat) or towers on hosts and tables inside them (SPTT).

Each table is held whole ("table") or cut into shards (dmt/distributed/shards.py: "row",
"column", "row_column" over the world (flat) or the tower's host (SPTT), "table_row" over the
ranks of one host (flat)); `model.table_sharding` pins the kind per table, "auto" (the default)
leaves it to the memory-aware planner (dmt/cost/fit.py), which keeps tables whole unless a rank
would exceed its memory budget.

Placement is deterministic longest-processing-time (LPT): items by decreasing cost, each to the
least loaded bin, ties to the lowest index. The cost is what an item puts on the wire per sample,
since the exchanges, not the lookups, set the step time:

    table (flat ranks, SPTT ranks inside a host)   sum over its features f of
                                                   4 (length) + 4 * pooling factor (ids) + 8 * d_f
                                                   (the pooled row out and its gradient back)
    tower (SPTT hosts)                             sum over its features of 4 + 4 * pooling factor,
                                                   plus 8 * its Tower Module's output width

Balancing towers by output width keeps both directions of every host pair equally loaded in the
SPTT peer exchange (step 6): a host whose towers are wider would send more than it receives, and
the exchange would last as long as the heavier direction.

Cut tables are placed first: a "table_row" table on the least loaded host, the shards of every
cut table on consecutive ranks of its group (the first rank turns from table to table), each
shard counting 1 / (number of shards) of its table's cost; the whole tables then go by LPT onto
those loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from dmt.distributed.shards import SEPARATOR, Shard, cut, unit_key
from dmt.distributed.topology import Layout
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel
from dmt.specs import SHARDING_CHOICES, SHARDINGS, FeatureSpec

if TYPE_CHECKING:
    from dmt.cost.fit import MemoryBudget

MODES = ("single", "flat", "sptt")
DEFAULT_KEY = "*"  # model.table_sharding["*"]: the kind of every table the mapping does not name


@dataclass(frozen=True)
class ShardingPlan:
    """mode "single": a world of one, the one-device model as it is.
    mode "flat": table_owner over all ranks, one data-parallel tower set.
    mode "sptt": tower_host per tower, table_owner inside the tower's host.
    Tables cut into shards are in `shards` instead of `table_owner`; `kinds` names every table's
    sharding ("table" for a whole one)."""

    mode: str
    layout: Layout
    table_owner: dict[str, int]  # whole table -> global rank
    tower_host: tuple[int, ...]  # tower -> host (sptt); empty otherwise
    feature_table: dict[str, str]
    max_rows: int = 0  # rows of the largest table: ids travel as int32 below 2^31
    shards: Mapping[str, tuple[Shard, ...]] = field(default_factory=dict)  # cut table -> its shards
    kinds: Mapping[str, str] = field(default_factory=dict)  # table -> sharding kind

    @property
    def id_dtype(self) -> torch.dtype:
        return torch.int32 if self.max_rows < 2**31 else torch.int64

    def features_served_by(self, rank: int) -> list[str]:
        """Features whose whole table lives on `rank`, in feature order."""
        return [f for f, t in self.feature_table.items() if self.table_owner.get(t) == rank]

    def units_served_by(self, rank: int, features: list[str] | None = None) -> list[str]:
        """The exchange units `rank` serves among `features` (default: all), in the plan's feature
        order: a feature of a whole table on `rank`, and "f@k" for each shard k of f's table on `rank`."""
        among = set(features) if features is not None else None
        out = []
        for f, t in self.feature_table.items():
            if among is not None and f not in among:
                continue
            if t in self.shards:
                out += [unit_key(f, k) for k, s in enumerate(self.shards[t]) if s.rank == rank]
            elif self.table_owner[t] == rank:
                out.append(f)
        return out

    def unit_widths(self, units: list[str], widths: Mapping[str, int]) -> dict[str, int]:
        """unit -> floats per sample it returns: the feature's width, or its shard's columns."""
        out = {}
        for u in units:
            feature, _, k = u.rpartition(SEPARATOR)
            out[u] = self.shards[self.feature_table[feature]][int(k)].width if feature else widths[u]
        return out

    def tables_on(self, rank: int) -> list[str]:
        """Whole tables on `rank`."""
        return [t for t, r in self.table_owner.items() if r == rank]

    def shards_on(self, rank: int) -> dict[str, Shard]:
        """table -> the shard of it that `rank` holds (at most one per table)."""
        return {t: s for t, group in self.shards.items() for s in group if s.rank == rank}

    def host_path_features(self, features: list[str] | None = None) -> list[str]:
        """Flat: features whose table is "table_row" (they take the two-hop SPTT path)."""
        return [f for f in features or self.feature_table if self.kinds.get(self.feature_table[f]) == "table_row"]

    def table_host(self, table: str) -> int:
        """The host a "table_row" table (flat) lives on."""
        return self.layout.host_of(self.shards[table][0].rank)

    def towers_on(self, host: int) -> list[int]:
        return [t for t, h in enumerate(self.tower_host) if h == host]

    def describe(self) -> str:
        """One line per rank: the tables it owns, the shards it holds (and, SPTT, its host's towers)."""
        lines = []
        for r in range(self.layout.world):
            towers = f", towers {self.towers_on(self.layout.host_of(r))}" if self.mode == "sptt" else ""
            held = [f"{t}[{s.rows[0]}:{s.rows[1]}, {s.cols[0]}:{s.cols[1]}]" for t, s in self.shards_on(r).items()]
            cut = f", shards {held}" if held else ""
            lines.append(f"rank {r} (host {self.layout.host_of(r)}): tables {self.tables_on(r)}{cut}{towers}")
        return "\n".join(lines)

    def table_summary(self) -> dict[str, str]:
        """table -> its sharding in words: "table on rank 3", "row over ranks [0, 1]"."""
        out = {}
        for t in self.feature_table.values():
            if t in out:
                continue
            if t in self.shards:
                group = self.shards[t]
                out[t] = f"{self.kinds[t]} x{len(group)} over ranks {sorted({s.rank for s in group})}"
            else:
                out[t] = f"table on rank {self.table_owner[t]}"
        return out


def plan(
    model: MultiTowerModel,
    layout: Layout,
    mode: str = "sptt",
    table_sharding: Mapping[str, str] | None = None,
    budget: MemoryBudget | None = None,
) -> ShardingPlan:
    """Where `model`'s tables and towers live on `layout`: "flat" (tables over all ranks) or
    "sptt" (each tower on one host, its tables on that host's ranks). A world of one is always
    "single". table_sharding: table -> kind (dmt/distributed/shards.py) or "auto", "*" for every
    table it does not name (default "auto"); budget: each rank's memory, which "auto" tables are
    cut to fit (dmt/cost/fit.py; without one they stay whole).

    >>> from dmt.models.dlrm import DLRM
    >>> from dmt.specs import FeatureSpec
    >>> feats = [FeatureSpec(f"f{i}", f"t{i}", 1000) for i in range(4)]
    >>> model = DLRM(feats, num_dense=0, towers=[["f0", "f1"], ["f2", "f3"]], dim=8)
    >>> p = plan(model, Layout(hosts=2, ranks_per_host=2), "sptt")
    >>> p.tower_host, p.table_owner
    ((0, 1), {'t0': 0, 't1': 1, 't2': 2, 't3': 3})
    >>> cut = plan(model, Layout(2, 2), "flat", {"t0": "row", "t1": "table_row"})
    >>> [cut.table_summary()[t] for t in ("t0", "t1")]
    ['row x4 over ranks [0, 1, 2, 3]', 'table_row x2 over ranks [0, 1]']
    """
    if mode not in MODES[1:]:
        raise UserError(f"sharding mode must be 'flat' or 'sptt', got {mode!r}")
    features = model.embeddings.features
    if layout.world == 1:
        return ShardingPlan(
            "single", layout, {f.table: 0 for f in features}, (), _feature_table(features), _rows(features)
        )
    kinds = requested_kinds(list(model.embeddings.specs), table_sharding, mode)
    if budget is not None and "auto" in kinds.values():
        from dmt.cost.fit import fit_plan

        return fit_plan(model, layout, mode, kinds, budget)
    return place(model, layout, mode, {t: "table" if k == "auto" else k for t, k in kinds.items()})


def place(model: MultiTowerModel, layout: Layout, mode: str, kinds: Mapping[str, str]) -> ShardingPlan:
    """The plan of `model` on `layout` with every table's kind decided (no "auto")."""
    features, widths = model.embeddings.features, model.embeddings.feature_dims
    if mode == "flat":
        return plan_flat(features, widths, layout, kinds)
    return plan_sptt(features, model.towers, widths, layout, model.tower_widths, kinds)


def requested_kinds(tables: list[str], table_sharding: Mapping[str, str] | None, mode: str) -> dict[str, str]:
    """model.table_sharding checked -> table -> kind or "auto", for every table."""
    asked = dict(table_sharding or {})
    unknown = sorted(set(asked) - set(tables) - {DEFAULT_KEY})
    if unknown:
        raise UserError(f"model.table_sharding names unknown tables {unknown}; tables are {tables}")
    for table, kind in asked.items():
        if kind not in SHARDING_CHOICES:
            raise UserError(f"model.table_sharding.{table} is {kind!r}; allowed: {', '.join(SHARDING_CHOICES)}")
    default = asked.get(DEFAULT_KEY, "auto")
    kinds = {t: asked.get(t, default) for t in tables}
    if mode == "sptt":  # the table is already on one host: "table_row" is "row" over that host
        kinds = {t: "row" if k == "table_row" else k for t, k in kinds.items()}
    return kinds


def lpt(costs: list[float], bins: int, load: list[float] | None = None) -> list[int]:
    """Item -> bin, balancing the summed cost (on top of `load`, the bins' loads so far)."""
    load = list(load) if load is not None else [0.0] * bins
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        b = min(range(bins), key=lambda k: (load[k], k))
        out[i] = b
        load[b] += costs[i]
    return out


def id_bytes(f: FeatureSpec) -> float:
    """Bytes per sample feature `f` sends as ids: one int32 length and its ids (int32)."""
    return 4.0 + 4.0 * f.pooling_factor


def table_costs(features: list[FeatureSpec], widths: dict[str, int]) -> dict[str, float]:
    """table -> bytes per sample its features send: ids, the pooled row and its gradient."""
    costs: dict[str, float] = {}
    for f in features:
        costs[f.table] = costs.get(f.table, 0.0) + id_bytes(f) + 8.0 * widths[f.name]
    return costs


def _feature_table(features: list[FeatureSpec]) -> dict[str, str]:
    return {f.name: f.table for f in features}


def _rows(features: list[FeatureSpec]) -> int:
    return max(f.num_embeddings for f in features)


def _table_shapes(features: list[FeatureSpec], widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    return {f.table: (f.num_embeddings, widths[f.name]) for f in features}


def _cut_tables(
    tables: list[str],
    kinds: Mapping[str, str],
    shapes: dict[str, tuple[int, int]],
    costs: dict[str, float],
    group: list[int],
    load: dict[int, float],
) -> dict[str, tuple[Shard, ...]]:
    """Cut the tables whose kind is not "table" over `group` (global ranks); adds each shard's
    share of its table's cost to `load`. A table that cuts into one piece stays whole (left out)."""
    out: dict[str, tuple[Shard, ...]] = {}
    start = 0
    for t in tables:
        if kinds.get(t, "table") == "table":
            continue
        rows, dim = shapes[t]
        shards = cut(t, rows, dim, kinds[t], group, start)
        if len(shards) < 2:
            continue
        start += len(shards)
        out[t] = shards
        for s in shards:
            load[s.rank] += costs[t] / len(shards)
    return out


def _check_kinds(kinds: Mapping[str, str], mode: str) -> None:
    bad = sorted(k for k in set(kinds.values()) if k not in SHARDINGS)
    if bad:
        raise UserError(f"table sharding kinds {bad} are not among {', '.join(SHARDINGS)}")
    if mode == "sptt" and "table_row" in kinds.values():
        raise UserError("SPTT keeps each table on its tower's host: use 'row' there, not 'table_row'")


def plan_flat(
    features: list[FeatureSpec], widths: dict[str, int], layout: Layout, kinds: Mapping[str, str] | None = None
) -> ShardingPlan:
    """widths: each feature's pooled width; kinds: table -> sharding kind (default: all whole)."""
    kinds = dict(kinds or {})
    _check_kinds(kinds, "flat")
    costs = table_costs(features, widths)
    shapes = _table_shapes(features, widths)
    tables = list(costs)
    load = dict.fromkeys(range(layout.world), 0.0)
    shards: dict[str, tuple[Shard, ...]] = {}
    host_row = [t for t in tables if kinds.get(t) == "table_row"]
    hosts = lpt([costs[t] for t in host_row], layout.hosts)
    for h in range(layout.hosts):  # "table_row": rows over the ranks of the table's host
        mine = [t for t, g in zip(host_row, hosts, strict=True) if g == h]
        shards.update(_cut_tables(mine, kinds, shapes, costs, layout.host_ranks(h), load))
    rest = [t for t in tables if t not in host_row]
    shards.update(_cut_tables(rest, kinds, shapes, costs, list(range(layout.world)), load))
    whole = [t for t in tables if t not in shards]
    owner = lpt([costs[t] for t in whole], layout.world, [load[r] for r in range(layout.world)])
    return ShardingPlan(
        "flat",
        layout,
        dict(zip(whole, owner, strict=True)),
        (),
        _feature_table(features),
        _rows(features),
        shards,
        {t: kinds.get(t, "table") if t in shards else "table" for t in tables},
    )


def plan_sptt(
    features: list[FeatureSpec],
    towers: list[list[str]],
    widths: dict[str, int],
    layout: Layout,
    tower_widths: list[int] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> ShardingPlan:
    """widths: each feature's pooled width; tower_widths: each Tower Module's output floats per
    sample (default: identity, the sum of its features' widths); kinds: table -> sharding kind
    inside the tower's host (default: all whole)."""
    kinds = dict(kinds or {})
    _check_kinds(kinds, "sptt")
    by_name = {f.name: f for f in features}
    table_tower: dict[str, int] = {}
    for t, tower in enumerate(towers):
        for name in tower:
            table = by_name[name].table
            if table_tower.setdefault(table, t) != t:
                readers = [f.name for f in features if f.table == table]
                raise UserError(
                    f"table {table} is read by features {readers} in towers {table_tower[table]} and {t}; "
                    "SPTT keeps a table inside one tower: put those features in the same tower"
                )
    costs = table_costs(features, widths)
    out_widths = tower_widths if tower_widths is not None else [sum(widths[f] for f in tower) for tower in towers]
    tower_cost = [
        sum(id_bytes(by_name[f]) for f in tower) + 8.0 * w for tower, w in zip(towers, out_widths, strict=True)
    ]
    tower_host = lpt(tower_cost, layout.hosts)
    shapes = _table_shapes(features, widths)
    owner: dict[str, int] = {}
    shards: dict[str, tuple[Shard, ...]] = {}
    table_order = {f.table: None for f in features}  # keep feature order for determinism
    for h in range(layout.hosts):
        tables = [tb for tb in table_order if tower_host[table_tower[tb]] == h]
        load = dict.fromkeys(layout.host_ranks(h), 0.0)
        shards.update(_cut_tables(tables, kinds, shapes, costs, layout.host_ranks(h), load))
        whole = [tb for tb in tables if tb not in shards]
        slots = lpt([costs[tb] for tb in whole], layout.ranks_per_host, list(load.values()))
        owner.update({tb: layout.rank(h, slot) for tb, slot in zip(whole, slots, strict=True)})
    owner = {tb: owner[tb] for tb in table_order if tb in owner}
    return ShardingPlan(
        "sptt",
        layout,
        owner,
        tuple(tower_host),
        _feature_table(features),
        _rows(features),
        shards,
        {t: kinds.get(t, "table") if t in shards else "table" for t in table_order},
    )
