"""Flat hybrid parallelism (the baseline): tables table-wise over all W ranks, dense parts
data-parallel. Every collective spans the whole world and so crosses hosts.

    rank r, B samples                                  owner o of table T
    ids of every feature  ==(1) global id all-to-all==>  ids of T's features, W*B samples
                                                         (2) look up and pool
    pooled [B, sum d_f]   <==(3) global pooled a2a ===  pooled [W*B, d_f] per feature
    (4) Tower Modules (data-parallel) and head

Gradients: the pooled rows' gradient is divided by W on its way back into (3), so that each
table owner sums the global batch's mean-loss gradient; the dense parts average over all W ranks
(dmt/distributed/gradsync.py).
"""

from __future__ import annotations

from torch import Tensor

from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import return_rows, send_ids, split_by_feature
from dmt.sparse import KeyedJagged


def flat_forward(sm, dense: Tensor, sparse: KeyedJagged) -> Tensor:
    """sm: ShardedModel in flat mode. dense [B, num_dense], sparse (B samples) -> logits [B]."""
    model, plan, widths = sm.module, sm.plan, sm.widths
    served = [plan.features_served_by(r) for r in range(plan.layout.world)]
    timer = sm.timer
    with timer("input_exchange"):
        ids, sizes = send_ids(sm.world_ex, sparse, served, "ids", plan.id_dtype)  # (1)
    with timer("lookup"):
        pooled = model.embeddings.pool(ids)  # (2) [sum(sizes), sum of my features' widths]
    with timer("output_exchange"):
        served_widths = [sum(widths[f] for f in s) for s in served]
        rows = return_rows(sm.world_ex, pooled, sizes, served_widths, sparse.batch_size, "pooled")  # (3)
    per_feature = split_by_feature([scale_grad(r, 1 / plan.layout.world) for r in rows], served, widths)
    with timer("tower_module"):
        outputs = [tm(model.tower_input(per_feature, t)) for t, tm in enumerate(model.tower_modules)]  # (4)
    with timer("dense_forward"):
        return model.head(dense, outputs)
