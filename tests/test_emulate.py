"""The emulated cluster: runs, reports what the links carried, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from dmt import emulate as emu
from dmt.errors import UserError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(emu.PREFIX)]


def _left_behind() -> tuple[list[str], list[str]]:
    """Namespaces of emulators run by this test process, and its child processes still there
    (but multiprocessing's resource tracker, which an earlier test's spawned ranks start and
    which lives as long as the test process)."""
    ours = [n for n in _namespaces() if n.startswith(f"{emu.PREFIX}{os.getpid()}")]
    kids = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()
    return ours, [k for k in kids if "resource_tracker" not in _command_line(k)]


def _command_line(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_clear_errors_before_touching_the_network(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root"):
        emu.check_can_emulate(2, 1, 100)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(UserError, match="at least 2 hosts"):
        emu.check_can_emulate(1, 2, 100)
    with pytest.raises(UserError, match=r"cross-host-mbit must be in \(0, 400\]"):
        emu.check_can_emulate(2, 1, 1000)
    with pytest.raises(UserError, match=r"intra-host-mbit must be in \(0, 400\], got 500"):
        emu.check_can_emulate(2, 1, 100, intra_host_mbit=500)
    with pytest.raises(UserError, match="--queue-ms"):
        emu.check_can_emulate(2, 1, 100, queue_ms=0)
    with pytest.raises(UserError, match="--out DIR"):
        emu._out_dir(["--config", "c.toml"])


@needs_root
def test_emulated_run_reports_link_bytes_and_cleans_up(tmp_path):
    summary = emu.emulate(
        2,
        1,
        200,
        [
            "--config",
            "dmt/configs/synthetic_dmt_dlrm.toml",
            "--set",
            "train.steps=5",
            "train.batch_size=64",
            "train.progress=false",
            "data.synthetic.eval_samples=2048",
            "dist.mode=sptt",
            "--out",
            str(tmp_path),
        ],
        port=29611,
    )
    assert summary["world"] == {"hosts": 2, "ranks_per_host": 1}
    links = summary["link_bytes"]
    assert [link["host"] for link in links] == [0, 1]
    # every cross-host byte our code counted went over the shaped links (plus set-up, eval, headers)
    counted = summary["comm"]["cross_host_bytes"] * summary["steps"]
    assert all(link["tx_bytes"] > counted and link["rx_bytes"] > counted for link in links)
    # during the training loop alone, the wire's TCP payload is what we counted: the all-to-alls plus
    # the ring all-reduce's 2 (W - 1) / W of the dense gradients (W = 2: all of it), headers removed
    for link in summary["link_train"]:
        payload = link["tx_bytes"] - 66 * link["tx_packets"]
        ours = link["counted_cross_host_bytes"] + link["allreduce_payload_bytes_per_rank"]
        assert abs(payload / ours - 1) < 0.05, link
    assert len(summary["peak_rss_bytes"]) == 2 and min(summary["peak_rss_bytes"]) > 0
    assert _left_behind() == ([], [])


@needs_root
def test_stale_namespaces_of_dead_emulators_are_removed():
    dead = 99_999_999  # above the kernel's largest pid (2**22), so never a live process
    name = f"{emu.PREFIX}{dead}h0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    assert name in _namespaces()
    assert name in emu.remove_stale()
    assert name not in _namespaces()


# ---- without root: the pieces ------------------------------------------------------------------


def test_faults_parse_and_reject_bad_items():
    from dmt.emulate.faults import Fault, check_faults, parse_fault

    assert parse_fault("outage:host=1,start=2.5,duration=3") == Fault("outage", host=1, start=2.5, duration=3.0)
    assert parse_fault("loss:host=0,percent=2") == Fault("loss", host=0, percent=2.0)
    assert parse_fault("kill:rank=3,step=30") == Fault("kill", rank=3, step=30)
    for text, message in [
        ("flood:host=0", "unknown kind 'flood'; allowed: outage, loss, kill"),
        ("outage:host=0,start=1", "outage needs duration=N"),
        (
            "outage:host=0,start=1,duration=2,percent=5",
            "bad item 'percent=5'; outage takes host=N, start=N, duration=N",
        ),
        ("kill:rank=1.5,step=3", "rank must be a whole number >= 0, got 1.5"),
        ("loss:host=0,percent=150", r"percent must be in \(0, 100\], got 150"),
        ("outage:host=0,start=x,duration=1", "start='x' is not a number"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_fault(text)
    with pytest.raises(UserError, match=r"host 2 does not exist; hosts are 0..1"):
        check_faults([parse_fault("outage:host=2,start=0,duration=1")], hosts=2, world=4)
    with pytest.raises(UserError, match=r"rank 4 does not exist; ranks are 0..3"):
        check_faults([parse_fault("kill:rank=4,step=1")], hosts=2, world=4)


def test_stalls_are_log_windows_beyond_the_median_a_save_beyond_the_median_save(tmp_path):
    """Wall windows 0.4, 0.4, 3.4 (an outage), 0.4; 0.7 with a 0.3 s save and 2.7 with a save that
    an outage held 2.3 s longer: 3.0 + 2.0 stalled, the saves themselves not counted."""
    from dmt.emulate.faults import stalls

    windows = [(0.4, 0.0), (0.4, 0.0), (3.4, 0.0), (0.4, 0.0), (0.7, 0.3), (2.7, 2.6), (0.4, 0.0), (0.7, 0.3)]
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"step": 5 * i, "wall_s": w, "checkpoint_s": c}) + "\n" for i, (w, c) in enumerate(windows))
    )
    got = stalls(tmp_path / "m.jsonl")
    assert got["stalled_s"] == pytest.approx(3.0 + 2.0) and got["windows"] == 8
    assert got["median_window_s"] == pytest.approx(0.4) and got["longest_window_s"] == pytest.approx(3.4)
    assert stalls(tmp_path / "missing.jsonl")["stalled_s"] is None


def test_link_tiers_by_hand():
    from dmt.emulate.tiers import HEADER_BYTES, link_tiers

    link = {
        "host": 0,
        "uplink_tx_bytes": 10_000 + 10 * HEADER_BYTES,
        "uplink_tx_packets": 10,
        "ports_rx_bytes": 30_000 + 25 * HEADER_BYTES,
        "ports_rx_packets": 25,
        "counted_cross_host_bytes": 9_000,
        "allreduce_payload_bytes_per_rank": 800,  # over the loop, groups spanning hosts
    }
    summary = {
        "world": {"hosts": 2, "ranks_per_host": 2},
        "steps": 10,
        "comm": {"intra_host_bytes": 900.0, "allreduce_bytes": 100.0},  # per step and rank
        "link_train": [link],
    }
    t = link_tiers(summary)
    ring = 2 * 3 / 4 * 800  # 2 (W - 1) / W of the spanning payload, one edge per host
    inside = 100 * 10 - 800  # payload all-reduced inside the host: 2 (L - 1) / L of it per rank
    assert t["cross"] == {"wire_bytes": 10_660, "payload_bytes": 10_000, "counted_bytes": 9_000 + ring}
    assert t["intra"]["payload_bytes"] == 20_000
    assert t["intra"]["counted_bytes"] == pytest.approx(900 * 10 * 2 + 1 * ring + 2 * 2 * 1 / 2 * inside)


def test_netdev_parsing():
    from dmt.train.resources import parse_netdev

    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs\n"
        "uplink: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n"
        "    r0: 5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n"
    )
    assert parse_netdev(text) == {
        "uplink": {"rx_bytes": 100, "rx_packets": 2, "tx_bytes": 300, "tx_packets": 4},
        "r0": {"rx_bytes": 5, "rx_packets": 1, "tx_bytes": 7, "tx_packets": 1},
    }


class _Exited:
    def __init__(self, code: int) -> None:
        self.returncode = code


def _process(tmp_path, name: str, host: int, ranks: list[int], code: int, log: str, at: float):
    from dmt.emulate.launch import Process

    (tmp_path / f"{name}.log").write_text(log)
    return Process(name, host, ranks, _Exited(code), tmp_path / f"{name}.log", exited_at=at)


def test_a_failure_becomes_one_line(tmp_path):
    from dmt.distributed.launch import RankFailure
    from dmt.emulate.launch import failure

    agent = "E1202 04:55:37.233000 1 api.py:1002] failed (exitcode: {code}) local_rank: {local} (pid: {pid}) of binary"
    bad = "[rank2]:dmt: error: rank 2: data.train_path must be set\n" + agent.format(code=2, local=0, pid=7)
    e = failure(
        [_process(tmp_path, "host0", 0, [0, 1], 1, "", 2.0), _process(tmp_path, "host1", 1, [2, 3], 1, bad, 1.0)], 10
    )
    assert isinstance(e, UserError) and str(e) == "data.train_path must be set"
    killed = agent.format(code=-9, local=1, pid=4242)
    reset = "[rank0]: RuntimeError: Connection reset by peer\n" + agent.format(code=1, local=0, pid=11)
    e = failure(
        [_process(tmp_path, "host0", 0, [0, 1], 1, reset, 1.0), _process(tmp_path, "host1", 1, [2, 3], 1, killed, 2.0)],
        10,
    )
    assert isinstance(e, RankFailure) and e.exit_code == 1
    assert str(e).startswith("rank 3 (host 1, pid 4242) was killed by signal SIGKILL; every rank stopped")
    timeout = "[rank1]: RuntimeError: [gloo] Timed out waiting 8000ms for recv operation\n" + agent.format(
        code=1, local=0, pid=5
    )
    e = failure([_process(tmp_path, "rank1", 0, [1], 1, timeout, 1.0)], 8)
    assert "rank 1 (host 0, pid 5) failed (a collective waited longer than dist.timeout_s of 8 s" in str(e)
    assert "Timed out waiting 8000ms" in str(e) and "\n" not in str(e)


def test_a_compute_slowdown_below_one_is_refused():
    with pytest.raises(UserError, match="compute slowdown must be >= 1, got 0.5"):
        emu.emulate(2, 1, 100.0, ["--config", "demo"], compute_slowdown=0.5)


def test_ratio_of_a_preset():
    from dmt.emulate.rates import ratio_rates

    intra, up = ratio_rates("h100", 2, None)
    assert intra == 400.0 and up == pytest.approx(2 * 400 * 48 / 370)
    assert ratio_rates("a100", 4, 200.0) == (200.0, pytest.approx(4 * 200 * 25 / 235))


def test_bad_training_arguments_stop_before_any_namespace(monkeypatch, capsys):
    """A bad value after `--` is checked once, in the parent: one line, exit code 2."""
    from dmt.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(emu.network, "create", lambda c: pytest.fail("the network was built"))
    argv = ["emulate", "--hosts", "2", "--ranks-per-host", "2", "--cross-host-mbit", "100", "--"]
    assert main([*argv, "--config", "demo", "--set", "train.steps=-1", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "dmt: error: config key 'train.steps' must be > 0, got -1\n"


# ---- with root: two tiers -------------------------------------------------------------------------


@needs_root
def test_two_tiers_wire_bytes_agree_with_our_counters(tmp_path):
    """Per tier, over the training loop: the kernel's TCP payload within 5% of what we counted."""
    args = ["--config", "demo", "--set", "train.steps=8", "train.batch_size=64", "train.progress=false"]
    args += ["train.tensorboard=false", "data.synthetic.eval_samples=1024", "dist.mode=sptt"]
    summary = emu.emulate(
        2, 2, 100, [*args, "model.compression_ratio=4", "--out", str(tmp_path)], port=29621, intra_host_mbit=300
    )
    assert _left_behind() == ([], [])
    assert summary["emulation"]["intra_host_mbit"] == 300
    assert [r["rank"] for r in summary["rank_link_bytes"]] == [0, 1, 2, 3]
    tiers = summary["link_tiers"]
    for tier in ("intra", "cross"):
        t = tiers[tier]
        assert t["counted_bytes"] > 1e6, tier
        assert abs(t["payload_bytes"] / t["counted_bytes"] - 1) < 0.05, (tier, t)
        assert t["wire_bytes"] > t["counted_bytes"]  # the headers


