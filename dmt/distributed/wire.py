"""What travels on the wire, and at what width: the options of a sharded model's exchanges.

    comm_precision        pooled embeddings (and Tower Module outputs) going out and their gradients
                          coming back, in every exchange of both modes: "fp32", "bf16" or "fp16"
    fp16_grad_scale       fp16 gradients are multiplied by this before the cast and divided after it:
                          a mean loss over thousands of samples gives gradients near fp16's smallest
                          normal number (6e-5), which the scale lifts into its range (TorchRec's qcomms
                          scales its fp16 backward the same way)
    allreduce_precision   the dense gradients' all-reduce (as DDP's bf16 / fp16 compression hooks:
                          average in fp32, cast, reduce, cast back)
    dedup_ids             ids travel once per feature and message, bit-packed (dmt/distributed/idcodec.py)

Ids always travel exactly. At "fp32" nothing is cast: the exchanges are the ones they always were.

    >>> wire, grad = RowWire.of("fp16", grad_scale=1024.0), torch.tensor([1e-8])
    >>> float(grad.half()), wire.encode(grad, grad=True).dtype, float(wire.decode(wire.encode(grad, True), True)) > 0
    (0.0, torch.float16, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dmt.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def wire_dtype(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise UserError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    return DTYPES[precision]


@dataclass(frozen=True)
class WireOptions:
    """See the module docstring; `dmt.shard(..., wire=WireOptions(...))`."""

    comm_precision: str = "fp32"
    allreduce_precision: str = "fp32"
    fp16_grad_scale: float = 1024.0
    dedup_ids: bool = False

    def __post_init__(self) -> None:
        wire_dtype(self.comm_precision)
        wire_dtype(self.allreduce_precision)
        if self.fp16_grad_scale <= 0:
            raise UserError(f"fp16_grad_scale must be > 0, got {self.fp16_grad_scale}")

    @staticmethod
    def from_config(dist_cfg) -> WireOptions:
        """From a DistConfig ([dist] section)."""
        return WireOptions(
            dist_cfg.comm_precision, dist_cfg.allreduce_precision, dist_cfg.fp16_grad_scale, dist_cfg.dedup_ids
        )

    @property
    def rows(self) -> RowWire:
        return RowWire.of(self.comm_precision, self.fp16_grad_scale)

    @property
    def allreduce_dtype(self) -> torch.dtype:
        return wire_dtype(self.allreduce_precision)


@dataclass(frozen=True)
class RowWire:
    """The width of float rows on the wire, and the scale fp16 gradients travel at."""

    dtype: torch.dtype = torch.float32
    grad_scale: float = 1.0

    @staticmethod
    def of(precision: str, grad_scale: float = 1.0) -> RowWire:
        dtype = wire_dtype(precision)
        return RowWire(dtype, grad_scale if dtype == torch.float16 else 1.0)

    @property
    def exact(self) -> bool:
        return self.dtype == torch.float32

    def encode(self, x: Tensor, grad: bool = False) -> Tensor:
        """float32 rows -> their wire form (gradients scaled first where the width needs it)."""
        if self.exact or x.dtype == self.dtype:
            return x
        if grad and self.grad_scale != 1.0:
            x = x * self.grad_scale
        return x.to(self.dtype)

    def decode(self, y: Tensor, grad: bool = False, dtype: torch.dtype = torch.float32) -> Tensor:
        """Wire rows -> `dtype` (gradients unscaled)."""
        if self.exact or y.dtype == dtype:
            return y
        y = y.to(dtype)
        if grad and self.grad_scale != 1.0:
            y = y / self.grad_scale
        return y
