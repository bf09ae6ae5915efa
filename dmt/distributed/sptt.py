r"""SPTT, the Semantic-preserving Tower Transform: the whole forward dataflow in one place.

H hosts x L ranks; rank (h, l). Tower t lives on host g(t); its tables live on ranks of g(t).
B samples per rank. Example H = 2, L = 2, towers A (host 0) and B (host 1):

   host 0                                   host 1
  (0,0) (0,1)                              (1,0) (1,1)
    |     \______ (1) peer ids, rail l=1 ______/  |        cross-host, H-1 peers per rank:
    |_____________ (1) peer ids, rail l=0 ________|        tower t's ids go to (g(t), l)
  (0,l) now holds tower A's ids for the H*B samples of its rail; (1,l) tower B's
    (2) intra-host id all-to-all: ids to the rank of host g that owns each table (or shard)
    (3) look up and pool on the owner
    (4) intra-host pooled all-to-all: (g,l) gets [H*B, D_t] for its rail's samples
        (2)-(4) are dmt/distributed/lookup.py: a table cut into shards inside host g gets, per
        row shard, only the ids of its rows; their partial sums are added on (g,l)
    (5) Tower Module TM_t on (g,l): [H*B, D_t] -> [H*B, D'_t]   (DDP inside host g only)
  (0,l) <============ (6) peer pooled all-to-all ============> (1,l)
        rank (h,l) gets [B, D'_t] for every tower t: only D'_t = D_t / CR crosses hosts
    (7) interaction + top MLP on (h,l), data-parallel over all W ranks

The backward pass mirrors (6), (5), (4) and (3) through autograd. With identity Tower Modules the
head sees exactly the flat baseline's inputs: placement and schedule change, the math does not.

Gradients: what flows back into (6) is divided by H and what flows back into (4) by L, so that
a table owner sums the global batch's mean-loss gradient (1/W of the sum over all ranks' local
mean losses), and a Tower Module's gradient, averaged over the L ranks of its host, is its
global-batch gradient; the head averages over all W ranks (dmt/distributed/gradsync.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import return_rows, send_ids
from dmt.distributed.lookup import group_lookup
from dmt.sparse import KeyedJagged


def sptt_forward(sm, dense: Tensor, sparse: KeyedJagged) -> Tensor:
    """sm: ShardedModel in SPTT mode. dense [B, num_dense], sparse (B samples) -> logits [B]."""
    model, plan, layout = sm.module, sm.plan, sm.plan.layout
    host = layout.host_of(sm.rank)
    host_features = [[f for t in plan.towers_on(g) for f in model.towers[t]] for g in range(layout.hosts)]

    timer = sm.timer
    mine = host_features[host]
    served = [plan.units_served_by(r, mine) for r in layout.host_ranks(host)]
    with timer("input_exchange"):
        # (1) peer id all-to-all: my ids of host g's towers go to (g, my local index)
        rail_ids, rail_sizes = send_ids(sm.peer_ex, sparse, host_features, "peer_ids", plan.id_dtype)  # H*B samples
    # (2) intra-host id all-to-all to the ranks of my host that own each table (or shard), (3) their
    # lookups, (4) intra-host pooled all-to-all: every feature of my host for my rail's H*B samples
    phases = ("intra_ids", "intra_pooled")
    per_feature = group_lookup(sm, sm.intra_ex, rail_ids, mine, served, phases, 1 / layout.ranks_per_host)
    with timer("tower_module"):
        # (5) Tower Modules of my host's towers: [H*B, D_t] -> [H*B, D'_t]
        mine = plan.towers_on(host)
        compressed = [model.tower_modules[t](model.tower_input(per_feature, t)) for t in mine]
        # float32 on the wire whatever precision the Tower Modules computed in
        block = torch.cat(compressed, 1).float() if compressed else dense.new_zeros(rail_ids.batch_size, 0).float()
    with timer("output_exchange"):
        # (6) peer pooled all-to-all: each peer gets its B rows of every tower
        out_widths = [[model.tower_widths[t] for t in plan.towers_on(g)] for g in range(layout.hosts)]
        got = return_rows(sm.peer_ex, block, rail_sizes, [sum(w) for w in out_widths], sparse.batch_size, "peer_pooled")
    outputs: list[Tensor | None] = [None] * len(model.towers)
    for g, part in enumerate(got):
        for t, out in zip(plan.towers_on(g), part.split(out_widths[g], dim=1), strict=True):
            outputs[t] = scale_grad(out, 1 / layout.hosts)
    with timer("dense_forward"):
        # (7) global interaction and top MLP
        return model.head(dense, outputs)
