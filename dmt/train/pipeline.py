"""The training loop's batches, serial or pipelined (`train.pipeline`).

    serial      step i: load batch i, input exchange, lookup, ..., optimizer
    pipelined   a background thread loads batch i+1 and runs its input exchange (the ids'
                all-to-alls: flat global; SPTT peer, then intra-host) while step i computes:

        main      | step i-1 compute           | step i compute              | step i+1 ...
        feeder    | load + route batch i       | load + route batch i+1      | ...

The input exchange depends on the ids alone, never on a parameter, and runs on process groups of
its own (dmt/distributed/topology.py), so it can overlap the step's exchanges and all-reduces; the
step then gets exactly the ids it would have routed itself, and pipelined training is bit-identical
to serial training (tests/test_pipeline.py). At most one batch is routed ahead (TorchRec's
TrainPipelineSparseDist keeps the same distance). What the input exchange counted travels with the
batch (`RoutedIds.counter`), so a step's counters are those of its own batch.

Tested on gloo (CPU), where collectives of different process groups from two threads are safe. On
NCCL the feeder's collectives run on the input groups' own communicators from a second thread;
that path has not run on a GPU yet.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from dmt import slowdown
from dmt.distributed.ids import RoutedIds
from dmt.sparse import Batch

_DONE = object()


def serial_batches(batches: Iterator[Batch], device: str) -> Iterator[tuple[Batch, object]]:
    """(batch, its sparse ids): the forward runs the input exchange itself."""
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        yield batch, batch.sparse


class PipelinedBatches:
    """(batch, RoutedIds) for `count` batches of `batches`, each routed by `model` (a ShardedModel)
    in a background thread while the previous one trains. Iterate it; `close()` waits for the thread."""

    def __init__(self, model, batches: Iterator[Batch], count: int, device: str) -> None:
        self.model, self.batches, self.count, self.device = model, batches, count, device
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._permit = threading.Semaphore(1)  # one batch routed ahead of the one training
        self._thread = threading.Thread(target=self._feed, name="dmt-input-pipeline", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            for _ in range(self.count):
                with slowdown.waiting():  # the emulator's slowed compute (dmt/slowdown.py)
                    self._permit.acquire()
                batch = next(self.batches, None)
                if batch is None:
                    break
                batch = batch.to(self.device, non_blocking=True)
                with torch.no_grad():
                    routed: RoutedIds = self.model.route(batch.sparse)
                with slowdown.waiting():
                    self._ready.put((batch, routed))
            self._ready.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            self._ready.put(e)

    def __iter__(self) -> PipelinedBatches:
        return self

    def __next__(self) -> tuple[Batch, RoutedIds]:
        with slowdown.waiting():
            item = self._ready.get()
        if item is _DONE:
            self._ready.put(_DONE)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        self._permit.release()  # the next batch's input exchange starts while this one trains
        return item

    def close(self) -> None:
        self._thread.join()


def training_batches(t, batches: Iterator[Batch], count: int, device: str, pipeline: bool):
    """t: Trainee. The loop's (batch, sparse or RoutedIds) stream, serial or pipelined."""
    if pipeline:
        return PipelinedBatches(t.model, batches, count, device)
    return serial_batches(batches, device)
