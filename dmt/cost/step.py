"""End-to-end seconds per training step: compute (compute.py) and communication (timing.py) in
the order the code runs them, with the one overlap it has.

    data -> forward exchanges and compute (lookups, Tower Modules, head) -> head backward
         -> [ backward exchanges + Tower Module backward  ||  head all-reduce ] -> Tower Module
            all-reduce -> optimizers

    step_s    = data + forward_comm + lookup + tower_fwd + head_fwd + head_bwd
                + max(backward_comm + tower_bwd, head all-reduce, both on one link together)
                + tower_allreduce + optimizer + host (the sharded step's own CPU, compute.py)
    compute_s = the compute terms alone; comm_s = every collective one after another (at least
                forward + together + tower_allreduce: a shared link serialises those itself)
    exposed_s = step_s - compute_s (communication nothing hides)
    overlap_s = compute_s + comm_s - step_s (what runs at the same time)

Pipelined (train.pipeline): the data and the input exchange of the next batch run beside the rest
of the step, so step_s = max(step_s - data - input exchange, data + input exchange).

Each compute term is the slowest rank's (every collective waits for its last member). Forward
exchanges and compute alternate (ids, lookup, rows, Tower Modules, rows), so they add up.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmt.cost.compute import OpCounts, RankCompute, rank_compute
from dmt.cost.presets import Cluster
from dmt.cost.timing import ModeTiming
from dmt.cost.traffic import ModeTraffic


@dataclass(frozen=True)
class StepTiming:
    step_s: float
    compute_s: float
    comm_s: float
    exposed_s: float
    overlap_s: float
    compute: dict  # phase -> the slowest rank's seconds

    def as_dict(self) -> dict:
        return {
            "step_s": self.step_s,
            "compute_s": self.compute_s,
            "comm_s": self.comm_s,
            "exposed_comm_s": self.exposed_s,
            "overlap_s": self.overlap_s,
            "compute_by_phase_s": dict(self.compute),
        }


def _slowest(ranks: list[RankCompute]) -> dict[str, float]:
    keys = ("data_s", "lookup_s", "tower_forward_s", "head_forward_s", "head_backward_s")
    keys += ("embedding_backward_s", "optimizer_s", "host_s")
    return {k: max(getattr(r, k) for r in ranks) for k in keys}


def step_timing(
    traffic: ModeTraffic, comm: ModeTiming, cluster: Cluster, ops: OpCounts | None = None, dense_optimizer: str = "adam"
) -> StepTiming | None:
    """None when the cluster has no compute rates (peak_tflops, memory_gbps)."""
    ranks = rank_compute(traffic, cluster, ops, dense_optimizer)
    if not ranks:
        return None
    c = _slowest(ranks)
    backward = max(comm.backward_s + c["embedding_backward_s"], comm.beside_s, comm.together_s)
    step = (
        c["data_s"]
        + comm.forward_s
        + c["lookup_s"]
        + c["tower_forward_s"]
        + c["head_forward_s"]
        + c["head_backward_s"]
        + backward
        + comm.after_s
        + c["optimizer_s"]
        + c["host_s"]
    )
    if comm.pipelined:
        ahead = c["data_s"] + comm.input_s
        step = max(step - ahead, ahead)
    compute = sum(c.values())
    # one after another; on a shared link the backward and the head's all-reduce take `together`
    serial = max(comm.alltoall_s + comm.allreduce_s, comm.forward_s + comm.together_s + comm.after_s)
    return StepTiming(step, compute, serial, step - compute, compute + serial - step, c)
