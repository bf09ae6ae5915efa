"""The accuracy benchmark's protocol: the journal resumes a stopped stage, paired intervals, config edits."""

import json
import subprocess

import pytest

from benchmarks.accuracy import jobs, protocol
from benchmarks.accuracy.run import set_in_toml


def test_a_run_in_the_journal_is_read_back_not_rerun(tmp_path, monkeypatch):
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setattr(jobs, "JOURNAL", journal)
    monkeypatch.setattr(jobs, "REMEMBERED", {})
    job = jobs.Job("nycflights13", "dcn", "flat", 7, "validation", ("train.steps=5",))
    shown = " ".join(["python", *job.command()[1:]])
    row = {"command": shown, "config_digest": jobs.digest(job.resolved()), "auc": 0.75, "variant": "old"}
    journal.write_text(json.dumps(row) + "\n" + '{"command": "python -m dmt train --cut sh')  # a killed writer
    assert jobs.read_journal(journal) == [row]

    def no_run(*a, **k):
        raise AssertionError("a journaled run was started again")

    monkeypatch.setattr(subprocess, "run", no_run)
    jobs.remember(jobs.read_journal(journal))
    got = jobs.run_job(job, "abc")
    assert got["auc"] == 0.75 and got["variant"] == "flat"
    other = jobs.Job("nycflights13", "dcn", "flat", 7, "validation", ("train.steps=6",))  # another config
    with pytest.raises(AssertionError, match="started again"):
        jobs.run_job(other, "abc")


def test_a_finished_run_is_journaled_and_a_run_directory_of_before_is_journaled_on_read_back(tmp_path, monkeypatch):
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setattr(jobs, "JOURNAL", journal)
    monkeypatch.setattr(jobs, "REMEMBERED", {})
    monkeypatch.setattr(jobs, "RUNS", tmp_path / "runs")
    job = jobs.Job("synthetic", "dcn", "flat", 0, "validation", ("train.steps=3", "data.synthetic.eval_samples=1024"))
    row = jobs.run_job(job, "abc")
    assert row["steps"] == 3 and row["commit"] == "abc" and jobs.read_journal(journal) == [row]

    journal.unlink()  # a run directory without its journal line (a run of before the journal)
    jobs.REMEMBERED.clear()

    def no_run(*a, **k):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(subprocess, "run", no_run)
    assert jobs.run_job(job, "def") == row
    assert jobs.read_journal(journal) == [row]


def test_module_jobs_are_the_module_stage_s_runs():
    """screened() reads nycflights13's module runs back by the same commands the module stage runs."""
    got = protocol.module_jobs("nycflights13", "dcn", ["compress_cross3"])
    assert [j.seed for j in got] == protocol.SELECTION_SEEDS["nycflights13"]
    sets = got[0].sets
    assert sets[:2] == tuple(protocol.MODULES["dcn"]["compress_cross3"])
    assert "train.steps=1000" in sets and sets[-1].startswith("model.tower_compression_ratios=[")


def test_paired_difference_and_its_t_interval():
    rows = [
        {"dataset": "d", "config": c, "seed": s, "auc": auc}
        for s, (flat, dmt) in enumerate([(0.780, 0.781), (0.770, 0.772), (0.790, 0.793)])
        for c, auc in (("dcn", flat), ("dmt_dcn", dmt))
    ]
    (pair,) = protocol.paired(rows)
    assert pair["family"] == "dcn" and pair["seeds"] == [0, 1, 2]
    assert pair["diff_mean"] == pytest.approx(0.002)
    assert pair["diff_std"] == pytest.approx(0.001)
    half = 4.302652729911275 * 0.001 / 3**0.5  # t(0.975, 2 degrees of freedom)
    assert pair["ci95"] == pytest.approx([0.002 - half, 0.002 + half])


