"""This machine's CPU as a compute preset: measured rates, counted operators, one fitted constant.

    peak_tflops   FLOP/s of a Linear layer's forward and backward (B = 512, 256 -> 256)
    memory_gbps   bytes/s of an embedding table's lookup, backward and row-wise Adagrad step, counted
                  as compute.py counts them (rows read, pooled rows written, UPDATE_TRAFFIC x rows)
    op_s          host seconds per operator: fitted so that compute.py reproduces one-device steps
                  of the config's model variants (least squares over them, through the origin)
    data_s_per_sample   the measured batch time of those steps, per sample

Where the steps were measured at two or more batch sizes, the fit also scales both rates by one
factor k: step = ops x op_s + k x roofline(batch). A step at one batch cannot tell the operator
cost from the rates' error (on a small shared machine the memory rate moved between 1.5 and 3.6
GB/s over five calibrations in a row, benchmarks/emulated/results_overhead.md), and extrapolating
it to a much smaller batch, as time dilation does, magnifies that; a small batch pins op_s and a
large one the rates.

    host_s        a sharded rank's CPU seconds per step beyond all of the above (host_seconds):
                  one-device steps do not pack exchanges, launch collectives or fill gradient
                  buckets (an emulated paper_dlrm_small rank: 14.4 ms of CPU per step against the
                  one-device step's 9.4, benchmarks/emulated/results_overhead.md)

Efficiencies are 1 (the rates are what was achieved); each rate is the median of a few repeats
on one thread, as a rank of the emulator runs (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dmt.config import Config
from dmt.cost.compute import UPDATE_TRAFFIC, OpCounts, rank_compute
from dmt.cost.presets import Cluster
from dmt.cost.traffic import FLOAT_BYTES


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _median_s(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_tflops(repeats: int = 15) -> float:
    """Achieved TFLOP/s of a Linear layer's forward + backward on this thread."""
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(512, 256)

    def step() -> None:
        layer(x).sum().backward()

    return 3 * 2 * 512 * 256 * 256 / _median_s(step, repeats) / 1e12


def memory_gbps(dim: int, repeats: int = 7) -> float:
    """Achieved GB/s of one table's lookups, backward and row-wise Adagrad update, in compute.py's
    byte count: 8192 bags of 6 ids into 100,000 rows of `dim` floats."""
    from dmt.train.optim import RowWiseAdagrad

    rows, bags, per_bag = 100_000, 8192, 6
    table = torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
    opt = RowWiseAdagrad(table.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, rows, (bags * per_bag,), generator=g)
    offsets = torch.arange(0, bags * per_bag, per_bag)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        table(ids, offsets).sum().backward()
        opt.step()

    row_bytes = bags * per_bag * dim * FLOAT_BYTES
    moved = row_bytes * (1 + UPDATE_TRAFFIC) + bags * dim * FLOAT_BYTES
    return moved / _median_s(step, repeats) / 1e9


@dataclass(frozen=True)
class StepMeasurement:
    """One-device step of a model variant on this thread."""

    name: str
    ops: OpCounts
    data_s: float  # median per step
    compute_s: float  # forward + backward + optimizers, median per step
    batch_size: int


def measure_step(name: str, cfg: Config, steps: int = 24) -> StepMeasurement:
    """Count the operators of one step of cfg's one-device model and time `steps` more."""
    import torch.nn.functional as F

    from dmt.train.loop import build, train_step

    torch.set_num_threads(1)
    t = build(cfg)
    b = cfg.train.batch_size
    stream = t.source.train_batches(b, 0, 1)
    counts = []
    batch = next(stream)
    for part in ("forward", "backward", "optimizer"):
        counter = _CountOps()
        with counter:
            if part == "forward":
                logits = t.model(batch.dense, batch.sparse)
                loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
            elif part == "backward":
                loss.backward()
            else:
                for opt in t.optimizers:
                    opt.step()
        counts.append(counter.n)
    data, compute = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(stream)
        mid = time.perf_counter()
        train_step(t, batch)
        data.append(mid - start)
        compute.append(time.perf_counter() - mid)
    return StepMeasurement(name, OpCounts(*counts), statistics.median(data), statistics.median(compute[1:]), b)


def one_device_roofline(cfg: Config, cluster: Cluster, mode: str, ratio: float | None) -> float:
    """compute.py's seconds of a one-device step of the variant, without operator costs or data."""
    from dmt.cost.estimate import Estimator
    from dmt.cost.traffic import traffic
    from dmt.distributed.topology import Layout

    est = Estimator(cfg, cluster)
    towers = None if mode == "flat" else est.towers_for(1)[0]
    shape = est.shape(mode, towers, ratio)
    tr = traffic("flat", est.workload(shape), Layout(1, 1))  # one device: every table, every tower
    (rank,) = rank_compute(tr, cluster, None, cfg.train.dense_optimizer)
    return rank.total_s - rank.data_s


