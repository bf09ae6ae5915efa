"""One-process training end to end: the summary contract, learning, checkpoint -> eval."""

from __future__ import annotations

import json

import pytest

from dmt.cli import main
from dmt.config import load_config
from dmt.train.loop import train

SUMMARY_KEYS = {
    "auc",
    "logloss",
    "ne",
    "optimal_auc",
    "optimal_logloss",
    "examples_per_s",
    "step_ms",
    "comm",
    "world",
    "mode",
    "model",
    "towers",
    "steps",
    "seed",
}


def test_train_writes_summary_and_checkpoint_that_eval_reads(tmp_path):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            "dmt/configs/synthetic_dmt_dcn.toml",
            "--set",
            "train.steps=30",
            "train.batch_size=64",
            "data.synthetic.eval_samples=4096",
            "train.progress=false",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    s = json.loads((run / "summary.json").read_text())
    assert s.keys() >= SUMMARY_KEYS
    assert s["mode"] == "single" and s["model"] == "dmt_dcn" and len(s["towers"]) == 4
    assert s["world"] == {"hosts": 1, "ranks_per_host": 1}
    assert set(s["comm"]) >= {"intra_host_bytes", "cross_host_bytes", "messages"}
    assert 0.5 < s["optimal_auc"] < 1
    # phases nested in others are charged to themselves alone: the breakdown never exceeds the step
    mean_step_ms = 1e3 * 64 / s["examples_per_s"]
    assert 0.5 * mean_step_ms < sum(s["step_breakdown_ms"].values()) <= 1.05 * mean_step_ms, s["step_breakdown_ms"]
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["auc"] == pytest.approx(s["auc"], abs=1e-9) and ev["step"] == 30


@pytest.mark.parametrize("path", ["dmt/configs/synthetic_dlrm.toml", "dmt/configs/synthetic_dmt_dlrm.toml"])
def test_short_training_learns_interactions(tmp_path, path):
    """800 steps already beat the best model without feature interactions (logistic regression ~0.70)."""
    cfg = load_config(path, ["train.steps=800", "data.synthetic.eval_samples=16384", "train.progress=false"])
    s = train(cfg, tmp_path)
    assert s["auc"] > 0.72, s["auc"]
    assert s["auc"] < s["optimal_auc"]
    assert s["train_log"][-1]["train_logloss"] < s["train_log"][0]["train_logloss"]


def test_data_describe_reports_the_planted_truth(tmp_path):
    out = tmp_path / "describe.json"
    assert main(["data", "describe", "--config", "dmt/configs/synthetic_dlrm.toml", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["features"]) == 24 and {"name", "cardinality", "pooling_factor"} <= d["features"][0].keys()
    assert sorted(len(g) for g in d["planted_groups"]) == [4, 4, 8, 8]
    assert 0.78 <= d["optimal_auc"] <= 0.82 and d["optimal_logloss"] > 0
    assert d["rows"]["test"] == 65536 and d["malformed_rows"] == 0


def test_run_leaves_metrics_tensorboard_and_curves(tmp_path):
    cfg = load_config(
        "dmt/configs/synthetic_dlrm.toml",
        [
            "train.steps=40",
            "train.log_every=10",
            "train.batch_size=64",
            "data.synthetic.eval_samples=2048",
            "train.progress=false",
        ],
    )
    s = train(cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [10, 20, 30, 40]
    assert {"forward", "backward", "optimizer", "data"} <= s["step_breakdown_ms"].keys()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "curves.png").stat().st_size > 10_000
