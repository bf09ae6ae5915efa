"""dmt as a library: a model trained through the public API with a plain loss.backward() equals its
one-device self; the examples run and verify; the CLI trains a user's model and refuses one that
does not fit the contract; the package installs with its configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dmt
from dmt.cli import main

from .dist_helpers import run_ranks, small_config
from .helpers import random_batch, tiny_features

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
TOWERS = [["f0", "f1", "f3"], ["f2", "f4", "f5"]]  # f0 and f1 share a table


def _model() -> dmt.MultiTowerModel:
    return dmt.DLRM(
        tiny_features(),
        num_dense=3,
        towers=TOWERS,
        dim=4,
        bottom_mlp=[8, 4],
        top_mlp=[16],
        tower_module="compress",
        compression_ratios=[3.0, 1.5],
        tower_options=dmt.TowerOptions(hidden=8),
    )


def _optimizers(model) -> list[torch.optim.Optimizer]:
    return [
        dmt.RowWiseAdagrad(model.embedding_parameters(), lr=0.1),
        torch.optim.Adam(model.dense_parameters(), lr=0.01),
    ]


def _train(model, batches) -> None:
    opts = _optimizers(model)
    for batch in batches:
        loss = F.binary_cross_entropy_with_logits(model(batch.dense, batch.sparse), batch.labels)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()


def _plain_loop_equals_one_device(cfg, topo: dmt.Topology) -> dict:
    """Rank body: for flat and SPTT, 3 plain steps sharded (local slices) and on one device (global
    batches). -> per mode: largest parameter difference and the names this rank holds."""
    world, rank, bs = topo.layout.world, topo.rank, 8
    batches = [random_batch(tiny_features(), world * bs, num_dense=3, seed=s, weights=True) for s in range(3)]
    torch.manual_seed(0)
    reference = _model()
    _train(reference, batches)
    ref = dict(reference.named_parameters())
    out = {}
    for mode in ("flat", "sptt"):
        torch.manual_seed(0)
        with dmt.deferred_tables():
            model = _model()
        sharded = dmt.shard(model, topo, mode)
        _train(sharded, [b.slice_samples(rank * bs, (rank + 1) * bs) for b in batches])
        held = dict(sharded.module.named_parameters())
        out[mode] = {
            "max_diff": max(float((p.detach() - ref[n].detach()).abs().max()) for n, p in held.items()),
            "held": sorted(held),
        }
    return out


@pytest.mark.parametrize("hosts,per_host", [(2, 2), (1, 4)])
def test_plain_backward_trains_every_parameter_as_one_device(hosts, per_host):
    results = run_ranks(hosts, per_host, _plain_loop_equals_one_device, small_config())
    every = {n for n, _ in _model().named_parameters()}
    for mode in ("flat", "sptt"):
        assert max(r[mode]["max_diff"] for r in results.values()) <= TOLERANCE, (mode, results)
        held = {n for r in results.values() for n in r[mode]["held"]}
        assert held == every  # tables, Tower Modules and head: each lives on some rank and trained there


def _groups_after_destroy(cfg, topo: dmt.Topology) -> dict:
    """Rank body: a sharded model (column-cut tables, so that its optimizer sums over groups too)
    trains 2 steps; then destroy_process_group() while the model, its optimizers and the topology
    are still held. -> how many of the groups they use are still alive, and what a step then says.
    (The default group, "world", is left out: torch keeps it once an optimizer has been built.)"""
    world, rank, bs = topo.layout.world, topo.rank, 8
    torch.manual_seed(0)
    with dmt.deferred_tables():
        model = _model()
    sharded = dmt.shard(model, topo, "flat", sharding=dmt.plan(model, topo.layout, "flat", {"*": "column"}))
    batches = [random_batch(tiny_features(), world * bs, num_dense=3, seed=s, weights=True) for s in range(2)]
    local = [b.slice_samples(rank * bs, (rank + 1) * bs) for b in batches]
    opts = [dmt.RowWiseAdagrad(sharded.embedding_parameters(), lr=0.1, column_shards=sharded.column_shards())]
    opts.append(torch.optim.Adam(sharded.dense_parameters(), lr=0.01))
    for batch in local:
        loss = F.binary_cross_entropy_with_logits(sharded(batch.dense, batch.sparse), batch.labels)
        loss.backward()
        for opt in opts:
            opt.step()
    used = [topo.group(name) for name in topo.groups if name != "world"]
    used += [g for g, _ in sharded.column_shards().values()]
    refs = [weakref.ref(g) for g in used]
    del used
    torch.distributed.destroy_process_group()
    try:
        sharded(local[0].dense, local[0].sparse)
        error = ""
    except RuntimeError as e:
        error = str(e)
    return {"groups": len(refs), "alive": sum(r() is not None for r in refs), "error": error}


def test_destroy_process_group_frees_the_groups_a_sharded_model_holds():
    """torch.distributed owns the groups: held by dmt they would outlive destroy_process_group() and
    be torn down during interpreter shutdown, where gloo's worker threads can abort the process."""
    results = run_ranks(2, 2, _groups_after_destroy, small_config())
    for r in results.values():
        assert r["groups"] == 12 and r["alive"] == 0, results  # 7 of the topology's, 5 column groups
        assert r["error"] == "dmt: the process group is gone: torch.distributed.destroy_process_group() was called"


