"""The documentation runs: docs/library.md under torchrun, and the examples in the public API's
docstrings as doctests; every public symbol has a docstring."""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dmt

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_symbol_is_documented():
    undocumented = [name for name in dmt.__all__ if not (getattr(dmt, name).__doc__ or "").strip()]
    assert not undocumented
    assert "shard" in dir(dmt) and "MultiTowerModel" in dmt.__doc__


@pytest.mark.parametrize(
    "module",
    sorted(
        {dmt._EXPORTS[name] for name in dmt.__all__}
        | {"dmt", "dmt.config", "dmt.distributed.topology", "dmt.distributed.sharded"}
    ),
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_library_walkthrough_runs_under_torchrun(tmp_path):
    """docs/library.md's code blocks, in order, as one script on 4 ranks (2 hosts x 2)."""
    text = (ROOT / "docs/library.md").read_text()
    script = tmp_path / "walkthrough.py"
    script.write_text("\n".join(re.findall(r"```python\n(.*?)```", text, re.S)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 (host 0): tables" in r.stdout  # the plan, printed by rank 0
    assert len(re.findall(r"rank \d: last local loss", r.stdout)) == 4
