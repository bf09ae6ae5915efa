"""The two halves of every embedding exchange, shared by the flat and SPTT dataflows.

send_ids:     each member j of a group gets this rank's ids for the features j serves.
return_rows:  each member gets back dense rows for the samples it sent, per serving member.
RoutedIds:    what a batch's input exchange leaves on a rank: the ids its tables serve and the
              sample counts the rest of the step sends rows back by (flat.py, sptt.py `route`).

Samples received from several members are stacked source by source: rows [0, B_0) came from
member 0, [B_0, B_0 + B_1) from member 1, and so on; `return_rows` sends them back in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dmt.distributed.comm import CommCounter, Exchange
from dmt.distributed.idcodec import IdCodec
from dmt.guard import allowed_sync
from dmt.sparse import KeyedJagged


@dataclass
class RoutedIds:
    """A batch's ids after its input exchange (the part of the step that does not depend on the
    parameters, so it may run ahead of the step).

    ids: the ids of the features this rank's tables serve, for every sample that reaches it,
        stacked by source (flat: W * B samples; SPTT: L * H * B).
    sizes: samples per source of the last hop (flat: the global exchange; SPTT: intra-host).
    batch_size: this rank's own samples B.
    rail_sizes, rail_batch: the peer hop (SPTT, and flat's "table_row" path): samples per peer and
        their sum H * B.
    counter: what the input exchange counted (merged into the model's counter when the batch runs).
    lengths: bag lengths [S] of the features whose mean-pooled tables are cut into row shards (the
        mean divides their summed partial rows by the whole bag's length).
    host_path: flat only, the features of "table_row" tables, routed over the two hops.
    """

    ids: KeyedJagged
    sizes: list[int]
    batch_size: int
    counter: CommCounter
    rail_sizes: list[int] | None = None
    rail_batch: int = 0
    lengths: dict[str, Tensor] = field(default_factory=dict)
    host_path: RoutedIds | None = None


def send_ids(
    ex: Exchange,
    kj: KeyedJagged,
    serves: list[list[str]],
    phase: str,
    id_dtype: torch.dtype = torch.int64,
    codec: IdCodec | None = None,
) -> tuple[KeyedJagged, list[int]]:
    """serves[j]: the features member j serves. -> (ids for serves[me] from every member, stacked by
    source member; samples per source [size]).

    Two collectives: the per-member counts, then one message per member. Without `codec` the
    counts are (lengths, ids) and a message holds its lengths (int32), ids (`id_dtype`: int32 when
    every table has fewer than 2^31 rows) and, for weighted features, weights (float32), back to
    back as bytes. With `codec` (dedup_ids) the counts are (lengths, ids, message bytes) and the
    message is the codec's deduplicated, bit-packed form (dmt/distributed/idcodec.py); the part
    a rank keeps for itself never travels and stays plain."""
    parts = kj.per_key()
    mine = serves[ex.index]
    weighted = kj.weights is not None
    payloads, counts = [], []
    for j, feats in enumerate(serves):
        sub = [parts[f] for f in feats]
        lengths = torch.cat([p[1] for p in sub]) if sub else kj.lengths[:0]
        values = torch.cat([p[0] for p in sub]) if sub else kj.values[:0]
        if codec is not None and j != ex.index:
            with allowed_sync("dedup_ids: a message's bit widths are chosen on the host"):
                payloads.append(codec.encode(sub, feats, kj.values.device))
        else:
            pieces = [lengths.to(torch.int32), values.to(id_dtype)]
            if weighted:
                pieces.append((torch.cat([p[2] for p in sub]) if sub else kj.weights[:0]).to(torch.float32))
            payloads.append(torch.cat([_as_bytes(p) for p in pieces]))
        counts.append([lengths.numel(), values.numel()] + ([payloads[-1].numel()] if codec is not None else []))
    with allowed_sync("the receive buffer's size: the all-to-all takes its splits on the host"):
        recv = ex.counts(torch.tensor(counts, dtype=torch.long, device=kj.values.device)).tolist()
    id_size = id_dtype.itemsize
    per_value = id_size + (4 if weighted else 0)
    if codec is not None:
        recv_bytes = [c[2] for c in recv]
    else:
        recv_bytes = [4 * nl + per_value * nv for nl, nv in recv]
    got = ex.all_to_all(torch.cat(payloads), [p.numel() for p in payloads], recv_bytes, phase)

    n = len(mine)
    sizes = [c[0] // n if n else 0 for c in recv]
    sources, offset = [], 0  # per source member: lengths [n * B_j], values, weights
    for j, (c, nbytes) in enumerate(zip(recv, recv_bytes, strict=True)):
        nl, nv = c[0], c[1]
        if codec is not None and j != ex.index:
            with allowed_sync("dedup_ids: a message's bit widths are read on the host"):
                values, lengths, weights = codec.decode(got[offset : offset + nbytes], mine, nl, nv, weighted)
        else:
            lengths = _from_bytes(got, offset, nl, torch.int32).long()
            values = _from_bytes(got, offset + 4 * nl, nv, id_dtype).long()
            weights = _from_bytes(got, offset + 4 * nl + id_size * nv, nv, torch.float32) if weighted else None
        offset += nbytes
        sources.append((lengths, values, weights))
    if not n:
        return KeyedJagged.concat_keys([], [], 0, kj.values.device), sizes
    with allowed_sync("ids per feature and source, to regroup the received ids by feature"):
        per_source = torch.stack([ln.view(n, -1).sum(1) for ln, _, _ in sources]).tolist()  # [sources][n]
    split = [
        (ln.view(n, -1).unbind(0), v.split(c), w.split(c) if weighted else [None] * n)
        for (ln, v, w), c in zip(sources, per_source, strict=True)
    ]
    parts_out = [
        (
            torch.cat([s[1][i] for s in split]),
            torch.cat([s[0][i] for s in split]),
            torch.cat([s[2][i] for s in split]) if weighted else None,
        )
        for i in range(n)
    ]
    return KeyedJagged.concat_keys(parts_out, mine, sum(sizes), kj.values.device), sizes


def _as_bytes(t: Tensor) -> Tensor:
    """A 1-D tensor's bytes, uint8 [numel * element_size]."""
    return t.contiguous().view(torch.uint8)


def _from_bytes(buf: Tensor, offset: int, count: int, dtype: torch.dtype) -> Tensor:
    """`count` values of `dtype` stored in buf[offset:] (copied: the offset need not be aligned)."""
    return buf[offset : offset + count * dtype.itemsize].clone().view(dtype)


def return_rows(
    ex: Exchange, rows: Tensor, sizes: list[int], widths: list[int], batch: int, phase: str
) -> list[Tensor]:
    """rows [sum(sizes), width]: this rank's output for the samples it received (stacked by source).
    widths[j]: the row width member j returns. -> [batch, widths[j]] from every member j."""
    width = rows.shape[1]
    send = [b * width for b in sizes]
    recv = [batch * w for w in widths]
    got = ex.rows(rows.reshape(-1), send, recv, phase)
    return [chunk.view(batch, w) for chunk, w in zip(got.split(recv), widths, strict=True)]


def split_by_feature(blocks: list[Tensor], served: list[list[str]], widths: dict[str, int]) -> dict[str, Tensor]:
    """blocks[j] [B, sum of served[j]'s widths], as `return_rows` gives them -> {feature: [B, d_f]}.
    A member serving nothing returned [B, 0]."""
    out: dict[str, Tensor] = {}
    for feats, block in zip(served, blocks, strict=True):
        if feats:
            out.update(zip(feats, block.split([widths[f] for f in feats], dim=1), strict=True))
    return out
