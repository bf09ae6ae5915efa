"""Starting ranks: `--nproc N` launches N local processes through torch's elastic launcher; under
`torchrun` (RANK and WORLD_SIZE set) the current process is already one rank.

If any rank dies, the launcher stops the others and `RankFailure` names the lost rank. A rank
whose training raised waits PEER_GRACE_S before it leaves: when a peer is killed, the survivors'
next collective fails at once on the reset connection, and without the wait the launcher, which
polls every 0.2 s and reports the first dead rank it finds in rank order, could name a survivor
(a fresh clone here once reported rank 0's abort for rank 1's SIGKILL).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from dmt.config import Config
from dmt.distributed.topology import Layout, Topology
from dmt.errors import UserError


class RankFailure(RuntimeError):
    """A rank exited abnormally; `exit_code` is 2 when it reported a user error."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(cfg: Config) -> str:
    if cfg.dist.backend != "auto":
        return cfg.dist.backend
    return "nccl" if cfg.train.device.startswith("cuda") else "gloo"


def init_rank(cfg: Config, ranks_per_host: int | None) -> Topology:
    """Join the process group (env:// from the launcher) and build this rank's topology."""
    if cfg.train.device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = timedelta(seconds=cfg.dist.timeout_s)
    dist.init_process_group(backend_for(cfg), timeout=timeout)
    world = dist.get_world_size()
    per_host = ranks_per_host or cfg.dist.ranks_per_host or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Topology.create(Layout.for_world(world, per_host), timeout)


PEER_GRACE_S = 1.0  # five of the launcher's polls


def run_rank(fn: Callable, cfg: Config, ranks_per_host: int | None, *args):
    """Body of one rank: join, run fn(cfg, topo, *args), leave. A user error exits with code 2;
    any other error leaves PEER_GRACE_S later, so that a peer that died first is the one named."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        topo = init_rank(cfg, ranks_per_host)
        try:
            return fn(cfg, topo, *args)
        except UserError:
            raise
        except Exception:
            time.sleep(PEER_GRACE_S)
            raise
        finally:
            if dist.is_initialized():  # (fn may have left the group itself)
                dist.destroy_process_group()
    except UserError as e:
        print(f"dmt: error: rank {os.environ.get('RANK')}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def launch(
    nproc: int, fn: Callable, cfg: Config, ranks_per_host: int | None, *args, start_method: str = "spawn"
) -> dict[int, object]:
    """Run `run_rank(fn, cfg, ranks_per_host, *args)` on nproc local ranks. -> {rank: return value}
    `start_method` "fork" starts faster (tests); "spawn" is the safe default."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("torch.distributed.elastic", "torchelastic-events-null", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.2,
        start_method=start_method,
    )
    try:
        return elastic_launch(config, run_rank)(fn, cfg, ranks_per_host, *args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == 2:
            raise RankFailure("a rank reported bad input (see its message above)", 2) from None
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        failed = sorted(e.failures)
        raise RankFailure(
            f"lost rank {rank} (pid {failure.pid}, {how}); the launcher stopped all {nproc} ranks. "
            f"Failed ranks: {failed}",
            1,
        ) from None