def test_demo_trains_on_loopback_when_no_batch_fits_the_links(monkeypatch, capsys, tmp_path):
    """Where this machine could emulate but is too fast (or slow) for any batch to fit the links it
    shapes, `dmt demo` says why in its loopback line and trains there, instead of failing."""
    import dmt.train.run
    from dmt.cli import main
    from dmt.emulate import demo

    def no_fit(*a):
        raise UserError("--like h100: no batch from 8 to 65536 fits")

    trained = []

    def fake_training(cfg, out, nproc, ranks_per_host):
        trained.append((cfg.dist.mode, nproc, ranks_per_host))
        comm = {"cross_host_bytes": 1000.0 if cfg.dist.mode == "flat" else 250.0, "intra_host_bytes": 0.0}
        return {
            "model": cfg.model.arch,
            "auc": 0.7,
            "logloss": 0.5,
            "examples_per_s": 100.0,
            "step_ms": {"median": 1.0},
            "comm": comm,
        }

    monkeypatch.setattr(demo, "can_emulate", lambda hosts, ranks_per_host: None)
    monkeypatch.setattr(demo, "dilation", no_fit)
    monkeypatch.setattr(demo, "run_emulated", lambda *a: pytest.fail("ran on emulated links"))
    monkeypatch.setattr(dmt.train.run, "run_training", fake_training)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert trained == [("flat", 4, 2), ("sptt", 4, 2)]
    out = capsys.readouterr().out
    assert "links: loopback (--like h100: no batch from 8 to 65536 fits), so this speedup shows compute alone" in out
