"""Where things live: tables on ranks (flat) or towers on hosts and tables inside them (SPTT).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmt.distributed.topology import Layout
from dmt.errors import UserError
from dmt.models.base import MultiTowerModel
from dmt.specs import FeatureSpec

MODES = ("single", "flat", "sptt")


@dataclass(frozen=True)
class ShardingPlan:
    """mode "single": a world of one, the one-device model as it is.
    mode "flat": table_owner over all ranks, one data-parallel tower set.
    mode "sptt": tower_host per tower, table_owner inside the tower's host."""

    mode: str
    layout: Layout
    table_owner: dict[str, int]  # table -> global rank
    tower_host: tuple[int, ...]  # tower -> host (sptt); empty otherwise
    feature_table: dict[str, str]
    max_rows: int = 0  # rows of the largest table: ids travel as int32 below 2^31

    @property
    def id_dtype(self) -> torch.dtype:
        return torch.int32 if self.max_rows < 2**31 else torch.int64

    def features_served_by(self, rank: int) -> list[str]:
        """Features whose table lives on `rank`, in feature order."""
        return [f for f, t in self.feature_table.items() if self.table_owner[t] == rank]

    def tables_on(self, rank: int) -> list[str]:
        return [t for t, r in self.table_owner.items() if r == rank]

    def towers_on(self, host: int) -> list[int]:
        return [t for t, h in enumerate(self.tower_host) if h == host]

    def describe(self) -> str:
        """One line per rank: the tables it owns (and, SPTT, its host's towers)."""
        lines = []
        for r in range(self.layout.world):
            towers = f", towers {self.towers_on(self.layout.host_of(r))}" if self.mode == "sptt" else ""
            lines.append(f"rank {r} (host {self.layout.host_of(r)}): tables {self.tables_on(r)}{towers}")
        return "\n".join(lines)


def plan(model: MultiTowerModel, layout: Layout, mode: str = "sptt") -> ShardingPlan:
    """Where `model`'s tables and towers live on `layout`: "flat" (tables table-wise over all
    ranks) or "sptt" (each tower on one host, its tables on that host's ranks). A world of one is
    always "single".

    >>> from dmt.models.dlrm import DLRM
    >>> from dmt.specs import FeatureSpec
    >>> feats = [FeatureSpec(f"f{i}", f"t{i}", 1000) for i in range(4)]
    >>> model = DLRM(feats, num_dense=0, towers=[["f0", "f1"], ["f2", "f3"]], dim=8)
    >>> p = plan(model, Layout(hosts=2, ranks_per_host=2), "sptt")
    >>> p.tower_host, p.table_owner
    ((0, 1), {'t0': 0, 't1': 1, 't2': 2, 't3': 3})
    """
    if mode not in MODES[1:]:
        raise UserError(f"sharding mode must be 'flat' or 'sptt', got {mode!r}")
    features = model.embeddings.features
    widths = model.embeddings.feature_dims
    if layout.world == 1:
        return ShardingPlan(
            "single", layout, {f.table: 0 for f in features}, (), _feature_table(features), _rows(features)
        )
    if mode == "flat":
        return plan_flat(features, widths, layout)
    return plan_sptt(features, model.towers, widths, layout, model.tower_widths)


def lpt(costs: list[float], bins: int) -> list[int]:
    """Item -> bin, balancing the summed cost."""
    load = [0.0] * bins
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


def plan_flat(features: list[FeatureSpec], widths: dict[str, int], layout: Layout) -> ShardingPlan:
    """widths: each feature's pooled width."""
    costs = table_costs(features, widths)
    tables = list(costs)
    owner = lpt([costs[t] for t in tables], layout.world)
    return ShardingPlan(
        "flat", layout, dict(zip(tables, owner, strict=True)), (), _feature_table(features), _rows(features)
    )


def plan_sptt(
    features: list[FeatureSpec],
    towers: list[list[str]],
    widths: dict[str, int],
    layout: Layout,
    tower_widths: list[int] | None = None,
) -> ShardingPlan:
    """widths: each feature's pooled width; tower_widths: each Tower Module's output floats per
    sample (default: identity, the sum of its features' widths)."""
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
    owner: dict[str, int] = {}
    for h in range(layout.hosts):
        tables = [tb for tb, tw in table_tower.items() if tower_host[tw] == h]
        slots = lpt([costs[tb] for tb in tables], layout.ranks_per_host)
        owner.update({tb: layout.rank(h, slot) for tb, slot in zip(tables, slots, strict=True)})
    table_order = {f.table: None for f in features}  # keep feature order for determinism
    owner = {tb: owner[tb] for tb in table_order}
    return ShardingPlan("sptt", layout, owner, tuple(tower_host), _feature_table(features), _rows(features))
