"""Entry of `dmt train`: one process, N local ranks, or one rank under torchrun."""

from __future__ import annotations

import os
from pathlib import Path

from dmt.config import Config
from dmt.distributed.launch import launch, run_rank, under_launcher
from dmt.distributed.topology import Layout, Topology
from dmt.errors import UserError


def check_cluster(cfg: Config, world: int, ranks_per_host: int) -> Layout:
    """Fail early, in the parent, on a model, topology or placement that cannot work: the model is
    built (tables deferred, dense layers on the meta device), checked against the contract and
    placed, its tables fitted to each rank's memory budget (dmt/cost/fit.py), so that a mistake
    or a plan that does not fit is one line before any rank starts."""
    import torch

    from dmt.cost.fit import config_plan
    from dmt.data import make_source
    from dmt.models.build import build_model
    from dmt.modules.embedding import deferred_tables

    layout = Layout.for_world(world, ranks_per_host or world)
    source = make_source(cfg.data)
    with deferred_tables(), torch.device("meta"):
        model = build_model(cfg.model, source.features, source.num_dense)
    config_plan(cfg, model, layout)
    return layout


def _train_rank(cfg: Config, topo: Topology, out: str, resume: bool) -> dict:
    from dmt.train.loop import train

    return train(cfg, out, resume=resume, topo=topo)


def run_training(
    cfg: Config, out: str | Path, resume: bool = False, nproc: int = 0, ranks_per_host: int = 0
) -> dict | None:
    """-> the summary (None on ranks other than 0 under torchrun)."""
    if nproc < 0:
        raise UserError(f"--nproc must be >= 0, got {nproc}")
    if under_launcher():
        summary = run_rank(_train_rank, cfg, ranks_per_host or None, str(out), resume)
        return summary if os.environ.get("RANK") == "0" else None
    if nproc <= 1:
        if ranks_per_host > 1:
            raise UserError(f"--ranks-per-host {ranks_per_host} needs --nproc >= {ranks_per_host}")
        from dmt.train.loop import train

        return train(cfg, out, resume=resume)
    check_cluster(cfg, nproc, ranks_per_host or cfg.dist.ranks_per_host)
    results = launch(nproc, _train_rank, cfg, ranks_per_host or None, str(out), resume)
    return results[0]
