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

Steps (1) and (2) are the input exchange (`sptt_route`): ids alone, which depend on no parameter,
so a pipelined step runs them for batch i+1 while batch i computes (3)-(7) (`sptt_compute`).
Pooled rows and their gradients travel at the model's wire width (fp32, bf16 or fp16), ids exactly
(deduplicated and bit-packed with dedup_ids; dmt/distributed/wire.py).

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

from dmt.distributed.comm import CommCounter
from dmt.distributed.gradsync import scale_grad
from dmt.distributed.ids import RoutedIds, return_rows, send_ids
from dmt.distributed.lookup import cut_lengths, lookup_units, route_units
from dmt.sparse import KeyedJagged


def sptt_route(sm, sparse: KeyedJagged) -> RoutedIds:
    """(1) and (2): the input exchange of a batch, counted into a counter of its own. Collective
    over the input groups; depends on no parameter (it may run ahead of the step)."""
    return hops_route(sm, sparse, host_features(sm), CommCounter())


def sptt_compute(sm, dense: Tensor, routed: RoutedIds) -> Tensor:
    """(3)-(7): sm a ShardedModel in SPTT mode, dense [B, num_dense], a routed batch -> logits [B]."""
    model, plan, layout = sm.module, sm.plan, sm.plan.layout
    host = layout.host_of(sm.rank)
    # (3) lookups of the tables (and shards) I own, (4) intra-host pooled all-to-all: every feature
    # of my host for my rail's H*B samples
    per_feature = hops_lookup(sm, routed, host_features(sm))
    timer = sm.timer
    with timer("tower_module"):
        # (5) Tower Modules of my host's towers: [H*B, D_t] -> [H*B, D'_t]
        mine = plan.towers_on(host)
        compressed = [model.tower_modules[t](model.tower_input(per_feature, t)) for t in mine]
        # float32 whatever precision the Tower Modules computed in; the wire's width is dist.comm_precision
        block = torch.cat(compressed, 1).float() if compressed else dense.new_zeros(routed.rail_batch, 0).float()
    with timer("output_exchange"):
        # (6) peer pooled all-to-all: each peer gets its B rows of every tower
        out_widths = [[model.tower_widths[t] for t in plan.towers_on(g)] for g in range(layout.hosts)]
        got = return_rows(
            sm.peer_ex, block, routed.rail_sizes, [sum(w) for w in out_widths], routed.batch_size, "peer_pooled"
        )
    outputs: list[Tensor | None] = [None] * len(model.towers)
    for g, part in enumerate(got):
        for t, out in zip(plan.towers_on(g), part.split(out_widths[g], dim=1), strict=True):
            outputs[t] = scale_grad(out, 1 / layout.hosts)
    with timer("dense_forward"):
        # (7) global interaction and top MLP
        return model.head(dense, outputs)


def host_features(sm) -> list[list[str]]:
    """Per host: the features of its towers."""
    model, plan = sm.module, sm.plan
    return [[f for t in plan.towers_on(g) for f in model.towers[t]] for g in range(plan.layout.hosts)]


def hops_route(sm, sparse: KeyedJagged, on_host: list[list[str]], counter: CommCounter) -> RoutedIds:
    """Steps (1) and (2) for features served on host g = on_host[g] (SPTT's towers, or flat's
    "table_row" tables), on the input groups, counted into `counter`."""
    plan, layout = sm.plan, sm.plan.layout
    host = layout.host_of(sm.rank)
    peer, intra = sm.input_peer_ex.with_counter(counter), sm.input_intra_ex.with_counter(counter)
    # (1) peer id all-to-all: my ids of host g's features go to (g, my local index)
    rail_ids, rail_sizes = send_ids(peer, sparse, on_host, "peer_ids", plan.id_dtype, sm.codec)  # H*B samples
    # (2) intra-host id all-to-all: to the ranks of my host that own each table (or shard)
    served = [plan.units_served_by(r, on_host[host]) for r in layout.host_ranks(host)]
    own, sizes = route_units(sm, intra, rail_ids, served, "intra_ids")
    lengths = cut_lengths(sm, rail_ids, on_host[host])
    return RoutedIds(own, sizes, sparse.batch_size, counter, rail_sizes, rail_ids.batch_size, lengths)


def hops_lookup(sm, routed: RoutedIds, on_host: list[list[str]]) -> dict[str, Tensor]:
    """Steps (3) and (4) for a batch `hops_route` routed -> {feature: [H*B, d_f]} of my host's features."""
    plan, layout = sm.plan, sm.plan.layout
    host = layout.host_of(sm.rank)
    mine = on_host[host]
    served = [plan.units_served_by(r, mine) for r in layout.host_ranks(host)]
    args = (routed.ids, routed.sizes, routed.rail_batch, routed.lengths, mine, served, "intra_pooled")
    return lookup_units(sm, sm.intra_ex, *args, 1 / layout.ranks_per_host)
