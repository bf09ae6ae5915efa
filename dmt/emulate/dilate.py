"""Time dilation (`dmt emulate --like h100`): slow both tiers of links by as much as this machine's
compute is slower than the GPU's, so that the emulated cluster has the GPU cluster's ratio of
compute to intra-host and to cross-host transfer.

    factor  = t_cpu / t_gpu        one rank's compute seconds per step of the config's model:
              t_cpu from this machine's calibrated CPU preset (dmt/cost/calibrate.py: rates
              measured here, operator cost fitted to a one-device step of the model, ranks sharing
              cores as the emulator pins them), t_gpu from the GPU preset (dmt/cost/compute.py)
    R_in    = GPU intra-host GB/s per GPU / factor              each rank's link
    R_out   = L x GPU NIC GB/s per GPU / factor                 each host's uplink (its L NICs)

On a CPU a step costs a fixed part (operators launched) plus a part that grows with the batch,
while the GPU preset's step grows with the batch alone; so the factor falls as the batch grows
and the rates rise. Where a rate would exceed what tbf shapes faithfully here (MAX_MBIT), the
batch per rank is halved until it fits (at least MIN_BATCH samples), and where rates would fall
below MIN_MBIT it is doubled; the emulated cluster then stands for the GPU cluster training at
that batch.

A machine that computes less than about 7000x slower than an H100 needs intra-host links above
MAX_MBIT at every batch (the factor falls towards a floor as the batch grows, and the smallest
batch only lifts it a little). There compute is slowed instead (at most max_slowdown times): every rank
computes `compute_slowdown` times slower than on a core of its own (dmt/slowdown.py: it sleeps
for the rest), which is s times the ranks per core; the factor grows by s and both rates fall by
s, to SLOWED_MBIT. The batch is then the largest (the config's, halved) whose slowed compute step
stays under MAX_SLOWED_STEP_S with s at most MAX_SLOWDOWN, so that runs stay short.

Latencies are not dilated: the emulated links have this machine's (a few hundred microseconds
per collective), much less than the GPU's 4 / 25 us times the factor, so the emulator favours
many small messages (docs/emulation.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from dmt.config import Config
from dmt.emulate.network import MAX_MBIT, host_cores
from dmt.errors import UserError

MIN_MBIT = 2.0  # below this TCP's own timers, not the rate, decide how long a transfer takes
MIN_BATCH = 8
MAX_BATCH = 1 << 16
SLOWED_MBIT = 0.8 * MAX_MBIT  # the faster link's rate when compute is slowed (headroom below the limit)
MAX_SLOWDOWN = 32.0
MAX_SLOWED_STEP_S = 0.1


@dataclass(frozen=True)
class Dilation:
    like: str
    factor: float
    batch_size: int  # per rank, as emulated (the config's, or what the rates needed)
    config_batch_size: int
    cpu_step_s: float  # one rank's compute per step here (ranks sharing cores and the slowdown included)
    gpu_step_s: float  # the GPU preset's
    cores_shared: float  # how many times a rank's one-core compute time a step takes
    intra_mbit: float
    uplink_mbit: float
    train_args: list[str] = field(default_factory=list)
    cpu: dict = field(default_factory=dict)  # the calibrated CPU preset's compute fields
    compute_slowdown: float | None = None  # each rank's DMT_COMPUTE_SLOWDOWN (= cores_shared); None: unset

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "train_args"}


def cores_shared(hosts: int, ranks_per_host: int) -> float:
    """Ranks that take turns on one core when the emulator pins each host to its share."""
    cores = host_cores(hosts)
    users: dict[int, int] = {}
    for h in range(hosts):
        for core in cores[h]:
            users[core] = users.get(core, 0) + ranks_per_host / len(cores[h])
    return max(1.0, max(users.values()))


def variant(cfg: Config) -> tuple[str, float | None]:
    """The cost model's mode and compression ratio for a training config."""
    if cfg.dist.mode == "flat":
        return "flat", None
    if cfg.model.tower_module == "identity":
        return "sptt", None
    return "sptt_tm", cfg.model.compression_ratio


def step_seconds(cfg: Config, cluster, hosts: int, ranks_per_host: int, ops=None) -> float:
    """The slowest rank's compute seconds per step of cfg on `cluster` (compute.py)."""
    from dmt.cost.compute import rank_compute
    from dmt.cost.estimate import Estimator
    from dmt.cost.traffic import traffic
    from dmt.distributed.topology import Layout

    est = Estimator(cfg, cluster)
    mode, ratio = variant(cfg)
    layout = Layout(hosts, ranks_per_host)
    towers = None if mode == "flat" else est.towers_for(hosts)[0]
    tr = traffic(mode, est.workload(est.shape(mode, towers, ratio)), layout)
    return max(r.total_s for r in rank_compute(tr, cluster, ops, cfg.train.dense_optimizer))


def _with_batch(cfg: Config, b: int) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=b))


def choose_batch(batch: int, rates) -> int:
    """The batch per rank nearest `batch` (halving or doubling it) at which both rates(batch) ->
    (intra, uplink) Mbit/s lie in [MIN_MBIT, MAX_MBIT]; the last one tried if none does."""
    b = batch
    while max(rates(b)) > MAX_MBIT and b // 2 >= MIN_BATCH:
        b //= 2
    while min(rates(b)) < MIN_MBIT and b * 2 <= MAX_BATCH and max(rates(b * 2)) <= MAX_MBIT:
        b *= 2
    return b


