r"""SPTT, the Semantic-preserving Tower Transform: the whole forward dataflow in one place.

H hosts x L ranks; rank (h, l). Tower t lives on host g(t); its tables live on ranks of g(t).
B samples per rank. Example H = 2, L = 2, towers A (host 0) and B (host 1):

   host 0                                   host 1
  (0,0) (0,1)                              (1,0) (1,1)
    |     \______ (1) peer ids, rail l=1 ______/  |        cross-host, H-1 peers per rank:
    |_____________ (1) peer ids, rail l=0 ________|        tower t's ids go to (g(t), l)
  (0,l) now holds tower A's ids for the H*B samples of its rail; (1,l) tower B's
    (2) intra-host id all-to-all: ids to the rank of host g that owns each table
    (3) look up and pool on the owner
    (4) intra-host pooled all-to-all: (g,l) gets [H*B, D_t] for its rail's samples
    (5) Tower Module TM_t on (g,l): [H*B, D_t] -> [H*B, D'_t]   (DDP inside host g only)
  (0,l) <============ (6) peer pooled all-to-all ============> (1,l)
        rank (h,l) gets [B, D'_t] for every tower t: only D'_t = D_t / CR crosses hosts
    (7) interaction + top MLP on (h,l), data-parallel over all W ranks

The backward pass mirrors (6), (5), (4) and (3) through autograd. With identity Tower Modules the
head sees exactly the flat baseline's inputs: placement and schedule change, the math does not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmt.distributed.ids import return_rows, send_ids
from dmt.sparse import KeyedJagged


def sptt_forward(dm, dense: Tensor, sparse: KeyedJagged) -> Tensor:
    """dm: DistributedModel in SPTT mode. dense [B, num_dense], sparse (B samples) -> logits [B]."""
    model, plan, layout, d = dm.model, dm.plan, dm.plan.layout, dm.model.dim
    host = layout.host_of(dm.rank)
    host_features = [[f for t in plan.towers_on(g) for f in model.towers[t]] for g in range(layout.hosts)]

    timer = dm.timer
    served = [plan.features_served_by(r) for r in layout.host_ranks(host)]
    with timer("input_exchange"):
        # (1) peer id all-to-all: my ids of host g's towers go to (g, my local index)
        rail_ids, rail_sizes = send_ids(dm.peer_ex, sparse, host_features, "peer_ids", plan.id_dtype)  # H*B samples
        # (2) intra-host id all-to-all: to the rank of my host that owns each table
        own_ids, own_sizes = send_ids(dm.intra_ex, rail_ids, served, "intra_ids", plan.id_dtype)
    with timer("lookup"):
        # (3) lookup and pooling of the tables I own
        pooled = dm.pool(own_ids)  # [L*H*B, n_me * d]
    with timer("output_exchange"):
        # (4) intra-host pooled all-to-all: every feature of my host for my rail's H*B samples
        served_widths = [len(s) * d for s in served]
        rows = return_rows(dm.intra_ex, pooled, own_sizes, served_widths, rail_ids.batch_size, "intra_pooled")
    per_feature = {}
    for feats, block in zip(served, rows, strict=True):
        if feats:  # an owner serving nothing returns [B, 0]
            per_feature.update(zip(feats, block.split(d, dim=1), strict=True))
    with timer("tower_module"):
        # (5) Tower Modules of my host's towers: [H*B, n_t * d] -> [H*B, D'_t]
        mine = plan.towers_on(host)
        compressed = [model.tower_modules[t](model.tower_input(per_feature, t)) for t in mine]
        block = torch.cat(compressed, 1) if compressed else pooled.new_zeros(rail_ids.batch_size, 0)
    with timer("output_exchange"):
        # (6) peer pooled all-to-all: each peer gets its B rows of every tower
        widths = [[model.tower_modules[t].out_features for t in plan.towers_on(g)] for g in range(layout.hosts)]
        got = return_rows(dm.peer_ex, block, rail_sizes, [sum(w) for w in widths], sparse.batch_size, "peer_pooled")
    outputs: list[Tensor | None] = [None] * len(model.towers)
    for g, part in enumerate(got):
        for t, out in zip(plan.towers_on(g), part.split(widths[g], dim=1), strict=True):
            outputs[t] = out
    with timer("dense_forward"):
        # (7) global interaction and top MLP
        return dm.head(dense, outputs)
