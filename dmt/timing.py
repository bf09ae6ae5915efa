"""Where a step's time goes: named phases timed on the host clock.

    timer = PhaseTimer()
    with timer("backward"):
        ...
        with timer("grad_sync"):   # a phase inside another is charged to itself alone:
            ...                    # "backward" gets its own time minus "grad_sync"'s
    timer.totals  -> {"backward": seconds, "grad_sync": seconds} since the last reset()

With sync_cuda=True the timer synchronises the device at each phase boundary, so that a phase
owns its kernels; that undoes overlap, so it is for profiling only (off by default).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dmt.guard import device_sync


class PhaseTimer:
    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda and torch.cuda.is_available()  # profiling only
        self.totals: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds spent in phases opened inside it

    def reset(self) -> None:
        self.totals = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.sync_cuda:
            device_sync("cuda")
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            if self.sync_cuda:
                device_sync("cuda")
            elapsed = time.perf_counter() - start
            inner = self._inner.pop()
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed
