"""Compute slowed down for the time-dilated emulator: a rank computes as if its core were
`factor()` times slower, while its links keep their rates.

`dmt emulate --like` sets DMT_COMPUTE_SLOWDOWN=s for every rank where this machine computes too
fast for the links tbf shapes faithfully (dmt/emulate/dilate.py). Each thread that computes (the
training thread, the input pipeline's, the data workers) then stretches every stretch of its work
to s times the CPU time it took: just before it waits for another rank or thread, it sleeps until
s x (its CPU seconds since it last stopped waiting) have passed since it last stopped waiting.

    with slowdown.waiting():    # around a collective or a wait for a batch: paces, then restarts
        work.wait()             # the clock once the wait is over
    slowdown.pace()             # before launching asynchronous work (an all-reduce): paces only

    stretch of work:  |-- cpu --|-------- sleep --------|  wait  |-- cpu --|----- sleep ...
                      <------- s x cpu (wall) ---------->        <------- s x cpu ...

A thread that shares its core with another rank's takes longer than its CPU time, and sleeps that
much less, so two ranks on one core still compute s times slower each (as long as s is at least
the number of ranks on the core). Without the variable (or at 1) both calls do nothing.

Sleeping keeps a rank responsive where a CPU quota (cgroups) would not: a collective starts the
moment the slowed compute before it ends, and the data arriving for it is read at once, where a
quota's 1 ms slices held each rank up to a period at every exchange (docs/emulation.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "DMT_COMPUTE_SLOWDOWN"

_clock = threading.local()  # per thread: (wall, cpu) when its current stretch of work began


def factor() -> float:
    """The slowdown asked for (DMT_COMPUTE_SLOWDOWN, default 1); ValueError below 1."""
    s = float(os.environ.get(ENV, "1"))
    if s < 1:
        raise ValueError(f"{ENV} must be >= 1, got {s:g}")
    return s


def pace() -> None:
    """Sleep until this thread's stretch of work has taken factor() x its CPU time; a new stretch
    starts. The first call in a thread only starts its clock."""
    s = factor()
    if s == 1:
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    started = getattr(_clock, "start", None)
    if started is not None:
        delay = s * (cpu - started[1]) - (wall - started[0])
        if delay > 0:
            time.sleep(delay)
    restart()


def restart() -> None:
    """A new stretch of work starts now (after a wait, which is not compute)."""
    if factor() != 1:
        _clock.start = (time.perf_counter(), time.thread_time())


@contextmanager
def waiting() -> Iterator[None]:
    """Around a wait for other ranks or threads: the work before it is paced, the wait is not."""
    pace()
    try:
        yield
    finally:
        restart()
