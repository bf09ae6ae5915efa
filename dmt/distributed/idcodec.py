"""Ids on the wire, deduplicated and bit-packed: one message of an input exchange (`dist.dedup_ids`).

A message carries, for F features and S samples, the bags' lengths and ids (and, for weighted
features, one float32 weight per id). Most ids of a batch repeat (Zipf-like popularity), and no
value needs the 32 bits it is stored in, so the message travels as

    header    int32 [1 + F]    bits per length, then u_f: the distinct ids of each feature
    bits      one stream, least significant bit first, padded to a whole byte at its end:
              lengths  [F * S]   at bits_for(max length + 1) bits each
              unique   [u_f]     per feature, its distinct ids, sorted, at bits_for(rows of its table)
              inverse  [n_f]     per feature, for each of its n_f ids the position of the id in its
                                 `unique`, at bits_for(u_f) bits each
    weights   float32 [N]      only for weighted features, one per id, unchanged

The receiver reads the lengths, then rebuilds each feature's ids = unique[inverse]: exactly the
ids that were sent, so the lookups and everything after them are the same as without
deduplication. Encoding and decoding are a few vectorised tensor operations per message,
whatever the number of features.

    >>> codec = IdCodec({"f": 100})
    >>> values, lengths = torch.tensor([7, 7, 3, 7, 9]), torch.tensor([2, 0, 3])
    >>> buf = codec.encode([(values, lengths, None)], ["f"])
    >>> buf.numel()  # header 8 + ceil((3 lengths x 2 bits + 3 unique x 7 + 5 inverse x 2) / 8) = 8 + 5
    13
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


def _bits_for(n: Tensor) -> Tensor:
    """bits_for of every entry of an int64 tensor."""
    return torch.where(n > 1, torch.ceil(torch.log2(n.clamp(min=2).double())), 1).long()


def packed_bytes(bits: int) -> int:
    """Bytes a stream of `bits` bits takes, padded to a whole byte."""
    return (bits + 7) // 8


def pack(segments: list[tuple[Tensor, Tensor]]) -> Tensor:
    """segments: (values [n] >= 0, widths [n]), value i at widths[i] bits -> uint8 [packed_bytes(all
    widths)], one stream least significant bit first, the segments one after another."""
    total = sum(int(w.sum()) for _, w in segments if w.numel())
    most = max((int(w.max()) for _, w in segments if w.numel()), default=0)
    device = segments[0][0].device
    out = torch.zeros(packed_bytes(total) * 8 + most, dtype=torch.int32, device=device)
    offset = 0
    for values, widths in segments:
        if not widths.numel():
            continue
        width = int(widths.max())
        kind = torch.int32 if width < 32 else torch.long
        span = torch.arange(width, device=device, dtype=kind)
        starts = offset + torch.cumsum(widths, 0) - widths
        # a value's bits above its width are 0, so adding them where the next value starts changes nothing
        bits = ((values.to(kind).unsqueeze(1) >> span) & 1).to(torch.int32)
        out.index_add_(0, (starts.unsqueeze(1) + span).reshape(-1), bits.reshape(-1))
        offset += int(widths.sum())
    place = torch.arange(8, dtype=torch.int32, device=device)
    return (out[: packed_bytes(total) * 8].view(-1, 8) << place).sum(1).to(torch.uint8)


def unpack(stream: Tensor, start: int, widths: Tensor) -> Tensor:
    """stream: uint8 [nbits] of 0/1 (see `bit_stream`); the values at widths[i] bits each from bit
    `start` on -> int64 [n]."""
    if widths.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=stream.device)
    width = int(widths.max())
    kind = torch.int32 if width < 32 else torch.long
    span = torch.arange(width, device=stream.device, dtype=kind)
    where = (start + torch.cumsum(widths, 0) - widths).unsqueeze(1) + span
    bits = stream[where.clamp(max=stream.numel() - 1)].to(kind) * (span < widths.unsqueeze(1))
    return (bits << span).sum(1).long()


def bit_stream(buf: Tensor) -> Tensor:
    """uint8 [n] -> its bits, uint8 [8 n], least significant bit of each byte first."""
    place = torch.arange(8, dtype=torch.uint8, device=buf.device)
    return ((buf.unsqueeze(1) >> place) & 1).reshape(-1)


def _bytes(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.uint8)


class IdCodec:
    """Encodes and decodes one message; `rows`: feature -> rows of the table it reads (both ends know them)."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = dict(rows)

    def encode(
        self, parts: list[tuple[Tensor, Tensor, Tensor | None]], features: list[str], device: torch.device | None = None
    ) -> Tensor:
        """parts: per feature (values [n_f], lengths [S], weights [n_f] or None), in message order;
        features: their names; device: where the message goes (default: the values'). -> uint8 message."""
        if not parts:
            return torch.empty(0, dtype=torch.uint8, device=device)
        device = parts[0][0].device
        f = len(parts)
        values = torch.cat([p[0] for p in parts]).long()
        lengths = torch.cat([p[1] for p in parts]).long()
        counts = torch.tensor([p[0].numel() for p in parts], device=device)
        feature_of = torch.repeat_interleave(torch.arange(f, device=device), counts)  # [N]
        stride = max(self.rows[n] for n in features) + 1
        unique_keys, inverse = torch.unique(feature_of * stride + values, sorted=True, return_inverse=True)
        unique_feature = unique_keys // stride
        uniques = torch.bincount(unique_feature, minlength=f)  # u_f
        first = torch.cumsum(uniques, 0) - uniques  # where each feature's distinct ids start
        length_bits = bits_for(int(lengths.max()) + 1) if lengths.numel() else 1
        id_bits = torch.tensor([bits_for(self.rows[n]) for n in features], device=device)
        stream = pack(
            [
                (lengths, torch.full_like(lengths, length_bits)),
                (unique_keys % stride, id_bits[unique_feature]),
                (inverse - first[feature_of], _bits_for(uniques)[feature_of]),
            ]
        )
        header = torch.cat([torch.tensor([length_bits], device=device), uniques]).to(torch.int32)
        pieces = [_bytes(header), stream]
        if parts[0][2] is not None:
            pieces.append(_bytes(torch.cat([p[2] for p in parts]).to(torch.float32)))
        return torch.cat(pieces)

    def decode(
        self, buf: Tensor, features: list[str], n_lengths: int, n_values: int, weighted: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """A message for `features` with n_lengths lengths and n_values ids -> (values int64 [N],
        lengths int64 [F * S], weights float32 [N] or None), feature-major as they were sent."""
        device = buf.device
        if not features:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return empty, empty, (torch.empty(0, device=device) if weighted else None)
        f = len(features)
        header = buf[: HEADER_BYTES * (1 + f)].clone().view(torch.int32).long()
        length_bits, uniques = int(header[0]), header[1:]
        weight_bytes = 4 * n_values if weighted else 0
        stream = bit_stream(buf[HEADER_BYTES * (1 + f) : buf.numel() - weight_bytes])
        lengths = unpack(stream, 0, torch.full((n_lengths,), length_bits, device=device))
        counts = lengths.view(f, -1).sum(1) if n_lengths else torch.zeros(f, dtype=torch.long, device=device)
        feature_of = torch.repeat_interleave(torch.arange(f, device=device), counts)
        unique_feature = torch.repeat_interleave(torch.arange(f, device=device), uniques)
        id_bits = torch.tensor([bits_for(self.rows[n]) for n in features], device=device)[unique_feature]
        unique = unpack(stream, n_lengths * length_bits, id_bits)
        inverse = unpack(stream, n_lengths * length_bits + int(id_bits.sum()), _bits_for(uniques)[feature_of])
        first = torch.cumsum(uniques, 0) - uniques
        values = unique[inverse + first[feature_of]]
        weights = buf[buf.numel() - weight_bytes :].clone().view(torch.float32) if weighted else None
        return values, lengths, weights
