"""Deduplicated, bit-packed id messages decode to exactly what was encoded, in the bytes the cost model counts."""

from __future__ import annotations

import pytest
import torch

from dmt.cost.ids import IdUnit, SaturatedIds, message_bytes
from dmt.distributed.idcodec import IdCodec, bit_stream, bits_for, pack, unpack
from dmt.specs import FeatureSpec


def test_bits_for():
    assert [bits_for(n) for n in (0, 1, 2, 3, 4, 5, 256, 257, 2**31)] == [1, 1, 1, 2, 2, 3, 8, 9, 31]


def test_pack_round_trips_values_of_mixed_widths():
    gen = torch.Generator().manual_seed(0)
    widths = torch.randint(1, 33, (500,), generator=gen)
    values = (torch.rand(500, generator=gen, dtype=torch.float64) * (2.0 ** widths.double())).long()
    buf = pack([(values[:200], widths[:200]), (values[200:], widths[200:])])
    assert buf.numel() == (int(widths.sum()) + 7) // 8
    assert torch.equal(unpack(bit_stream(buf), 0, widths), values)


@pytest.mark.parametrize("weighted", [False, True])
def test_messages_round_trip(weighted):
    """Features of very different sizes, empty bags, a feature without ids, repeated ids."""
    gen = torch.Generator().manual_seed(1)
    rows = {"a": 3, "b": 1000, "c": 2**20, "d": 50}
    codec, samples, parts = IdCodec(rows), 17, []
    for name, n in rows.items():
        lengths = torch.randint(0, 5, (samples,), generator=gen) * (name != "d")
        values = torch.randint(0, min(n, 40), (int(lengths.sum()),), generator=gen)
        parts.append((values, lengths, torch.rand(values.numel(), generator=gen) if weighted else None))
    buf = codec.encode(parts, list(rows))
    nv = sum(p[0].numel() for p in parts)
    values, lengths, weights = codec.decode(buf, list(rows), len(rows) * samples, nv, weighted)
    assert torch.equal(values, torch.cat([p[0] for p in parts]))
    assert torch.equal(lengths, torch.cat([p[1] for p in parts]))
    assert (weights is None) == (not weighted)
    if weighted:
        assert torch.equal(weights, torch.cat([p[2] for p in parts]))


def test_cost_model_counts_the_encoded_bytes():
    """Bags of exactly 2 ids over every row of small tables: the cost model's SaturatedIds are exact."""
    rows, samples = {"a": 2, "b": 5, "c": 7}, 30
    specs = [IdUnit.whole(FeatureSpec(n, f"t_{n}", r, pooling_factor=2.0)) for n, r in rows.items()]
    parts = [(torch.arange(2 * samples) % r, torch.full((samples,), 2), None) for r in rows.values()]
    buf = IdCodec(rows).encode(parts, list(rows))
    assert buf.numel() == message_bytes(specs, samples, SaturatedIds())
    assert buf.numel() < 4 * 3 * samples * 3  # int32 lengths and ids: 1080 bytes
