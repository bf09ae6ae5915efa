"""Run functions on several local ranks (spawned, gloo on 127.0.0.1) from tests."""

from __future__ import annotations

from dmt.config import Config, load_config
from dmt.distributed.launch import launch


def run_ranks(hosts: int, ranks_per_host: int, fn, cfg: Config, *args) -> dict[int, object]:
    """fn(cfg, topo, *args) on hosts * ranks_per_host spawned ranks -> {rank: result}."""
    return launch(hosts * ranks_per_host, fn, cfg, ranks_per_host, *args, start_method="spawn")


def small_config(path: str = "dmt/configs/synthetic_dmt_dlrm.toml", *overrides: str) -> Config:
    """A config file with a small batch and a small evaluation set."""
    return load_config(
        path, ["train.batch_size=32", "data.synthetic.eval_samples=2048", "train.progress=false", *overrides]
    )
