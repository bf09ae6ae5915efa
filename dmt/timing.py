"""Where a step's time goes: named phases timed on the host clock.

    timer = PhaseTimer()
    with timer("lookup"):
        ...
    timer.totals  -> {"lookup": seconds, ...} since the last reset()

On CUDA the timer synchronises the device at each phase boundary so that a phase owns its kernels
(this costs a little overlap; switch it off with sync=False for production runs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.totals: dict[str, float] = {}

    def reset(self) -> None:
        self.totals = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync_cuda:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
