"""Flat hybrid parallelism (the baseline): tables table-wise over all W ranks, dense parts
data-parallel. Every collective spans the whole world and so crosses hosts.

    rank r, B samples                                  owner o of table T
    ids of every feature  ==(1) global id all-to-all==>  ids of T's features, W*B samples
                                                         (2) look up and pool
    pooled [B, sum d_f]   <==(3) global pooled a2a ===  pooled [W*B, d] per feature
    (4) Tower Modules (data-parallel) and head
"""

from __future__ import annotations

from torch import Tensor

from dmt.distributed.ids import return_rows, send_ids
from dmt.sparse import KeyedJagged


def flat_forward(dm, dense: Tensor, sparse: KeyedJagged) -> Tensor:
    """dm: DistributedModel in flat mode. dense [B, num_dense], sparse (B samples) -> logits [B]."""
    model, plan, d = dm.model, dm.plan, dm.model.dim
    served = [plan.features_served_by(r) for r in range(plan.layout.world)]
    timer = dm.timer
    with timer("input_exchange"):
        ids, sizes = send_ids(dm.world_ex, sparse, served, "ids", plan.id_dtype)  # (1)
    with timer("lookup"):
        pooled = dm.pool(ids)  # (2) [sum(sizes), n_me * d]
    with timer("output_exchange"):
        widths = [len(s) * d for s in served]
        rows = return_rows(dm.world_ex, pooled, sizes, widths, sparse.batch_size, "pooled")  # (3)
    per_feature = {}
    for feats, block in zip(served, rows, strict=True):
        if feats:  # an owner serving nothing returns [B, 0]
            per_feature.update(zip(feats, block.split(d, dim=1), strict=True))
    with timer("tower_module"):
        outputs = [tm(model.tower_input(per_feature, t)) for t, tm in enumerate(model.tower_modules)]  # (4)
    with timer("dense_forward"):
        return dm.head(dense, outputs)
