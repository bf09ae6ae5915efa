"""What every benchmark records beside its numbers: the command, the commit and the machine."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import torch


def provenance_lines(result: dict, machine: str = "", command: str = "") -> list[str]:
    """The Command / Commit / Machine lines a results.md opens with, from `provenance()`'s keys in
    `result`; `machine` and `command` add a note to their line."""
    m = result["machine"]
    dirty = " (dirty tree)" if result.get("dirty") else ""
    return [
        f"Command: `{result['command']}`{command}  ",
        f"Commit: `{result['commit']}`{dirty}, {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}{machine}  ",
    ]


def provenance() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    script = ["-m", spec.name] if spec is not None else sys.argv[:1]  # `python -m benchmarks.x` as typed
    return {
        "command": " ".join([os.path.relpath(sys.executable), *script, *sys.argv[1:]]),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
