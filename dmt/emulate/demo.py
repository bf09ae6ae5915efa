"""`dmt demo` on the time-dilated emulated cluster, and the prediction printed beside a loopback run.

Where this machine can emulate (root, iproute2): the flat baseline and SPTT + TM train on two
tiers of shaped links standing for the `--like` GPU (dilate.py); the cost model predicts both runs
(predict.py), so the demo prints measured and predicted speedup beside AUC and bytes. Elsewhere
the runs use loopback links as before, and the demo prints what the cost model predicts for the
same layout on the GPU preset. A machine too fast for the links this machine shapes gets its
compute slowed, at most MAX_SLOWDOWN times (dmt/slowdown.py); where no batch fits even then (its
speed sets the dilation), the demo trains on loopback links and the loopback line says why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from dmt.config import Config
from dmt.errors import UserError

if TYPE_CHECKING:
    from dmt.emulate.dilate import Dilation


def can_emulate(hosts: int, ranks_per_host: int) -> str | None:
    """None when the emulator can run here, else why not (one line)."""
    from dmt.emulate import check_can_emulate

    try:
        check_can_emulate(hosts, ranks_per_host, 100.0, intra_host_mbit=100.0)
    except UserError as e:
        return str(e)
    return None


QUIET = ["train.tensorboard=false"]


MAX_SLOWDOWN = 2.0  # the demo's compute slowed at most this much, so the README's first command stays short


def dilation(config: str, runs: list[tuple[str, list[str]]], hosts: int, ranks_per_host: int, like: str) -> Dilation:
    """The batch and link rates at which this machine's links stand for `like` (dilate.py), from the
    baseline run's model, with compute slowed at most MAX_SLOWDOWN times on a machine too fast for
    the links; UserError (one line) where neither fits the links this machine shapes."""
    from dmt.config import load_config
    from dmt.emulate.dilate import dilate_config

    cfg = load_config(config, [*runs[0][1], *QUIET])
    return dilate_config(like, cfg, hosts, ranks_per_host, max_slowdown=MAX_SLOWDOWN)


def run_emulated(
    config: str,
    runs: list[tuple[str, list[str]]],
    hosts: int,
    ranks_per_host: int,
    like: str,
    out: Path,
    d: Dilation,
) -> list[dict]:
    """Both runs on the cluster dilated by `d` (`dilation`). runs: (name, overrides); the first is
    the baseline. -> [{"name", "summary", "predicted"}] with the dilation in the first row"""
    from dmt.config import load_config
    from dmt.cost.calibrate import fit_cpu, host_seconds_by_variant, measure_step
    from dmt.cost.presets import emulated
    from dmt.emulate import emulate
    from dmt.emulate.dilate import print_dilation, variant
    from dmt.emulate.predict import emulated_cluster, link_facts, predict

    print_dilation(d)
    cfgs = [(name, [*overrides, *QUIET, f"train.batch_size={d.batch_size}"]) for name, overrides in runs]
    measured = {name: measure_step(name, load_config(config, s)) for name, s in cfgs}
    cpu = fit_cpu(
        emulated(100.0, 1.0, 0.0, 0.0),
        [(load_config(config, s), *variant(load_config(config, s)), measured[name]) for name, s in cfgs],
    )
    host_s = host_seconds_by_variant(
        [(name, load_config(config, s), *variant(load_config(config, s)), measured[name].ops) for name, s in cfgs],
        cpu,
        hosts,
        ranks_per_host,
    )
    cpu = dataclasses.replace(cpu, cores_shared=d.cores_shared)
    facts = link_facts(hosts, ranks_per_host, d.uplink_mbit, out / "probe", intra_host_mbit=d.intra_mbit)
    cluster = emulated_cluster(facts, cpu)
    rows = []
    for name, s in cfgs:
        print(f"== {name}: {hosts} hosts x {ranks_per_host} ranks, emulated {like} links", flush=True)
        run_out = out / name.split()[0]
        summary = emulate(
            hosts,
            ranks_per_host,
            d.uplink_mbit,
            ["--config", config, "--set", *s, "--out", str(run_out)],
            intra_host_mbit=d.intra_mbit,
            compute_slowdown=d.compute_slowdown,
        )
        cfg = load_config(config, s)
        at = dataclasses.replace(cluster, host_s=host_s[name])
        est = predict(cfg, at, hosts, ranks_per_host, *variant(cfg), measured[name].ops)
        rows.append({"name": name, "summary": summary, "predicted_examples_per_s": est.examples_per_s})
    rows[0]["dilation"] = d.as_dict()
    return rows


def gpu_prediction(cfg_of: list[Config], hosts: int, ranks_per_host: int, like: str) -> list[float | None]:
    """The cost model's end-to-end examples/s of each config on the GPU preset, same layout and batch."""
    from dmt.cost.presets import PRESETS
    from dmt.emulate.dilate import variant
    from dmt.emulate.predict import predict

    return [predict(c, PRESETS[like], hosts, ranks_per_host, *variant(c), None).examples_per_s for c in cfg_of]