def _torchrun(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=script.parent, env=env)


@pytest.mark.parametrize("example", ["fm_attention.py", "mixed_dims.py"])
def test_example_verifies_and_learns_on_2x2(example, tmp_path):
    report = tmp_path / "report.json"
    r = _torchrun(ROOT / "examples" / example, "--ranks-per-host", "2", "--steps", "100", "--out", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["world"] == {"hosts": 2, "ranks_per_host": 2}
    assert max(result["verify"].values()) <= TOLERANCE, result["verify"]
    assert result["train_loss_last_10"] < result["train_loss_first_10"]
    assert result["held_out_auc"] > 0.55


def _train_args(tmp_path: Path, arch: str) -> list[str]:
    return [
        "train",
        "--config",
        "synthetic_dmt_dlrm",
        "--set",
        f"model.arch={arch}",
        "train.steps=12",
        "train.batch_size=32",
        "train.log_every=4",
        "data.synthetic.eval_samples=512",
        "train.progress=false",
        "train.tensorboard=false",
        "--out",
        str(tmp_path / "run"),
    ]


def test_cli_trains_a_user_model(tmp_path, monkeypatch):
    """The example's builder, named by model.arch, trained by `dmt train` on the config's towers."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    assert main(_train_args(tmp_path, "fm_attention:build")) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "dmt_fmhead" and len(summary["towers"]) == 4
    assert 0 < summary["auc"] < 1


BAD_MODELS = {
    "not_a_model": ("def build(inputs):\n    return torch.nn.Linear(2, 2)\n", "not a dmt.MultiTowerModel"),
    "wrong_logits": (
        "class Head(torch.nn.Module):\n"
        "    def forward(self, dense, outputs):\n"
        "        return torch.cat(outputs, 1)\n"
        "def build(inputs):\n"
        "    ebc = dmt.EmbeddingBagCollection.from_features(inputs.features, 4)\n"
        "    return dmt.MultiTowerModel(ebc, Head())\n",
        "does not fit the contract: the head returned",
    ),
    "batch_norm_tower": (
        "class Head(torch.nn.Module):\n"
        "    def forward(self, dense, outputs):\n"
        "        return outputs[0].sum(1)\n"
        "def build(inputs):\n"
        "    ebc = dmt.EmbeddingBagCollection.from_features(inputs.features, 4)\n"
        "    width = 4 * len(inputs.features)\n"
        "    return dmt.MultiTowerModel(ebc, Head(), tower_modules=[torch.nn.BatchNorm1d(width)])\n",
        "uses BatchNorm1d, which mixes samples",
    ),
    "missing": ("", "has no callable build"),
}


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_cli_refuses_a_model_that_breaks_the_contract(name, tmp_path, monkeypatch, capsys):
    source, message = BAD_MODELS[name]
    (tmp_path / f"bad_{name}.py").write_text("import torch\nimport dmt\n" + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(_train_args(tmp_path, f"bad_{name}:build")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_cli_refuses_an_unimportable_arch(tmp_path, capsys):
    assert main(_train_args(tmp_path, "no_such_module_anywhere:build")) == 2
    assert "cannot import no_such_module_anywhere" in capsys.readouterr().err
    assert main(_train_args(tmp_path, "transformer")) == 2
    assert "must be one of ['dcn', 'dlrm'] or 'package.module:Name'" in capsys.readouterr().err


def test_wheel_ships_the_configs_and_tower_files(tmp_path):
    """`pip install <checkout>` builds this wheel: every shipped config and tower file is inside."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("dmt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "dmt/configs").rglob("*") if p.is_file()}
    assert shipped and shipped <= names
    assert "dmt/configs/demo.toml" in names and "dmt/configs/towers/synthetic_planted.json" in names