def test_set_in_toml_replaces_a_key_or_adds_it_to_its_section():
    text = '[model]\narch = "dcn"  # the head\n\n[train]\nsteps = 1000\n'
    out = set_in_toml(text, "train.steps=700", "chosen")
    assert "steps = 700  # chosen" in out and "steps = 1000" not in out
    out = set_in_toml(out, "model.tower_module=residual", "chosen")
    assert out.splitlines()[:3] == ["[model]", 'arch = "dcn"  # the head', 'tower_module = "residual"  # chosen']


def test_a_job_that_needs_its_checkpoint_is_run_again_when_only_the_journal_has_it(tmp_path, monkeypatch):
    """learned_towers partitions from the probe's model.pt, so a journaled row without it is not enough."""
    monkeypatch.setattr(jobs, "JOURNAL", tmp_path / "journal.jsonl")
    monkeypatch.setattr(jobs, "REMEMBERED", {})
    monkeypatch.setattr(jobs, "RUNS", tmp_path / "runs")
    job = jobs.Job(
        "synthetic", "dlrm", "towers_probe", 0, "validation", ("train.steps=2", "data.synthetic.eval_samples=512")
    )
    shown = " ".join(["python", *job.command()[1:]])
    jobs.remember([{"command": shown, "config_digest": jobs.digest(job.resolved()), "auc": 0.5, "variant": "x"}])
    assert jobs.run_job(job, "abc")["auc"] == 0.5  # read back: no run directory needed
    row = jobs.run_job(job, "abc", need_checkpoint=True)
    assert row["steps"] == 2 and (job.out / "model.pt").is_file()


def test_towers_candidates_name_their_file_and_spend_the_same_budget():
    assert protocol.towers_sets("movielens100k", protocol.TOWERS["movielens100k"]) == []
    assert protocol.towers_sets("movielens100k", "movielens100k_tp_dcn") == [
        "model.towers_file=dmt/configs/towers/movielens100k_tp_dcn.json"
    ]
    for name in ("movielens100k_tp", "movielens100k_tp_dcn"):
        p = protocol.budget_ratios("movielens100k", "dcn", 1.0, towers=name)
        assert sum(p["tower_widths"]) == 10 * 16 // 4  # uniform CR 4 of 10 features x 16


def test_apply_writes_a_chosen_towers_file_relative_to_the_config(tmp_path, monkeypatch):
    """--set paths are relative to the working directory, a config file's own paths to the file."""
    from benchmarks.accuracy.run import apply_choices

    configs = tmp_path / "dmt" / "configs"
    configs.mkdir(parents=True)
    (configs / "movielens100k_dcn.toml").write_text('[model]\narch = "dcn"\n')
    (configs / "movielens100k_dmt_dcn.toml").write_text('[model]\ntowers_file = "towers/movielens100k_tp.json"\n')
    monkeypatch.chdir(tmp_path)
    choice = {"flat_sets": [], "dmt_sets": ["model.towers_file=dmt/configs/towers/movielens100k_tp_dlrm.json"]}
    assert apply_choices("movielens100k", {"dcn": choice}) == ["dmt/configs/movielens100k_dmt_dcn.toml"]
    text = (configs / "movielens100k_dmt_dcn.toml").read_text()
    assert text.splitlines()[1].startswith('towers_file = "towers/movielens100k_tp_dlrm.json"  # chosen on')


def test_the_resplit_runs_the_committed_configs_on_another_split_with_seeds_no_run_used(monkeypatch):
    monkeypatch.setattr(protocol, "run_all", lambda jobs, commit: jobs)
    for dataset, seeds in protocol.RESPLIT_SEEDS.items():
        got = protocol.resplit(dataset, "commit")
        assert sorted((j.config, j.seed) for j in got) == sorted((c, s) for c in protocol.CONFIGS for s in seeds)
        data = got[0].resolved()["data"]
        assert data["seed"] == protocol.RESPLIT_DATA_SEED != 1234 and data["eval_split"] == "test"
        before = {r["seed"] for r in jobs.read_journal() if r["dataset"] == dataset and r["variant"] != "resplit"}
        assert before and not before & set(seeds)
