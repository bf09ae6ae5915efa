"""The two halves of every embedding exchange, shared by the flat and SPTT dataflows.

send_ids:     each member j of a group gets this rank's ids for the features j serves.
return_rows:  each member gets back dense rows for the samples it sent, per serving member.

Samples received from several members are stacked source by source: rows [0, B_0) came from
member 0, [B_0, B_0 + B_1) from member 1, and so on; `return_rows` sends them back in that order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmt.distributed.comm import Exchange
from dmt.guard import allowed_sync
from dmt.sparse import KeyedJagged


def send_ids(
    ex: Exchange, kj: KeyedJagged, serves: list[list[str]], phase: str, id_dtype: torch.dtype = torch.int64
) -> tuple[KeyedJagged, list[int]]:
    """serves[j]: the features member j serves. -> (ids for serves[me] from every member, stacked by
    source member; samples per source [size]).

    Two collectives: the per-member counts (lengths, ids), then one message per member holding its
    lengths (int32), ids (`id_dtype`: int32 when every table has fewer than 2^31 rows) and, for
    weighted features, weights (float32), back to back as bytes."""
    parts = kj.per_key()
    mine = serves[ex.index]
    weighted = kj.weights is not None
    payloads, counts = [], []
    for feats in serves:
        sub = [parts[f] for f in feats]
        lengths = torch.cat([p[1] for p in sub]) if sub else kj.lengths[:0]
        values = torch.cat([p[0] for p in sub]) if sub else kj.values[:0]
        pieces = [lengths.to(torch.int32), values.to(id_dtype)]
        if weighted:
            pieces.append((torch.cat([p[2] for p in sub]) if sub else kj.weights[:0]).to(torch.float32))
        payloads.append(torch.cat([_as_bytes(p) for p in pieces]))
        counts.append([lengths.numel(), values.numel()])
    with allowed_sync("the receive buffer's size: the all-to-all takes its splits on the host"):
        recv = ex.counts(torch.tensor(counts, dtype=torch.long, device=kj.values.device)).tolist()
    id_size = id_dtype.itemsize
    per_value = id_size + (4 if weighted else 0)
    got = ex.all_to_all(
        torch.cat(payloads), [p.numel() for p in payloads], [4 * nl + per_value * nv for nl, nv in recv], phase
    )

    n = len(mine)
    sizes = [nl // n if n else 0 for nl, _ in recv]
    sources, offset = [], 0  # per source member: lengths [n * B_j], values, weights
    for nl, nv in recv:
        lengths = _from_bytes(got, offset, nl, torch.int32).long()
        offset += 4 * nl
        values = _from_bytes(got, offset, nv, id_dtype).long()
        offset += id_size * nv
        weights = None
        if weighted:
            weights = _from_bytes(got, offset, nv, torch.float32)
            offset += 4 * nv
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