def slowed_batch(batch: int, rates, max_slowdown: float = MAX_SLOWDOWN) -> tuple[int, float]:
    """The batch (batch, halved) and slowdown s >= 1 for a machine too fast for the links: rates(b)
    -> (intra, uplink, unslowed compute seconds per step) at this machine's speed. The largest batch whose
    slowdown to SLOWED_MBIT is at most max_slowdown and whose slowed step is under MAX_SLOWED_STEP_S;
    where none is, the one with the smallest slowdown (which dilate_config refuses above max_slowdown)."""
    tried = []
    b = batch
    while b >= MIN_BATCH:
        intra, up, t_cpu = rates(b)
        s = max(1.0, max(intra, up) / SLOWED_MBIT)
        if s <= max_slowdown and s * t_cpu <= MAX_SLOWED_STEP_S and min(intra, up) / s >= MIN_MBIT:
            return b, s
        tried.append((s, -b))
        b //= 2
    s, b = min(tried)
    return -b, s


def dilate(like: str, hosts: int, ranks_per_host: int, train_args: list[str]) -> Dilation:
    """`dmt emulate --like`: the training arguments' config -> batch and both link rates."""
    from dmt.emulate import preflight

    return dilate_config(like, preflight(train_args, hosts, ranks_per_host), hosts, ranks_per_host, train_args)


def dilate_config(
    like: str,
    cfg: Config,
    hosts: int,
    ranks_per_host: int,
    train_args: list[str] | None = None,
    max_slowdown: float = MAX_SLOWDOWN,
) -> Dilation:
    """Calibrate this CPU on cfg's model and choose the batch and both link rates; where no batch
    fits the links, slow every rank's compute (dmt/slowdown.py) by at most max_slowdown (1: never)
    rather than refuse. UserError (one line) where neither fits."""
    from dmt.cost.calibrate import fit_cpu, measure_step
    from dmt.cost.presets import PRESETS, emulated

    train_args = train_args or []
    gpu = PRESETS[like]
    mode, ratio = variant(cfg)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    m = measure_step("config", cfg)
    small = _with_batch(cfg, MIN_BATCH)  # the small batch pins the operator cost (calibrate.py)
    cpu = fit_cpu(
        emulated(100.0, 1.0, 0.0, 0.0), [(cfg, mode, ratio, m), (small, mode, ratio, measure_step("small", small))]
    )
    shared = cores_shared(hosts, ranks_per_host)

    def rates(b: int, slowdown: float = 1.0) -> tuple[float, float, float, float, float]:
        c, slowed = _with_batch(cfg, b), dataclasses.replace(cpu, cores_shared=shared * slowdown)
        t_cpu = step_seconds(c, slowed, hosts, ranks_per_host, m.ops)
        t_gpu = step_seconds(c, gpu, hosts, ranks_per_host)
        factor = t_cpu / t_gpu
        intra = gpu.intra_gbps * 8e3 / factor
        return factor, intra, ranks_per_host * gpu.nic_gbps * 8e3 / factor, t_cpu, t_gpu

    b, slowdown = choose_batch(cfg.train.batch_size, lambda n: rates(n)[1:3]), 1.0
    if max_slowdown > 1 and max(rates(b)[1:3]) > MAX_MBIT:
        b, slowdown = slowed_batch(cfg.train.batch_size, lambda n: (*rates(n)[1:4],), max_slowdown)
    factor, intra, up, t_cpu, t_gpu = rates(b, slowdown)
    if slowdown > max_slowdown:
        raise UserError(
            f"--like {like}: this machine computes too fast for the links tbf shapes faithfully here (at most "
            f"{MAX_MBIT} Mbit/s): even at {b} samples per rank its compute would have to be slowed "
            f"{slowdown:.1f}x, more than the {max_slowdown:g}x allowed"
        )
    if max(intra, up) > MAX_MBIT or min(intra, up) < MIN_MBIT:
        raise UserError(
            f"--like {like}: at {b} samples per rank the links would need {intra:.0f} Mbit/s per rank and "
            f"{up:.0f} Mbit/s per uplink (this machine is {factor:.0f}x slower than {like}); tbf shapes "
            f"{MIN_MBIT:g}-{MAX_MBIT} Mbit/s faithfully here, and no batch from {MIN_BATCH} to {MAX_BATCH} fits"
        )
    args = list(train_args) if b == cfg.train.batch_size else [*train_args, "--set", f"train.batch_size={b}"]
    fields = ("peak_tflops", "memory_gbps", "op_s", "data_s_per_sample", "cores_shared")
    return Dilation(
        like,
        factor,
        b,
        cfg.train.batch_size,
        t_cpu,
        t_gpu,
        shared * slowdown,
        intra,
        up,
        args,
        {**{k: getattr(cpu, k) for k in fields}, "cores_shared": shared * slowdown},
        shared * slowdown if slowdown > 1 else None,
    )


def print_dilation(d: Dilation) -> None:
    print(
        f"--like {d.like}: one rank computes a step here in {d.cpu_step_s * 1e3:.2f} ms "
        f"({d.cores_shared:g} ranks per core), on {d.like} in {d.gpu_step_s * 1e6:.1f} us: {d.factor:.0f}x slower"
    )
    if d.batch_size != d.config_batch_size:
        print(
            f"  batch {d.config_batch_size} per rank would need links above {MAX_MBIT} Mbit/s (or below "
            f"{MIN_MBIT:g}); emulating {d.batch_size} per rank instead"
        )
    if d.compute_slowdown is not None:
        print(
            f"  this machine is too fast for links tbf shapes faithfully (at most {MAX_MBIT} Mbit/s): every "
            f"rank computes {d.compute_slowdown:.1f}x slower than on a core of its own"
        )
    print(
        f"  links / {d.factor:.0f}: {d.intra_mbit:.1f} Mbit/s per rank into its host's switch, "
        f"{d.uplink_mbit:.1f} Mbit/s per host uplink"
    )
