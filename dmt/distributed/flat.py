"""Flat hybrid parallelism (the baseline): tables over all W ranks, dense parts data-parallel.
Every collective spans the whole world and so crosses hosts.

    rank r, B samples                                  owner o of table T (or of a shard of T)
    ids of every feature  ==(1) global id all-to-all==>  ids of T's features, W*B samples
                                                         (a row shard: only the ids in its rows)
                                                         (2) look up and pool
    pooled [B, sum d_f]   <==(3) global pooled a2a ===  pooled [W*B, d_f] per feature
    (row shards' partial sums added, column shards side by side: dmt/distributed/lookup.py)
    (4) Tower Modules (data-parallel) and head

(1) is the input exchange (`flat_route`): ids alone, which depend on no parameter, so a pipelined
step runs it for batch i+1 while batch i computes (2)-(4) (`flat_compute`).

Tables cut "table_row" (rows over the ranks of one host g) take SPTT's two hops instead
(`hops_route` / `hops_lookup` of sptt.py, without a Tower Module): ids to the rail peer on g,
inside g to the row shards, the partial sums added on the rail peer, so that ids and pooled rows
cross hosts once. With every table "table_row", (1) and (3) do not run.

Gradients: the pooled rows' gradient is divided by W on its way back into (3) (by L inside the
host and by H across hosts on the two-hop path), so that each table owner sums the global batch's
mean-loss gradient; the dense parts average over all W ranks (dmt/distributed/gradsync.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmt.distributed.comm import CommCounter
from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import RoutedIds, return_rows, split_by_feature
from dmt.distributed.lookup import cut_lengths, lookup_units, route_units
from dmt.distributed.sptt import hops_lookup, hops_route
from dmt.sparse import KeyedJagged


def _split(sm) -> tuple[list[str], list[str], list[list[str]]]:
    """-> (features over the world, features of "table_row" tables, the units each rank serves of the first)."""
    plan = sm.plan
    two_hop = plan.host_path_features()
    features = [f for f in sm.module.feature_names if f not in two_hop]
    return features, two_hop, [plan.units_served_by(r, features) for r in range(plan.layout.world)]


def _on_host(sm, two_hop: list[str]) -> list[list[str]]:
    plan = sm.plan
    return [[f for f in two_hop if plan.table_host(plan.feature_table[f]) == g] for g in range(plan.layout.hosts)]


def flat_route(sm, sparse: KeyedJagged) -> RoutedIds:
    """(1) alone: the input exchange of a batch, counted into a counter of its own. Collective over
    the input groups; depends on no parameter (it may run ahead of the step)."""
    features, two_hop, served = _split(sm)
    counter = CommCounter()
    b = sparse.batch_size
    routed = RoutedIds(KeyedJagged.concat_keys([], [], 0, sparse.values.device), [], b, counter)
    if features:  # (every table "table_row": nothing goes over the world)
        ids, sizes = route_units(sm, sm.input_world_ex.with_counter(counter), sparse, served, "ids")  # (1)
        routed = RoutedIds(ids, sizes, b, counter, lengths=cut_lengths(sm, sparse, features))
    if two_hop:
        routed.host_path = hops_route(sm, sparse, _on_host(sm, two_hop), counter)
    return routed


def flat_compute(sm, dense: Tensor, routed: RoutedIds) -> Tensor:
    """(2)-(4): sm a ShardedModel in flat mode, dense [B, num_dense], a routed batch -> logits [B]."""
    model, world = sm.module, sm.plan.layout.world
    features, two_hop, served = _split(sm)
    per_feature = {}
    if features:  # (2) and (3)
        args = (routed.ids, routed.sizes, routed.batch_size, routed.lengths, features, served, "pooled")
        per_feature = lookup_units(sm, sm.world_ex, *args, 1 / world)
    if two_hop:
        per_feature.update(host_path(sm, routed.host_path, _on_host(sm, two_hop)))
    timer = sm.timer
    with timer("tower_module"):
        outputs = [tm(model.tower_input(per_feature, t)) for t, tm in enumerate(model.tower_modules)]  # (4)
    with timer("dense_forward"):
        return model.head(dense, outputs)


def host_path(sm, routed: RoutedIds, on_host: list[list[str]]) -> dict[str, Tensor]:
    """The features of "table_row" tables after their two hops (sptt.py steps 3, 4 and 6, with no
    Tower Module) -> {feature: [B, d_f]}."""
    layout, widths = sm.plan.layout, sm.widths
    mine = on_host[layout.host_of(sm.rank)]
    pooled = hops_lookup(sm, routed, on_host)
    device = routed.ids.values.device
    block = torch.cat([pooled[f] for f in mine], 1) if mine else torch.zeros(routed.rail_batch, 0, device=device)
    with sm.timer("output_exchange"):
        out_widths = [sum(widths[f] for f in g) for g in on_host]
        got = return_rows(sm.peer_ex, block, routed.rail_sizes, out_widths, routed.batch_size, "peer_pooled")
    return split_by_feature([scale_grad(g, 1 / layout.hosts) for g in got], on_host, widths)
