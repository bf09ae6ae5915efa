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
from dmt.sparse import KeyedJagged


def send_ids(
    ex: Exchange, kj: KeyedJagged, serves: list[list[str]], phase: str, id_dtype: torch.dtype = torch.int64
) -> tuple[KeyedJagged, list[int]]:
    """serves[j]: the features member j serves. -> (ids for serves[me] from every member, stacked by
    source member; samples per source [size]). Lengths travel as int32, ids as `id_dtype` (int32
    when every table has fewer than 2^31 rows)."""
    parts = kj.per_key()
    mine = serves[ex.index]
    lengths, values, weights, counts = [], [], [], []
    for feats in serves:
        sub = [parts[f] for f in feats]
        lengths.append(torch.cat([p[1] for p in sub]) if sub else kj.lengths[:0])
        values.append(torch.cat([p[0] for p in sub]) if sub else kj.values[:0])
        if kj.weights is not None:
            weights.append(torch.cat([p[2] for p in sub]) if sub else kj.weights[:0])
        counts.append([lengths[-1].numel(), values[-1].numel()])
    recv = ex.counts(torch.tensor(counts, dtype=torch.long, device=kj.values.device)).tolist()
    send_l, send_v = [c[0] for c in counts], [c[1] for c in counts]
    recv_l, recv_v = [c[0] for c in recv], [c[1] for c in recv]
    got_l = ex.all_to_all(torch.cat(lengths).to(torch.int32), send_l, recv_l, f"{phase}.lengths").long()
    got_v = ex.all_to_all(torch.cat(values).to(id_dtype), send_v, recv_v, f"{phase}.ids").long()
    got_w = ex.all_to_all(torch.cat(weights), send_v, recv_v, f"{phase}.weights") if weights else None

    n = len(mine)
    sizes = [c // n if n else 0 for c in recv_l]
    by_source = []
    if n:
        for ln, v, w in zip(got_l.split(recv_l), got_v.split(recv_v), _split(got_w, recv_v), strict=True):
            by_source.append(KeyedJagged(mine, v, ln, w).per_key())
    parts_out = [
        (
            torch.cat([s[f][0] for s in by_source]),
            torch.cat([s[f][1] for s in by_source]),
            torch.cat([s[f][2] for s in by_source]) if got_w is not None else None,
        )
        for f in mine
    ]
    return KeyedJagged.concat_keys(parts_out, mine, sum(sizes)), sizes


def _split(t: Tensor | None, sizes: list[int]) -> list[Tensor | None]:
    return list(t.split(sizes)) if t is not None else [None] * len(sizes)


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
