"""Config loading and the command line: overrides, bad input -> one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmt.cli import main
from dmt.config import load_config
from dmt.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "dmt/configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Each shipped config loads, survives a round trip through a plain dict, and its tower file exists."""
    from dmt.config import config_from_dict, to_dict

    cfg = load_config(path)
    assert config_from_dict(to_dict(cfg)) == cfg
    if cfg.model.towers_file:
        assert Path(cfg.model.towers_file).is_file(), cfg.model.towers_file


def test_overrides_take_toml_literals():
    cfg = load_config(
        ROOT / "dmt/configs/synthetic_dlrm.toml",
        ["train.steps=7", "model.top_mlp=[8, 4]", "dist.mode=sptt", "train.dense_lr=1"],
    )
    assert cfg.train.steps == 7 and cfg.model.top_mlp == [8, 4] and cfg.dist.mode == "sptt"
    assert cfg.train.dense_lr == 1.0 and isinstance(cfg.train.dense_lr, float)


def test_towers_file_is_relative_to_its_config():
    cfg = load_config(ROOT / "dmt/configs/synthetic_dmt_dlrm.toml")
    assert Path(cfg.model.towers_file).is_file()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.stpes=3"], "unknown config key 'train.stpes'"),
        (["bogus.x=1"], "unknown config key 'bogus'"),
        (["train.steps=many"], "config key 'train.steps' has bad value 'many'"),
        (["dist.mode=ring"], "config key 'dist.mode' has bad value 'ring'; allowed: 'flat', 'sptt'"),
        (["train.steps=0"], "'train.steps' must be > 0"),
        (["model.compression_ratio=0.5"], "compression_ratio must be >= 1"),
        (["model.bottom_mlp=[64, 8]"], "must end in model.embedding_dim=16"),
        (["train"], "--set expects key=value"),
    ],
)
def test_bad_config_values_are_user_errors(overrides, message):
    with pytest.raises(UserError) as err:
        load_config(ROOT / "dmt/configs/synthetic_dlrm.toml", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_single_ratio_is_refused_where_the_config_sets_ratios_per_tower(tmp_path):
    path = tmp_path / "per_tower.toml"
    text = (ROOT / "dmt/configs/synthetic_dmt_dlrm.toml").read_text()
    path.write_text(text.replace("[model]", "[model]\ntower_compression_ratios = [2.0, 2.0, 4.0, 4.0]", 1))
    assert load_config(path).model.tower_compression_ratios == [2.0, 2.0, 4.0, 4.0]
    with pytest.raises(UserError) as err:
        load_config(path, ["model.compression_ratio=8"])
    assert "model.compression_ratio has no effect" in str(err.value) and "\n" not in str(err.value)
    both = load_config(path, ["model.compression_ratio=8", "model.tower_compression_ratios=[]"]).model
    assert (both.compression_ratio, both.tower_compression_ratios) == (8.0, [])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dmt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--config", "dmt/configs/nope.toml", "--out", "x"], "config file not found: dmt/configs/nope.toml"),
        (
            ["train", "--config", "dmt/configs/synthetic_dlrm.toml", "--set", "train.steps=-1", "--out", "x"],
            "'train.steps' must be > 0",
        ),
        (
            [
                "train",
                "--config",
                "dmt/configs/synthetic_dlrm.toml",
                "--set",
                "model.towers_file=missing.json",
                "--out",
                "x",
            ],
            "model.towers_file not found: missing.json",
        ),
        (
            [
                "train",
                "--config",
                "dmt/configs/synthetic_dlrm.toml",
                "--nproc",
                "3",
                "--ranks-per-host",
                "2",
                "--out",
                "x",
            ],
            "ranks per host 2 does not divide the world of 3 ranks",
        ),
        (["eval", "--checkpoint", "nowhere"], "no checkpoint at nowhere"),
        (["train", "--config"], "expected one argument"),
        (
            [
                "verify",
                "--config",
                "dmt/configs/synthetic_dlrm.toml",
                "--hosts",
                "0",
                "--ranks-per-host",
                "2",
                "--out",
                "x.json",
            ],
            "hosts >= 1",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dmt: error:"), r.stderr
    assert message in lines[0]


def test_bad_toml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dmt: error: config file {bad} is not valid TOML"), err


def test_sptt_table_split_over_towers_is_rejected(tmp_path):
    """Two features reading one table must share a tower under SPTT."""
    from dmt.config import DataConfig
    from dmt.data.synthetic import SyntheticSource

    feats = SyntheticSource(DataConfig()).features
    shared = [f for f in feats if sum(g.table == f.table for g in feats) > 1]
    assert shared, "the default synthetic data has shared tables"
    names = [f.name for f in feats]
    a = shared[0].name
    towers = [[a], [n for n in names if n != a]]
    path = tmp_path / "towers.json"
    path.write_text(json.dumps({"towers": towers}))
    r = _cli(
        "train",
        "--config",
        "dmt/configs/synthetic_dmt_dlrm.toml",
        "--set",
        f"model.towers_file={path}",
        "model.compression_ratio=1",
        "--nproc",
        "2",
        "--ranks-per-host",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 2 and "SPTT keeps a table inside one tower" in r.stderr


def test_planted_towers_file_matches_default_synthetic_data():
    from dmt.config import DataConfig
    from dmt.data.synthetic import SyntheticSource

    towers = json.loads((ROOT / "dmt/configs/towers/synthetic_planted.json").read_text())["towers"]
    assert towers == SyntheticSource(DataConfig()).planted_groups
