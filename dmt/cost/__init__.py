"""The communication cost model: exact per-rank traffic, predicted time and memory per step.

traffic.py   bytes and messages per rank, tier and phase, equal to a run's CommCounter
presets.py   Cluster (bandwidths, latencies, peak FLOP/s): v100, a100, h100
timing.py    TimingModel and seconds per step from traffic + cluster
memory.py    per-rank memory: tables, optimizer state, dense modules, comm buffers
estimate.py  `dmt estimate`: flat vs sptt vs sptt_tm, scaling table and chart
plan.py      `dmt plan`: towers per host x compression ratio search
"""

from dmt.cost.estimate import Estimator, estimate_report
from dmt.cost.memory import RankMemory, rank_memory
from dmt.cost.plan import plan_report
from dmt.cost.presets import PRESETS, Cluster, cluster
from dmt.cost.timing import ModeTiming, TimingModel, alltoall_busbw, mode_timing
from dmt.cost.traffic import ModeTraffic, PhaseTraffic, RankTraffic, traffic
from dmt.cost.workload import ModelShape, Workload, feature_specs, model_shape

__all__ = [
    "PRESETS",
    "Cluster",
    "Estimator",
    "ModeTiming",
    "ModeTraffic",
    "ModelShape",
    "PhaseTraffic",
    "RankMemory",
    "RankTraffic",
    "TimingModel",
    "Workload",
    "alltoall_busbw",
    "cluster",
    "estimate_report",
    "feature_specs",
    "mode_timing",
    "model_shape",
    "plan_report",
    "rank_memory",
    "traffic",
]
