"""One embedding lookup over one group, whole tables and shards alike: the step both dataflows
share (flat: over the world; SPTT and flat "table_row": inside a host). Its two halves:

    route_units   (the input exchange: ids alone, no parameter; it may run ahead of the step)
      ids of `features` for S samples
      --split_ids-->       ids per exchange unit (a row shard gets its rows' ids, re-based)
      --send_ids-->        each member gets the ids of the units it serves, from every member
    lookup_units
      --pool-->            the owner pools its tables and shards
      --return_rows-->     each member gets back [S, width of the unit] per unit it asked for
      --combine-->         {feature: [S, d_f]}: row partial sums added, columns side by side

The gradient flowing back into the pooled rows is multiplied by `grad_scale` (see gradsync.py).
"""

from __future__ import annotations

from torch import Tensor

from dmt.distributed.comm import Exchange
from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import return_rows, send_ids, split_by_feature
from dmt.distributed.shards import combine, split_ids
from dmt.sparse import KeyedJagged


def route_units(sm, ex: Exchange, kj: KeyedJagged, served: list[list[str]], phase: str):
    """sm: the ShardedModel; kj: ids of (at least) the served units' features for S samples;
    served[j]: the units member j of `ex` serves (plan.units_served_by). -> (the ids of the units
    this rank serves from every member, stacked by source; samples per source)."""
    plan = sm.plan
    units = [u for s in served for u in s]
    split = split_ids(kj, units, plan.shards, plan.feature_table)
    return send_ids(ex, split, served, phase, plan.id_dtype, sm.codec)


def cut_lengths(sm, kj: KeyedJagged, features: list[str]) -> dict[str, Tensor]:
    """Bag lengths [S] of those `features` whose mean-pooled table is cut into shards."""
    plan = sm.plan
    cut = [f for f in features if plan.feature_table[f] in plan.shards and sm.mean_tables[plan.feature_table[f]]]
    if not cut:
        return {}
    per_key = kj.per_key()
    return {f: per_key[f][1] for f in cut}


def lookup_units(
    sm,
    ex: Exchange,
    own: KeyedJagged,
    sizes: list[int],
    batch_size: int,
    lengths: dict[str, Tensor],
    features: list[str],
    served: list[list[str]],
    phase: str,
    grad_scale: float,
) -> dict[str, Tensor]:
    """The rest of the lookup, for what `route_units` delivered (own, sizes) of a batch of
    `batch_size` samples on this rank (lengths: `cut_lengths` of that batch). -> {feature: [S, d_f]}."""
    plan, timer = sm.plan, sm.timer
    with timer("lookup"):
        pooled = sm.module.embeddings.pool(own, sm.unit_table)  # [sum(sizes), widths of my units]
    with timer("output_exchange"):
        units = [u for s in served for u in s]
        widths = plan.unit_widths(units, sm.widths)
        per_member = [sum(widths[u] for u in s) for s in served]
        rows = return_rows(ex, pooled, sizes, per_member, batch_size, phase)
    parts = split_by_feature([scale_grad(r, grad_scale) for r in rows], served, widths)
    return combine(parts, features, plan.shards, plan.feature_table, sm.mean_tables, lengths)
