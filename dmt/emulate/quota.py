"""A CPU quota per emulated host (Linux cgroups, `cpu` controller): the other half of time dilation.

`--like` slows the links by as much as this machine computes slower than the GPU (dilate.py).
Where this machine is so fast that the links would need more than tbf shapes faithfully, compute
is slowed instead: every process of host h runs in the cgroup dmt<pid>h<h> with a quota of
L x share cores (L ranks, each with `share` of a core), so a rank's step takes 1 / share times its
one-core time, as if its core were that much slower. Network work in the kernel (softirq) is not
charged to the cgroup, so the links keep their rates.

    cgroup v1: /sys/fs/cgroup/cpu/<name>/cpu.cfs_quota_us and cpu.cfs_period_us
    cgroup v2: /sys/fs/cgroup/<name>/cpu.max ("quota period"), where the root delegates `cpu`

The kernel's smallest quota is 1 ms, so a host of less than one core gets 1 ms every 1 / cores ms
(the shortest period that holds its share): a rank runs at most 1 ms, then waits its turn.
Removed when the run ends; cgroups of an emulator that was killed outright are removed by the next.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dmt.errors import UserError

PREFIX = "dmt"
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
MIN_QUOTA_US = 1000


def root() -> tuple[Path, int]:
    """The cpu controller's directory and cgroup version; UserError where there is none."""
    if (V1 / "cpu.cfs_quota_us").is_file():
        return V1, 1
    controllers = V2 / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        return V2, 2
    raise UserError(
        "this machine is too fast for --like's link rates, and slowing its compute needs the cgroup cpu "
        "controller (/sys/fs/cgroup/cpu or cgroup v2 with cpu), which it lacks"
    )


def period_and_quota(cores: float) -> tuple[int, int]:
    """cores (> 0) -> (period, quota) in microseconds, the quota at least the kernel's 1 ms."""
    if cores <= 0:
        raise UserError(f"a host's CPU quota must be > 0 cores, got {cores:g}")
    if cores >= 1:
        return MIN_QUOTA_US, round(MIN_QUOTA_US * cores)
    return round(MIN_QUOTA_US / cores), MIN_QUOTA_US


def create(name: str, cores: float) -> Path:
    """A cgroup `name` whose processes share `cores` of CPU time. -> its directory"""
    base, version = root()
    path = base / name
    path.mkdir(exist_ok=True)
    period, quota = period_and_quota(cores)
    if version == 1:
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        subtree = base / "cgroup.subtree_control"
        if "cpu" not in subtree.read_text().split():
            subtree.write_text("+cpu")
        (path / "cpu.max").write_text(f"{quota} {period}")
    return path


def prefix(path: Path) -> list[str]:
    """A command prefix that moves the command into the cgroup before it starts (its children follow)."""
    return ["sh", "-c", f'echo $$ > {path}/cgroup.procs && exec "$@"', "sh"]


def remove(path: Path, wait_s: float = 5.0) -> None:
    """Delete the cgroup once its processes are gone (they were killed just before); one that
    still holds a process after wait_s is left to the next emulator's remove_stale, with a line."""
    deadline = time.monotonic() + wait_s
    while path.exists():
        try:
            path.rmdir()
        except OSError as e:
            if time.monotonic() > deadline:
                print(f"dmt emulate: could not remove CPU quota {path}: {e}", file=sys.stderr)
                return
            time.sleep(0.05)


def remove_stale() -> list[str]:
    """Delete quotas of emulators whose process is gone. -> names removed"""
    try:
        base, _ = root()
    except UserError:
        return []
    removed = []
    for path in base.glob(f"{PREFIX}*h*"):
        digits = path.name[len(PREFIX) :].split("h")[0]
        if path.is_dir() and digits.isdigit() and not Path(f"/proc/{int(digits)}").exists():
            try:
                path.rmdir()
                removed.append(path.name)
            except OSError:
                continue
    return removed


def host_cgroup(host: int) -> str:
    return f"{PREFIX}{os.getpid()}h{host}"
