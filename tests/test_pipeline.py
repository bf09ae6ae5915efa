"""Pipelined training (the next batch's input exchange in flight while a batch trains) is
bit-identical to serial training, flat and SPTT on 2 hosts x 2 ranks."""

from __future__ import annotations

import torch

from .dist_helpers import run_ranks, small_config

STEPS = 4
DLRM = "dmt/configs/synthetic_dmt_dlrm.toml"
RUNS = {
    "flat": [DLRM, "dist.mode=flat", 'model.towers_file=""', "model.tower_module=identity"],
    # SPTT with compression, bf16 exchanges and deduplicated ids: the pipeline routes whatever the wire carries
    "sptt": [DLRM, "dist.mode=sptt", "dist.comm_precision=bf16", "dist.dedup_ids=true"],
    # tables cut into shards (row, column and flat's two-hop table_row): the units are routed ahead too
    "flat sharded": [
        DLRM,
        "dist.mode=flat",
        "dist.dedup_ids=true",
        'model.table_sharding={"*"="row", t00="column", t01="table_row"}',
    ],
    "sptt sharded": [DLRM, "dist.mode=sptt", 'model.table_sharding={"*"="row", t00="column"}'],
}


def _train_both_ways(cfg, topo) -> dict:
    """STEPS steps of each run, serial and pipelined, as the training loop takes them (build,
    training_batches, train_step). -> {(run, pipelined): (parameters, losses, counters per step, phases)}"""
    from dmt.train.loop import build, train_step
    from dmt.train.pipeline import PipelinedBatches, training_batches

    out = {}
    for name, overrides in RUNS.items():
        for pipeline in (False, True):
            c = small_config(*overrides, f"train.pipeline={str(pipeline).lower()}")
            t = build(c, topo)
            stream = t.source.train_batches(c.train.batch_size, topo.rank, topo.layout.world)
            batches = training_batches(t, stream, STEPS, c.train.device, c.train.pipeline)
            losses, counts, phases = [], [], set()
            for _ in range(STEPS):
                t.timer.reset()
                t.model.counter.reset()
                batch, sparse = next(batches)
                loss, _ = train_step(t, batch, sparse if pipeline else None)
                losses.append(float(loss))
                snap = t.model.counter.snapshot()
                counts.append({k: snap[k] for k in ("intra_host_bytes", "cross_host_bytes", "messages", "by_phase")})
                phases |= set(t.timer.totals)
            assert isinstance(batches, PipelinedBatches) == pipeline
            if pipeline:
                batches.close()
            params = {k: v.detach().clone() for k, v in t.model.module.state_dict().items()}
            out[(name, pipeline)] = (params, losses, counts, "input_exchange" in phases)
    return out


def test_pipelined_training_is_bit_identical_to_serial():
    results = run_ranks(2, 2, _train_both_ways, small_config())
    for rank, runs in results.items():
        for name in RUNS:
            (serial, *serial_log, serial_routed), (pipelined, *pipelined_log, pipelined_routed) = (
                runs[(name, False)],
                runs[(name, True)],
            )
            assert serial.keys() == pipelined.keys() and any(k.startswith("embeddings.") for k in serial)
            different = [k for k in serial if not torch.equal(serial[k], pipelined[k])]
            assert not different, (rank, name, different)
            assert serial_log == pipelined_log, (rank, name)  # the same losses and bytes, step by step
            # the serial step routes its batch inside the forward; the pipelined step never does
            assert serial_routed and not pipelined_routed
