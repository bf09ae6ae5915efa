"""Compute seconds of one training step on one rank: embedding rows as memory traffic, the dense
modules as FLOPs, plus the per-operator cost of the host that launches them.

    lookup forward   ids x d x 4 bytes read (one row per id) + the pooled rows written
    lookup update    UPDATE_TRAFFIC x the rows' bytes: the sparse gradient written, coalesced
                     (read and written), the rows and their row-wise state read and written
    dense forward    forward FLOPs of the head (B samples) and of the Tower Modules the rank runs
    dense backward   2 x those FLOPs
    dense optimizer  DENSE_UPDATE_BYTES per parameter (Adam: weight, gradient, two moments read,
                     three written, float32)
    operators        ops x op_s: what launching each operator costs the host (eager PyTorch on a
                     CPU; on a GPU with fused table kernels and CUDA graphs it hides behind the
                     device, so the GPU presets charge 0)
    data             data_s_per_sample x B: making the batch (on GPUs a loader prefetches it: 0)
    host             host_s: what a sharded rank's CPU spends beyond all that (the exchanges'
                     packing, collective launches, gradient buckets), measured on loopback for
                     this machine's preset (calibrate.py); 0 on the GPU presets

    t_memory = bytes / (memory_gbps x memory_efficiency)
    t_flops  = FLOPs / (peak_tflops x dense_efficiency)
    every term x cores_shared (ranks that take turns on one core: the emulator on a small machine)

The rows a rank looks up are those of the tables it owns for every sample that reads them: the
same W x B samples in flat and SPTT layouts (flat: all W ranks' samples; SPTT: the L rails of
its host, H x B samples each), so both layouts do the same lookup work; they differ in the
Tower Modules (flat: all on B samples; SPTT: the host's on H x B).
"""

from __future__ import annotations

from dataclasses import dataclass

from dmt.cost.presets import Cluster
from dmt.cost.timing import rank_flops
from dmt.cost.traffic import FLOAT_BYTES, ModeTraffic

UPDATE_TRAFFIC = 5.0  # lookup update bytes per forward row byte (see the module docstring)
DENSE_UPDATE_BYTES = {"adam": 7 * FLOAT_BYTES, "adagrad": 5 * FLOAT_BYTES}


@dataclass(frozen=True)
class OpCounts:
    """Operators one rank's step launches (counted on a one-device step, see calibrate.py)."""

    forward: int = 0
    backward: int = 0
    optimizer: int = 0


@dataclass(frozen=True)
class RankCompute:
    """Seconds of one rank's step by phase."""

    rank: int
    data_s: float
    lookup_s: float  # forward lookups and pooling
    tower_forward_s: float
    head_forward_s: float
    head_backward_s: float  # before the head's gradients can be all-reduced
    embedding_backward_s: float  # Tower Modules' backward (overlaps the head's all-reduce)
    optimizer_s: float  # row-wise updates of the tables and the dense optimizer
    host_s: float = 0.0  # the sharded step's CPU beyond these terms (Cluster.host_s)

    @property
    def forward_s(self) -> float:
        return self.lookup_s + self.tower_forward_s + self.head_forward_s

    @property
    def total_s(self) -> float:
        rest = self.head_backward_s + self.embedding_backward_s + self.optimizer_s + self.host_s
        return self.data_s + self.forward_s + rest

    def as_dict(self) -> dict:
        keys = ("data_s", "lookup_s", "tower_forward_s", "head_forward_s", "head_backward_s")
        out = {k: getattr(self, k) for k in keys}
        out.update(embedding_backward_s=self.embedding_backward_s, optimizer_s=self.optimizer_s)
        out.update(host_s=self.host_s, total_s=self.total_s)
        return out


def rank_compute(
    traffic: ModeTraffic, cluster: Cluster, ops: OpCounts | None = None, dense_optimizer: str = "adam"
) -> list[RankCompute]:
    """Per rank, the compute seconds of one step on `cluster`'s device (None without a compute rate)."""
    if cluster.peak_tflops is None or cluster.memory_gbps is None:
        return []
    plan, w = traffic.plan, traffic.workload
    layout, shape = plan.layout, w.shape
    pf = {f.name: f.pooling_factor for f in w.features}
    samples = layout.world * w.batch_size  # every rank serves its tables for W x B samples
    flops_s = 1.0 / (cluster.peak_tflops * 1e12 * cluster.dense_efficiency)
    byte_s = 1.0 / (cluster.memory_gbps * 1e9 * cluster.memory_efficiency)
    ops = ops or OpCounts()
    share = cluster.cores_shared
    out = []
    specs = {f.name: f for f in w.features}
    for r, fwd_flops in enumerate(rank_flops(traffic)):
        rows = pooled = 0.0  # bytes of the table rows read and of the pooled rows written
        for f, table in plan.feature_table.items():  # whole tables and shards (a row shard: its share of the ids)
            pieces = [
                (s.num_rows / specs[f].num_embeddings, s.width) for s in plan.shards.get(table, ()) if s.rank == r
            ]
            if table not in plan.shards and plan.table_owner[table] == r:
                pieces = [(1.0, w.width(specs[f]))]
            for share_of_ids, width in pieces:
                rows += samples * pf[f] * share_of_ids * width * FLOAT_BYTES
                pooled += samples * width * FLOAT_BYTES
        head = w.batch_size * shape.head_flops
        towers = fwd_flops - head
        held = range(len(shape.towers)) if plan.mode == "flat" else plan.towers_on(layout.host_of(r))
        params = shape.head_params + sum(shape.tower_params[t] for t in held)
        out.append(
            RankCompute(
                rank=r,
                data_s=share * cluster.data_s_per_sample * w.batch_size,
                lookup_s=share * ((rows + pooled) * byte_s),
                tower_forward_s=share * towers * flops_s,
                head_forward_s=share * (head * flops_s + ops.forward * cluster.op_s),
                head_backward_s=share * (2 * head * flops_s + ops.backward * cluster.op_s),
                embedding_backward_s=share * 2 * towers * flops_s,
                optimizer_s=share
                * (
                    UPDATE_TRAFFIC * rows * byte_s
                    + params * DENSE_UPDATE_BYTES[dense_optimizer] * byte_s
                    + ops.optimizer * cluster.op_s
                ),
                host_s=share * cluster.host_s,
            )
        )
    return out
