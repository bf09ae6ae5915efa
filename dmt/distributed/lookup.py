"""One embedding lookup over one group, whole tables and shards alike: the step both dataflows
share (flat: over the world; SPTT and flat "table_row": inside a host).

    ids of `features` for S samples
      --split_ids-->       ids per exchange unit (a row shard gets its rows' ids, re-based)
      --send_ids-->        each member gets the ids of the units it serves, from every member
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


def group_lookup(
    sm,
    ex: Exchange,
    kj: KeyedJagged,
    features: list[str],
    served: list[list[str]],
    phases: tuple[str, str],
    grad_scale: float,
) -> dict[str, Tensor]:
    """sm: the ShardedModel; kj: ids of (at least) `features` for S samples; served[j]: the units
    member j of `ex` serves (plan.units_served_by); phases: names of the id and row exchanges.
    -> {feature: [S, d_f]} for `features`."""
    plan, timer = sm.plan, sm.timer
    with timer("input_exchange"):
        units = [u for s in served for u in s]
        split = split_ids(kj, units, plan.shards, plan.feature_table)
        own, sizes = send_ids(ex, split, served, phases[0], plan.id_dtype)
    with timer("lookup"):
        pooled = sm.module.embeddings.pool(own, sm.unit_table)  # [sum(sizes), widths of my units]
    with timer("output_exchange"):
        widths = plan.unit_widths(units, sm.widths)
        per_member = [sum(widths[u] for u in s) for s in served]
        rows = return_rows(ex, pooled, sizes, per_member, kj.batch_size, phases[1])
    parts = split_by_feature([scale_grad(r, grad_scale) for r in rows], served, widths)
    cut = [f for f in features if plan.feature_table[f] in plan.shards and sm.mean_tables[plan.feature_table[f]]]
    lengths = {}
    if cut:
        per_key = kj.per_key()
        lengths = {f: per_key[f][1] for f in cut}
    return combine(parts, features, plan.shards, plan.feature_table, sm.mean_tables, lengths)
