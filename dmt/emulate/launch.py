"""Starting the ranks of an emulated cluster, watching them, and telling the user what went wrong.

One `torchrun` per host (one tier: the host's ranks share its namespace) or per rank (two tiers:
every rank has a namespace of its own), static rendezvous at rank 0, exactly as on a real
multi-host cluster; each pinned to its host's share of the machine's cores. Everything each
torchrun and its ranks print goes to OUT/emulate/<name>.log; rank 0's output also reaches the
terminal, without the launcher's failure reports and tracebacks, which `failure` condenses into
one line afterwards: a rank's bad-input message once (exit code 2), or which rank of which host
died and how (exit code 1).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dmt.distributed.launch import RankFailure
from dmt.errors import UserError

# lines of torchrun's own reports and of ranks' tracebacks: kept in the log, not shown
_NOISE = re.compile(r"^(\[rank\d+\]:|[EWI]\d{4} \d\d:\d\d:\d\d|\s*\[W\d+|dmt: error:)")
_FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")


@dataclass
class Process:
    """One torchrun: `ranks` are the global ranks it starts, `host` their host."""

    name: str
    host: int
    ranks: list[int]
    popen: subprocess.Popen
    log: Path
    exited_at: float | None = None
    anchor: subprocess.Popen | None = None  # a process in the host's switch namespace (counters)
    _pump: threading.Thread | None = field(default=None, repr=False)


def start(name: str, host: int, ranks: list[int], cmd: list[str], env: dict, log: Path, show: bool) -> Process:
    """Start `cmd`; its output goes to `log`, and (show) filtered to this terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if not show:
        with open(log, "wb") as f:
            popen = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        return Process(name, host, ranks, popen, log)
    popen = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p = Process(name, host, ranks, popen, log)
    p._pump = threading.Thread(target=_pump, args=(popen.stdout, log), daemon=True)
    p._pump.start()
    return p


def _pump(stream, log: Path) -> None:
    """Copy a process's output to its log and, without the noise, to the terminal. Segments end
    at a newline or a carriage return (progress bars redraw with the latter)."""
    pending, muted = "", False
    with open(log, "w") as f:
        for chunk in iter(lambda: stream.read1(65536), b""):
            text = chunk.decode(errors="replace")
            f.write(text)
            f.flush()
            pending += text
            parts = re.split(r"(?<=[\r\n])", pending)
            pending = parts.pop()  # unterminated rest
            for seg in parts:
                if seg.startswith("Traceback (most recent call last)"):
                    muted = True  # torchrun's own failure report follows until it exits
                if muted or _NOISE.match(seg):
                    continue
                sys.stdout.write(seg)
            sys.stdout.flush()


def wait_all(procs: list[Process], grace_s: float = 5.0, poll_s: float = 0.2) -> list[int]:
    """Wait for every process; once one fails, give the others `grace_s` to notice and report the
    lost peer themselves, then stop them (SIGTERM, SIGKILL 10 s later). -> exit codes"""
    failed_at = None
    while not all(_exited(p) for p in procs):
        if failed_at is None and any(_exited(p) and p.popen.returncode != 0 for p in procs):
            failed_at = time.time()
        if failed_at is not None and time.time() - failed_at > grace_s:
            for p in procs:
                if p.popen.poll() is None:
                    p.popen.send_signal(signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline and not all(_exited(p) for p in procs):
                time.sleep(poll_s)
            stop_all(procs)
            break
        time.sleep(poll_s)
    for p in procs:
        _exited(p)
        if p._pump is not None:
            p._pump.join(timeout=5)
    return [p.popen.returncode for p in procs]


def _exited(p: Process) -> bool:
    if p.exited_at is None and p.popen.poll() is not None:
        p.exited_at = time.time()
    return p.exited_at is not None


def stop_all(procs: list[Process]) -> None:
    for p in procs:
        for child in (p.popen, p.anchor):
            if child is not None and child.poll() is None:
                child.kill()
    for p in procs:
        for child in (p.popen, p.anchor):
            if child is not None:
                child.wait()
        if p._pump is not None:
            p._pump.join(timeout=5)


def failure(procs: list[Process], timeout_s: float | None) -> Exception:
    """The one error to show for a failed run: UserError (a rank reported bad input) or
    RankFailure naming the first rank that died, its host and how."""
    logs = {p.name: p.log.read_text(errors="replace") if p.log.exists() else "" for p in procs}
    for p in procs:
        for line in logs[p.name].splitlines():
            m = re.match(r"^(?:\[rank\d+\]:)?dmt: error: (?:rank \d+: )?(.*)$", line)
            if m:
                return UserError(m.group(1))
    crashes = []  # (by a signal other than our SIGTERM, exit time, process, exit code, local rank, pid)
    for p in procs:
        for m in _FAILED.finditer(logs[p.name]):
            code, local, pid = int(m.group(1)), int(m.group(2)), int(m.group(3))
            crashes.append((code < 0 and code != -signal.SIGTERM, p.exited_at or 0.0, p, code, local, pid))
    failed = [p for p in procs if p.popen.returncode not in (0, None)]
    if not crashes:
        first = min(failed, key=lambda p: p.exited_at or 0.0) if failed else procs[0]
        return RankFailure(
            f"emulated host {first.host} ({first.name}) failed with exit code {first.popen.returncode} before "
            f"its ranks started; see {first.log}",
            1,
        )
    crashes.sort(key=lambda c: (not c[0], c[1]))
    _, _, p, code, local, pid = crashes[0]
    rank = p.ranks[local] if local < len(p.ranks) else p.ranks[0]
    where = f"rank {rank} (host {p.host}, pid {pid})"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return RankFailure(f"{where} was killed by signal {name}; every rank stopped (logs in {p.log.parent})", 1)
    last = _last_error(logs[p.name])
    why = ""
    if "Timed out" in last or "timed out" in last:
        limit = f" of {timeout_s:g} s" if timeout_s else ""
        why = f" (a collective waited longer than dist.timeout_s{limit}: a lost peer or a cut link)"
    return RankFailure(f"{where} failed{why}: {last}; every rank stopped (logs in {p.log.parent})", 1)


def _last_error(log: str) -> str:
    """The last exception line of a rank's traceback in a torchrun log."""
    lines = [re.sub(r"^\[rank\d+\]:", "", line).strip() for line in log.splitlines()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*", line)]
    errors = [e for e in errors if not e.startswith("torch.distributed.elastic")]
    return errors[-1] if errors else "exit code 1"
