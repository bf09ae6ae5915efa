"""Device discipline of the training step, checkable on a machine without a GPU.

Two rules keep one code path right on cpu/gloo and cuda/NCCL and keep the device busy:

    placement   every tensor the step creates is created on the step's device: a factory
                (torch.zeros, torch.empty, torch.tensor, torch.arange, ...) names its `device`,
                or the tensor derives from one that lives there (x.new_zeros, zeros_like, ops)
    no syncs    nothing waits for the device: no .item() / .tolist() / int(t) / float(t) /
                bool(t), no .cpu() / .numpy(), no blocking host-to-device copy
                (`.to(device)` without non_blocking=True), no `device_sync` (torch.cuda.synchronize)
                unless profiling asks for it

A read of a device value that the algorithm needs on the host (the sizes of an all-to-all's
receive buffers, say) is wrapped in `allowed_sync("why")`: the reason is in the code, and the
guard lets it pass. `DeviceGuard` (a TorchFunctionMode) enforces both rules on whatever runs
inside it; the test suite runs training steps, evaluation, resume and verification under it.

    >>> import torch
    >>> with DeviceGuard():
    ...     x = torch.zeros(3, device="cpu") + 1
    ...     with allowed_sync("a test"):
    ...         total = x.sum().item()
    >>> total
    3.0
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import traceback
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

_ALLOWED = contextvars.ContextVar("dmt_allowed_sync", default="")
_ACTIVE: list[DeviceGuard] = []

FACTORIES = {
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.tensor,
    torch.as_tensor,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.empty_strided,
    torch.eye,
    torch.linspace,
}
SYNCS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}

MOVES = {torch.Tensor.to, torch.Tensor.cuda}


class DeviceViolation(AssertionError):
    """A tensor created off the step's device, or an unannounced wait for the device."""


@contextlib.contextmanager
def allowed_sync(reason: str) -> Iterator[None]:
    """Mark a host read of device values as needed (the reason says why)."""
    token = _ALLOWED.set(reason)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def device_sync(device: torch.device | str | None = None) -> None:
    """Wait for the device (profiling only: the guard refuses it elsewhere)."""
    for guard in _ACTIVE:
        guard.flag("device_sync (torch.cuda.synchronize) outside profiling", sync=True)
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize(device)


class DeviceGuard(TorchFunctionMode):
    """Raise DeviceViolation on a device-less factory call, or on a host sync not announced with
    `allowed_sync` (which allows syncs only, never a misplaced tensor). With raise_on False,
    `violations` collects them instead. Calls made by torch's own code (an optimizer reading its
    step counter, which torch keeps on the host) are torch's business and pass."""

    def __init__(self, raise_on: bool = True) -> None:
        super().__init__()
        self.raise_on = raise_on
        self.violations: list[str] = []

    def flag(self, what: str, sync: bool = False) -> None:
        if sync and _ALLOWED.get():
            return
        what = f"{what} at {_caller()}"
        self.violations.append(what)
        if self.raise_on:
            raise DeviceViolation(what)

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _called_from_torch():
            pass
        elif func in FACTORIES and kwargs.get("device") is None:
            self.flag(f"torch.{func.__name__} without a device")
        elif func in SYNCS:
            self.flag(f"Tensor.{func.__name__} (a host read of device values)", sync=True)
        elif func in MOVES and not kwargs.get("non_blocking", False) and _moves_device(args, kwargs):
            self.flag("a blocking .to(device) copy (pass non_blocking=True from pinned memory)", sync=True)
        return func(*args, **kwargs)


def _moves_device(args: tuple, kwargs: dict) -> bool:
    """Whether a Tensor.to call names a device (a dtype-only cast is no copy between devices)."""
    target = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, torch.device | str):
            target = a
    return target is not None


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("guard.py"):
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "?"


def _called_from_torch() -> bool:
    """Whether the op was called from inside the torch package (the frame above the mode's)."""
    frame = sys._getframe(2)
    return f"{os.sep}torch{os.sep}" in frame.f_code.co_filename
