"""Ids on the wire, deduplicated and bit-packed: one message of an input exchange (`dist.dedup_ids`).

A message carries, for F features and S samples, the bags' lengths and ids (and, for weighted
features, one float32 weight per id). Most ids of a batch repeat (Zipf-like popularity), and no
value needs the 32 bits it is stored in, so the message travels as

    header    int32 [1 + F]    bits per length, then u_f: the distinct ids of each feature
    lengths   [F * S]          at bits_for(max length + 1) bits each
    per feature f:
      unique  [u_f]            its distinct ids, sorted, at bits_for(rows of f's table) bits each
      inverse [n_f]            for each of its n_f ids, the position of the id in `unique`,
                               at bits_for(u_f) bits each
    weights   float32 [N]      only for weighted features, one per id, unchanged

each part packed least significant bit first and padded to whole bytes. The receiver unpacks the
lengths, then per feature rebuilds ids = unique[inverse]: exactly the ids that were sent, so the
lookups and everything after them are the same as without deduplication.

    >>> codec = IdCodec({"f": 100})
    >>> values, lengths = torch.tensor([7, 7, 3, 7, 9]), torch.tensor([2, 0, 3])
    >>> buf = codec.encode([(values, lengths, None)])
    >>> buf.numel()  # header 8 + lengths 3 x 2 bits -> 1 + unique 3 x 7 bits -> 3 + inverse 5 x 2 bits -> 2
    14
    >>> got_values, got_lengths, _ = codec.decode(buf, ["f"], 3, 5, weighted=False)
    >>> got_values.tolist(), got_lengths.tolist()
    ([7, 7, 3, 7, 9], [2, 0, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor

HEADER_BYTES = 4  # int32 per header entry


def bits_for(n: int) -> int:
    """Bits that hold every integer in [0, n), at least 1."""
    return max(1, (int(n) - 1).bit_length())


def packed_bytes(count: int, bits: int) -> int:
    """Bytes `count` values take at `bits` bits each (padded to a whole byte)."""
    return (count * bits + 7) // 8


def pack(values: Tensor, bits: int) -> Tensor:
    """values [n] integers in [0, 2^bits) -> uint8 [packed_bytes(n, bits)], least significant bit first."""
    n = values.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=values.device)
    shifts = torch.arange(bits, device=values.device)
    stream = ((values.long().unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    place = torch.arange(8, dtype=torch.uint8, device=values.device)
    return (stream.view(-1, 8) << place).sum(1).to(torch.uint8)


def unpack(buf: Tensor, count: int, bits: int) -> Tensor:
    """The inverse of `pack`: uint8 [packed_bytes(count, bits)] -> int64 [count]."""
    if count == 0:
        return torch.empty(0, dtype=torch.long, device=buf.device)
    place = torch.arange(8, dtype=torch.uint8, device=buf.device)
    stream = ((buf.unsqueeze(1) >> place) & 1).reshape(-1)[: count * bits].view(count, bits).long()
    return (stream << torch.arange(bits, device=buf.device)).sum(1)


def _bytes(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.uint8)


class IdCodec:
    """Encodes and decodes one message; `rows`: feature -> rows of the table it reads (both ends know them)."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = dict(rows)

    def encode(self, parts: list[tuple[Tensor, Tensor, Tensor | None]], features: list[str] | None = None) -> Tensor:
        """parts: per feature (values [n_f], lengths [S], weights [n_f] or None), in message order;
        features: their names (default: this codec's features in order). -> uint8 message."""
        if not parts:
            return torch.empty(0, dtype=torch.uint8)
        names = features if features is not None else list(self.rows)
        device = parts[0][0].device
        lengths = torch.cat([p[1] for p in parts])
        length_bits = bits_for(int(lengths.max()) + 1) if lengths.numel() else 1
        pieces, uniques = [pack(lengths, length_bits)], []
        for name, (values, _, _) in zip(names, parts, strict=True):
            unique, inverse = torch.unique(values, sorted=True, return_inverse=True)
            uniques.append(unique.numel())
            pieces.append(pack(unique, bits_for(self.rows[name])))
            pieces.append(pack(inverse, bits_for(unique.numel())))
        header = torch.tensor([length_bits, *uniques], dtype=torch.int32, device=device)
        pieces.insert(0, _bytes(header))
        if parts[0][2] is not None:
            pieces.append(_bytes(torch.cat([p[2] for p in parts]).to(torch.float32)))
        return torch.cat(pieces)

    def decode(
        self, buf: Tensor, features: list[str], n_lengths: int, n_values: int, weighted: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """A message for `features` with n_lengths lengths and n_values ids -> (values int64 [N],
        lengths int64 [F * S], weights float32 [N] or None), feature-major as they were sent."""
        if not features:
            empty = torch.empty(0, dtype=torch.long, device=buf.device)
            return empty, empty, (torch.empty(0, device=buf.device) if weighted else None)
        f = len(features)
        header = buf[: HEADER_BYTES * (1 + f)].clone().view(torch.int32).tolist()
        length_bits, uniques = header[0], header[1:]
        offset = HEADER_BYTES * (1 + f)
        size = packed_bytes(n_lengths, length_bits)
        lengths = unpack(buf[offset : offset + size], n_lengths, length_bits)
        offset += size
        per_feature = lengths.view(f, -1).sum(1).tolist() if n_lengths else [0] * f
        values = []
        for name, u, n in zip(features, uniques, per_feature, strict=True):
            id_bits, inv_bits = bits_for(self.rows[name]), bits_for(u)
            unique = unpack(buf[offset : offset + packed_bytes(u, id_bits)], u, id_bits)
            offset += packed_bytes(u, id_bits)
            inverse = unpack(buf[offset : offset + packed_bytes(n, inv_bits)], n, inv_bits)
            offset += packed_bytes(n, inv_bits)
            values.append(unique[inverse])
        weights = None
        if weighted:
            weights = buf[offset : offset + 4 * n_values].clone().view(torch.float32)
        return torch.cat(values), lengths, weights
