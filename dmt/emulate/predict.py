"""The cost model's end-to-end prediction for a run on the emulated cluster.

    links    the emulated cluster's own facts: its tbf rates and bucket depths (as configured) and
             the latencies of tiny collectives from a calibration run that trains nothing
             (probe.py, started by `link_facts` on the same cluster)
    compute  this machine's CPU preset (dmt/cost/calibrate.py): rates measured here, the operator
             cost fitted to one-device steps, ranks sharing cores as the emulator pins them, and
             the callers' host_s: the sharded step's own CPU, timed on loopback ranks

-> predicted seconds per step and examples per second, with compute, exposed communication and
overlap (dmt/cost/step.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dmt.config import Config
from dmt.cost.compute import OpCounts
from dmt.cost.estimate import Estimator, ModeEstimate
from dmt.cost.presets import Cluster, emulated
from dmt.distributed.topology import Layout


def link_facts(
    hosts: int,
    ranks_per_host: int,
    mbit: float,
    out: Path,
    intra_host_mbit: float | None = None,
    queue_ms: float = 100.0,
    port: int = 29561,
) -> dict:
    """Run the calibration probe on an emulated cluster of these rates -> its summary"""
    from dmt.emulate import emulate

    return emulate(
        hosts,
        ranks_per_host,
        mbit,
        ["--out", str(out)],
        port=port,
        entry=("dmt.emulate.probe",),
        queue_ms=queue_ms,
        intra_host_mbit=intra_host_mbit,
    )


def emulated_cluster(facts: dict, cpu: Cluster | None = None) -> Cluster:
    """presets.emulated from a probe's summary, with the compute fields of `cpu` (if given)."""
    e = facts["emulation"]
    links = emulated(
        e["cross_host_mbit"],
        facts["loopback_gbps"] or 1.0,
        facts["latency_intra_s"],
        facts["latency_cross_s"],
        e["burst_bytes"],
        e.get("intra_host_mbit"),
        e.get("intra_burst_bytes", 0.0),
    )
    if cpu is None:
        return links
    fields = ("peak_tflops", "memory_gbps", "memory_efficiency", "dense_efficiency", "op_s")
    fields += ("data_s_per_sample", "cores_shared", "host_s")
    return dataclasses.replace(links, **{k: getattr(cpu, k) for k in fields})


def predict(
    cfg: Config, cluster: Cluster, hosts: int, ranks_per_host: int, mode: str, ratio: float | None, ops: OpCounts
) -> ModeEstimate:
    """The cost model's estimate of one emulated run (mode/ratio: dilate.variant of its config)."""
    est = Estimator(cfg, cluster)
    towers = None if mode == "flat" else est.towers_for(hosts)[0]
    return est.run(mode, est.shape(mode, towers, ratio), Layout(hosts, ranks_per_host), ops=ops)
