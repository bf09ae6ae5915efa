"""Batches made off the training thread.

    stream = prefetch(source.train_batches(B, rank, world, start), depth=2, pin_memory=False)
    for step in ...: batch = next(stream)      # waits only if the worker is behind
    stream.close()                             # stops the worker and closes the source's iterator

`Prefetcher` runs any batch iterator in one background thread that keeps up to `depth` ready
batches in a bounded queue. The readers spend their time in pyarrow and numpy, which release the
GIL, so the worker runs beside the training step. With `pin_memory` (training on CUDA) each batch's
tensors are copied to page-locked memory in the worker, so the step's host-to-device copy is
a plain DMA. An exception in the worker is raised in the consumer at the batch where it happened,
the same exception object (a `UserError` stays one, so the CLI exits with code 2); the worker
then has stopped. Closing, or dropping the consumer, stops the worker; it is a daemon thread, so
it can never keep the interpreter alive at exit.

`ordered_map` is the other half: a reader that can make several batches at once (each a pure
function of its step) computes them in a few threads and yields them in order.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dmt import slowdown
from dmt.sparse import Batch, KeyedJagged

T = TypeVar("T")
R = TypeVar("R")

_BATCH, _END, _ERROR = 0, 1, 2
POLL_S = 0.1  # how often a blocked worker or consumer looks whether the other side has stopped
JOIN_S = 30.0  # how long close() waits for the worker to finish the batch it is making


def pin(batch: Batch) -> Batch:
    """The batch with every tensor in page-locked host memory (needs CUDA)."""
    s = batch.sparse
    return Batch(
        dense=batch.dense.pin_memory(),
        sparse=KeyedJagged(
            s.keys, s.values.pin_memory(), s.lengths.pin_memory(), None if s.weights is None else s.weights.pin_memory()
        ),
        labels=batch.labels.pin_memory(),
        probs=None if batch.probs is None else batch.probs.pin_memory(),
    )


class Prefetcher(Iterator[Batch]):
    """`batches` run in a background thread, up to `depth` >= 1 batches ahead; see the module docstring."""

    def __init__(self, batches: Iterator[Batch], depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_fill, args=(batches, self._queue, self._stop, pin_memory), name="dmt-data", daemon=True
        )
        self._thread.start()
        weakref.finalize(self, self._stop.set)  # a consumer dropped without close() still stops the worker

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        slowdown.pace()  # the emulator's slowed compute (dmt/slowdown.py); waiting for a batch is not
        while True:
            try:
                kind, item = self._queue.get(timeout=POLL_S)
                slowdown.restart()
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the data worker stopped without a batch or an error") from None
        if kind == _BATCH:
            return item
        self._done = True
        self._thread.join(JOIN_S)
        if kind == _ERROR:
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop the worker (it finishes the batch in hand, then closes the source's iterator)."""
        self._done = True
        self._stop.set()
        while True:  # free a worker blocked on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(JOIN_S)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fill(batches: Iterator[Batch], out: queue.Queue, stop: threading.Event, pin_memory: bool) -> None:
    """The worker: move batches into `out` until the source ends, fails, or `stop` is set."""

    def put(kind: int, item: object) -> bool:
        slowdown.pace()  # the emulator's slowed compute (dmt/slowdown.py); a full queue is a wait
        while not stop.is_set():
            try:
                out.put((kind, item), timeout=POLL_S)
                slowdown.restart()
                return True
            except queue.Full:
                continue
        return False

    try:
        for batch in batches:
            if not put(_BATCH, pin(batch) if pin_memory else batch):
                return
            if stop.is_set():
                return
        put(_END, None)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
        put(_ERROR, e)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # runs the source's own clean-up (its reports) in this thread


def prefetch(batches: Iterator[Batch], depth: int, pin_memory: bool = False) -> Iterator[Batch]:
    """`batches` made `depth` ahead in a background thread; depth 0: the iterator itself, unchanged."""
    if depth <= 0:
        return batches
    return Prefetcher(batches, depth, pin_memory)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn(item) for each item, in order, computed up to `threads` items ahead in `threads` threads.

    An exception of fn is raised when its item's turn comes. Closing the iterator cancels what has
    not started and waits for what has.
    """
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="dmt-read") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(_paced, fn, item))
                if len(pending) >= threads:
                    yield _wait(pending.popleft())
            while pending:
                yield _wait(pending.popleft())
        finally:
            for future in pending:
                future.cancel()


def _paced(fn: Callable[[T], R], item: T) -> R:
    """fn(item) in a worker thread, stretched by the emulator's slowed compute (dmt/slowdown.py)."""
    slowdown.restart()
    out = fn(item)
    slowdown.pace()
    return out


def _wait(future):
    with slowdown.waiting():
        return future.result()
