"""The emulated cluster: runs, reports what the links carried, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from dmt import emulate as emu
from dmt.errors import UserError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(emu.PREFIX)]


def test_clear_errors_before_touching_the_network(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root"):
        emu.check_can_emulate(2, 1, 100)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(UserError, match="at least 2 hosts"):
        emu.check_can_emulate(1, 2, 100)
    with pytest.raises(UserError, match=r"cross-host-mbit must be in \(0, 400\]"):
        emu.check_can_emulate(2, 1, 1000)
    with pytest.raises(UserError, match="--queue-ms"):
        emu.check_can_emulate(2, 1, 100, queue_ms=0)
    with pytest.raises(UserError, match="--out DIR"):
        emu._out_dir(["--config", "c.toml"])


@needs_root
def test_emulated_run_reports_link_bytes_and_cleans_up(tmp_path):
    before = _namespaces()
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
    assert _namespaces() == before


@needs_root
def test_stale_namespaces_of_dead_emulators_are_removed():
    dead = 99_999_999  # above the kernel's largest pid (2**22), so never a live process
    name = f"{emu.PREFIX}{dead}h0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    assert name in _namespaces()
    assert name in emu.remove_stale()
    assert name not in _namespaces()
