"""Flat hybrid parallelism (the baseline): tables over all W ranks, dense parts data-parallel.
Every collective spans the whole world and so crosses hosts.

    rank r, B samples                                  owner o of table T (or of a shard of T)
    ids of every feature  ==(1) global id all-to-all==>  ids of T's features, W*B samples
                                                         (a row shard: only the ids in its rows)
                                                         (2) look up and pool
    pooled [B, sum d_f]   <==(3) global pooled a2a ===  pooled [W*B, d_f] per feature
    (row shards' partial sums added, column shards side by side: dmt/distributed/lookup.py)
    (4) Tower Modules (data-parallel) and head

Tables cut "table_row" (rows over the ranks of one host g) take SPTT's two hops instead
(`host_path`): ids to the rail peer on g, inside g to the row shards, the partial sums added on
the rail peer, so that ids and pooled rows cross hosts once. With every table "table_row", (1) and
(3) do not run.

Gradients: the pooled rows' gradient is divided by W on its way back into (3) (by L inside the
host and by H across hosts on the two-hop path), so that each table owner sums the global batch's
mean-loss gradient; the dense parts average over all W ranks (dmt/distributed/gradsync.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import return_rows, send_ids, split_by_feature
from dmt.distributed.lookup import group_lookup
from dmt.sparse import KeyedJagged


def flat_forward(sm, dense: Tensor, sparse: KeyedJagged) -> Tensor:
    """sm: ShardedModel in flat mode. dense [B, num_dense], sparse (B samples) -> logits [B]."""
    model, plan = sm.module, sm.plan
    two_hop = plan.host_path_features()
    features = [f for f in model.feature_names if f not in two_hop]
    served = [plan.units_served_by(r, features) for r in range(plan.layout.world)]
    per_feature = {}
    if features:  # (every table "table_row": nothing goes over the world)
        per_feature = group_lookup(sm, sm.world_ex, sparse, features, served, ("ids", "pooled"), 1 / plan.layout.world)
    if two_hop:
        per_feature.update(host_path(sm, sparse, two_hop))
    timer = sm.timer
    with timer("tower_module"):
        outputs = [tm(model.tower_input(per_feature, t)) for t, tm in enumerate(model.tower_modules)]  # (4)
    with timer("dense_forward"):
        return model.head(dense, outputs)


def host_path(sm, sparse: KeyedJagged, features: list[str]) -> dict[str, Tensor]:
    """The features of "table_row" tables, over SPTT's two hops (sptt.py steps 1-4 and 6, with no
    Tower Module). sparse: B samples -> {feature: [B, d_f]}."""
    plan, layout, widths, timer = sm.plan, sm.plan.layout, sm.widths, sm.timer
    device = sparse.values.device
    on_host = [[f for f in features if plan.table_host(plan.feature_table[f]) == g] for g in range(layout.hosts)]
    mine = on_host[layout.host_of(sm.rank)]
    with timer("input_exchange"):
        rail_ids, rail_sizes = send_ids(sm.peer_ex, sparse, on_host, "peer_ids", plan.id_dtype)  # H*B samples
    served = [plan.units_served_by(r, mine) for r in layout.host_ranks(layout.host_of(sm.rank))]
    pooled = group_lookup(
        sm, sm.intra_ex, rail_ids, mine, served, ("intra_ids", "intra_pooled"), 1 / layout.ranks_per_host
    )
    block = torch.cat([pooled[f] for f in mine], 1) if mine else torch.zeros(rail_ids.batch_size, 0, device=device)
    with timer("output_exchange"):
        out_widths = [sum(widths[f] for f in g) for g in on_host]
        got = return_rows(sm.peer_ex, block, rail_sizes, out_widths, sparse.batch_size, "peer_pooled")
    return split_by_feature([scale_grad(g, 1 / layout.hosts) for g in got], on_host, widths)
