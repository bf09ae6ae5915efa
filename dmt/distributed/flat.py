"""Flat hybrid parallelism (the baseline): tables table-wise over all W ranks, dense parts
data-parallel. Every collective spans the whole world and so crosses hosts.

    rank r, B samples                                  owner o of table T
    ids of every feature  ==(1) global id all-to-all==>  ids of T's features, W*B samples
                                                         (2) look up and pool
    pooled [B, sum d_f]   <==(3) global pooled a2a ===  pooled [W*B, d_f] per feature
    (4) Tower Modules (data-parallel) and head

(1) is the input exchange (`flat_route`): ids alone, which depend on no parameter, so a pipelined
step runs it for batch i+1 while batch i computes (2)-(4) (`flat_compute`).

Gradients: the pooled rows' gradient is divided by W on its way back into (3), so that each
table owner sums the global batch's mean-loss gradient; the dense parts average over all W ranks
(dmt/distributed/gradsync.py).
"""

from __future__ import annotations

from torch import Tensor

from dmt.distributed.comm import CommCounter
from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import RoutedIds, return_rows, send_ids, split_by_feature
from dmt.sparse import KeyedJagged


def flat_route(sm, sparse: KeyedJagged) -> RoutedIds:
    """(1) alone: the input exchange of a batch, counted into a counter of its own. Collective over
    the input groups; depends on no parameter (it may run ahead of the step)."""
    served = [sm.plan.features_served_by(r) for r in range(sm.plan.layout.world)]
    counter = CommCounter()
    ex = sm.input_world_ex.with_counter(counter)
    ids, sizes = send_ids(ex, sparse, served, "ids", sm.plan.id_dtype, sm.codec)  # (1)
    return RoutedIds(ids, sizes, sparse.batch_size, counter)


def flat_compute(sm, dense: Tensor, routed: RoutedIds) -> Tensor:
    """(2)-(4): sm a ShardedModel in flat mode, dense [B, num_dense], a routed batch -> logits [B]."""
    model, plan, widths = sm.module, sm.plan, sm.widths
    served = [plan.features_served_by(r) for r in range(plan.layout.world)]
    timer = sm.timer
    with timer("lookup"):
        pooled = model.embeddings.pool(routed.ids)  # (2) [sum(sizes), sum of my features' widths]
    with timer("output_exchange"):
        served_widths = [sum(widths[f] for f in s) for s in served]
        rows = return_rows(sm.world_ex, pooled, routed.sizes, served_widths, routed.batch_size, "pooled")  # (3)
    per_feature = split_by_feature([scale_grad(r, 1 / plan.layout.world) for r in rows], served, widths)
    with timer("tower_module"):
        outputs = [tm(model.tower_input(per_feature, t)) for t, tm in enumerate(model.tower_modules)]  # (4)
    with timer("dense_forward"):
        return model.head(dense, outputs)