def fit_cpu(
    base: Cluster,
    variants: list[tuple[Config, str, float | None, StepMeasurement]],
    rates: tuple[float, float] | None = None,
) -> Cluster:
    """`base` (the emulated links) with this CPU's compute: rates (TFLOP/s, GB/s) measured here
    unless given, op_s (and, over two or more batch sizes, a common scale of the rates) fitted to
    the one-device steps of `variants` (config, cost-model mode, compression ratio, measurement)."""
    tflops, gbps = rates or (dense_tflops(), memory_gbps(variants[0][0].model.embedding_dim))
    cpu = dataclasses.replace(
        base, peak_tflops=tflops, dense_efficiency=1.0, memory_gbps=gbps, memory_efficiency=1.0, op_s=0.0
    )
    step = [m.compute_s for *_, m in variants]
    roof = [one_device_roofline(cfg, cpu, mode, ratio) for cfg, mode, ratio, _ in variants]
    ops = [m.ops.forward + m.ops.backward + m.ops.optimizer for *_, m in variants]
    op_s, k = _fit(step, ops, roof) if len({m.batch_size for *_, m in variants}) > 1 else (None, 1.0)
    if op_s is None:  # one batch: the rates as measured, op_s from the rest
        rest = [t - r for t, r in zip(step, roof, strict=True)]
        op_s = max(0.0, _dot(rest, ops) / _dot(ops, ops))
    data = statistics.median(m.data_s / m.batch_size for *_, m in variants)
    return dataclasses.replace(cpu, peak_tflops=tflops / k, memory_gbps=gbps / k, op_s=op_s, data_s_per_sample=data)


def _dot(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y, strict=True))


def _fit(step: list[float], ops: list[int], roof: list[float]) -> tuple[float | None, float]:
    """Least squares step = ops x op_s + k x roof over the measurements -> (op_s, k); (None, 1)
    where that gives op_s < 0 or k <= 0 (the caller keeps the measured rates)."""
    nn, nr, rr = _dot(ops, ops), _dot(ops, roof), _dot(roof, roof)
    nt, rt = _dot(ops, step), _dot(roof, step)
    det = nn * rr - nr * nr
    if det <= 1e-12 * nn * rr:
        return None, 1.0
    op_s, k = (nt * rr - rt * nr) / det, (rt * nn - nt * nr) / det
    return (op_s, k) if op_s >= 0 and k > 0 else (None, 1.0)


def host_seconds(
    cfg: Config, cpu: Cluster, hosts: int, ranks_per_host: int, mode: str, ratio: float | None, ops: OpCounts
) -> float:
    """Cluster.host_s for cfg's sharded step on hosts x ranks_per_host: the slowest rank's CPU seconds
    per step beyond what compute.py gives it on `cpu` (one core per rank), at least 0. Each rank's
    training thread is timed (thread_time, so ranks sharing cores do not count against each other)
    over SHARDED_STEPS steps of the real sharded model on local gloo ranks over loopback."""
    from dmt.cost.estimate import Estimator
    from dmt.cost.traffic import traffic
    from dmt.distributed.launch import launch
    from dmt.distributed.topology import Layout

    measured = launch(hosts * ranks_per_host, _sharded_step_cpu_s, cfg, ranks_per_host)
    one_core = dataclasses.replace(cpu, cores_shared=1.0, host_s=0.0)
    est = Estimator(cfg, one_core)
    towers = None if mode == "flat" else est.towers_for(hosts)[0]
    tr = traffic(mode, est.workload(est.shape(mode, towers, ratio)), Layout(hosts, ranks_per_host))
    modelled = rank_compute(tr, one_core, ops, cfg.train.dense_optimizer)
    return max(0.0, max(measured[r.rank] - (r.total_s - r.data_s) for r in modelled))


def host_seconds_by_variant(
    variants: list[tuple[str, Config, str, float | None, OpCounts]],
    cpu: Cluster,
    hosts: int,
    ranks_per_host: int,
    rounds: int = 1,
) -> dict[str, float]:
    """host_seconds of each variant (name, cfg, mode, ratio, ops), measured `rounds` times round
    robin, so that the machine's drift spreads over all variants -> {name: the median}. One
    calibration of 20 steps moved by a third between variants that differ only in a Tower Module's
    width (11.8 ms and 7.6 ms, demo 4x1, benchmarks/emulated/results_like_h100.md at 8d19b20), and
    the emulated step multiplies host_s by the ranks sharing a core (6-11 there)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    seen: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _ in range(rounds):
        for name, cfg, mode, ratio, ops in variants:
            seen[name].append(host_seconds(cfg, cpu, hosts, ranks_per_host, mode, ratio, ops))
    return {name: statistics.median(values) for name, values in seen.items()}


SHARDED_STEPS = 20


def _sharded_step_cpu_s(cfg: Config, topo) -> float:
    """On one rank (launch): the median training-thread CPU seconds of a sharded step."""
    from dmt.train.loop import build, train_step

    torch.set_num_threads(1)
    t = build(cfg, topo)
    stream = t.source.train_batches(cfg.train.batch_size, t.topo.rank, t.topo.layout.world)
    train_step(t, next(stream))  # warm up
    cpu = []
    for _ in range(SHARDED_STEPS):
        batch = next(stream)
        start = time.thread_time()
        train_step(t, batch)
        cpu.append(time.thread_time() - start)
    return statistics.median(cpu)
