"""Accuracy of flat and DMT models on real and synthetic data, by the protocol of protocol.py.

    .venv/bin/python -m benchmarks.accuracy.run --stage select                 # every choice, on validation
    .venv/bin/python -m benchmarks.accuracy.run --stage round2                 # then the second round, on validation
    .venv/bin/python -m benchmarks.accuracy.run --stage apply                  # write the choices into the configs
    .venv/bin/python -m benchmarks.accuracy.run --stage final                  # fresh seeds, test, run once
    .venv/bin/python -m benchmarks.accuracy.run --stage resplit                # the same on another split of the rows
    .venv/bin/python -m benchmarks.accuracy.run --stage grid                   # CR 1..16 sweep, test, seeds 0-2
    .venv/bin/python -m benchmarks.accuracy.run --stage sptt                   # SPTT 2x2 against one process
    .venv/bin/python -m benchmarks.accuracy.run --report                       # rewrite results.md only

`--datasets` limits a stage to some datasets (its other datasets' results are kept). Each run is one
`dmt train` process (OMP_NUM_THREADS=1, nice 10, two at a time) in runs/bench_accuracy/ (not
committed); a run already there with the same command is read back, not rerun. Each finished
run's row also goes to journal.jsonl (committed) at once, so a stage stopped part way resumes from a
fresh checkout. results.json keeps every run of every stage with its command and commit.

`--stage final` first checks that the committed configs hold the settings the selection chose
(applying the chosen `--set` items to them changes nothing), so the final runs test what was
chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.accuracy import protocol
from benchmarks.accuracy.jobs import Job, read_journal, remember, run_all, run_job
from benchmarks.accuracy.report import write_report
from benchmarks.common import provenance

HERE = Path(__file__).parent
DATASETS = ["nycflights13", "movielens100k", "synthetic"]
REAL = ["nycflights13", "movielens100k"]
GRID_SEEDS = [0, 1, 2]
RATIOS = [1, 2, 4, 8, 16]
STAGES = ("selection", "final", "resplit", "grid", "sptt_check")
SPTT = {"dataset": "nycflights13", "config": "dmt_dcn", "seed": 0, "nproc": 4, "ranks_per_host": 2}


def grid_jobs(datasets: list[str]) -> list[Job]:
    """Flat models and the committed DMT configs at uniform CR 1..16 on the test split."""
    jobs = []
    for ds in datasets:
        for config in ("dlrm", "dcn"):
            jobs += [Job(ds, config, "flat", s) for s in GRID_SEEDS]
        for config in ("dmt_dlrm", "dmt_dcn"):
            for cr in RATIOS:
                sets = (f"model.compression_ratio={cr}", "model.tower_compression_ratios=[]")
                jobs += [Job(ds, config, f"cr{cr}", s, "test", sets) for s in GRID_SEEDS]
    return jobs


def refusal(job: Job, features: dict) -> str | None:
    """None if the job's model builds, else the one-line reason (a ratio its towers cannot take).
    features: a cache of each dataset's (features, num_dense)."""
    import torch

    from dmt.config import load_config
    from dmt.cost.workload import feature_specs
    from dmt.errors import UserError
    from dmt.models.build import build_model

    cfg = load_config(f"dmt/configs/{job.dataset}_{job.config}.toml", list(job.sets))
    if job.dataset not in features:
        features[job.dataset] = feature_specs(cfg.data)
    try:
        with torch.device("meta"):
            build_model(cfg.model, *features[job.dataset])
    except UserError as e:
        return str(e)
    return None


def stage_grid(datasets: list[str], commit: str) -> dict:
    """Run the grid's buildable jobs; a setting that the towers cannot take is recorded as refused."""
    jobs, refused, reasons, features = [], [], {}, {}
    for job in grid_jobs(datasets):
        key = (job.dataset, job.config, job.variant)
        if key not in reasons:
            reasons[key] = refusal(job, features)
            if reasons[key] is not None:
                refused.append(dict(zip(("dataset", "config", "variant"), key, strict=True), refused=reasons[key]))
        if reasons[key] is None:
            jobs.append(job)
    return {"runs": run_all(jobs, commit), "refused": refused}


def _section(lines: list[str], section: str) -> tuple[int, int]:
    """-> (index of the `[section]` header, index of the next header or len(lines))."""
    start = lines.index(f"[{section}]")
    return start, next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))


def set_in_toml(text: str, item: str, note: str) -> str:
    """A config file's text with one `section.key=value` item (--set syntax) written into it: the key's
    line replaced, or added at the end of its section; other lines and comments are kept."""
    import re
    import tomllib

    dotted, value = item.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        value = f'"{value}"'  # a bare string, as --set takes it
    line = f"{key} = {value}  # {note}"
    lines = text.splitlines()
    start, end = _section(lines, section)
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    for i in range(start + 1, end):
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            lines[i] = line
            break
    else:
        lines.insert(end, line)
    return "\n".join(lines) + "\n"


def drop_from_toml(text: str, dotted: str) -> str:
    """A config file's text without the `section.key` line (unchanged if it has none)."""
    import re

    section, key = dotted.split(".", 1)
    lines = text.splitlines()
    start, end = _section(lines, section)
    kept = [line for i, line in enumerate(lines) if not (start < i < end and re.match(rf"{re.escape(key)}\s*=", line))]
    return "\n".join(kept) + "\n"


def as_committed(sets: list[str]) -> list[str]:
    """The chosen --set items as a config file holds them: per-tower ratios that are all equal become
    the one model.compression_ratio (so that --set model.compression_ratio still sweeps the file)."""
    out = []
    for item in sets:
        key, value = item.split("=", 1)
        ratios = json.loads(value) if key == "model.tower_compression_ratios" else None
        if ratios and len(set(ratios)) == 1:
            out += [f"model.compression_ratio={ratios[0]!r}", "model.tower_compression_ratios=[]"]
        else:
            out.append(item)
    return out


def apply_choices(dataset: str, choices: dict) -> list[str]:
    """Write the selection's choices into the dataset's committed configs -> the files changed.
    Per-tower ratios replace the file's single ratio, which they would override."""
    changed = []
    for family, c in choices.items():
        for config, sets in ((family, c["flat_sets"]), (f"dmt_{family}", c["dmt_sets"])):
            path = Path(f"dmt/configs/{dataset}_{config}.toml")
            text = path.read_text()
            note = f"chosen on {dataset} validation (benchmarks/accuracy, seeds {protocol.SELECTION_SEEDS[dataset]})"
            for item in as_committed(sets):
                key = item.split("=", 1)[0]
                if item == "model.tower_compression_ratios=[]":
                    text = drop_from_toml(text, key)
                elif key == "model.towers_file":  # the file's own paths are relative to it
                    text = set_in_toml(text, f"{key}={Path(item.split('=', 1)[1]).relative_to(path.parent)}", note)
                else:
                    text = set_in_toml(text, item, note)
                    if key == "model.tower_compression_ratios":
                        text = drop_from_toml(text, "model.compression_ratio")
            if text != path.read_text():
                path.write_text(text)
                changed.append(str(path))
    return changed


def check_committed(dataset: str, choices: dict) -> None:
    """The committed configs must hold the chosen settings: applying them changes nothing."""
    from dmt.config import load_config, to_dict

    for family, c in choices.items():
        for config, sets in ((family, c["flat_sets"]), (f"dmt_{family}", c["dmt_sets"])):
            path = f"dmt/configs/{dataset}_{config}.toml"
            if to_dict(load_config(path)) != to_dict(load_config(path, as_committed(sets))):
                raise SystemExit(f"{path} does not hold the chosen settings {sets}: commit them before --stage final")


def sptt_check(commit: str) -> dict:
    """nycflights13 DMT-DCN as committed, SPTT on 2 hosts x 2 ranks (per-rank batch / 4: the same
    global batch and data order) against one process, same seed, test split."""
    import tomllib

    ds, config, seed = SPTT["dataset"], SPTT["config"], SPTT["seed"]
    bs = tomllib.loads(Path(f"dmt/configs/{ds}_{config}.toml").read_text())["train"]["batch_size"]
    single = run_job(Job(ds, config, "sptt_single", seed), commit)
    sets = ("dist.mode=sptt", f"train.batch_size={bs // SPTT['nproc']}")
    sptt = run_job(Job(ds, config, "sptt_2x2", seed, "test", sets), commit, SPTT["nproc"], SPTT["ranks_per_host"])
    return {**SPTT, "single": single, "sptt": sptt, "delta_auc": sptt["auc"] - single["auc"]}


def _keep(old: list[dict], new: list[dict], datasets: list[str]) -> list[dict]:
    return [r for r in old if r["dataset"] not in datasets] + new


def committed_stage(stage: str, runner, result: dict, datasets: list[str], commit: str) -> dict:
    """final or resplit (`runner`: protocol.final or protocol.resplit): the committed configs, checked
    to hold the choices, on the test split, paired DMT - flat per family; the other datasets' runs
    of the stage in `result` are kept."""
    for ds in datasets:
        check_committed(ds, result["selection"]["choices"][ds])
    old = result.get(stage, {}).get("runs", [])
    runs = _keep(old, [r for ds in datasets for r in runner(ds, commit)], datasets)
    names = sorted({r["dataset"] for r in runs})
    seeds = {ds: sorted({r["seed"] for r in runs if r["dataset"] == ds}) for ds in names}
    return {"seeds": seeds, "runs": runs, "pairs": protocol.paired(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["select", "round2", "apply", "final", "resplit", "grid", "sptt"])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    ap.add_argument("--report", action="store_true", help="only rewrite results.md from results.json")
    args = ap.parse_args()
    path = HERE / "results.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result = {k: v for k, v in result.items() if k in STAGES}  # a results.json of the old layout starts afresh
    for stage in result.values():
        remember(stage.get("runs", []) if isinstance(stage, dict) else [])
    remember(read_journal())
    if not args.report:
        here = provenance()
        commit = here["commit"]
        if args.stage == "select":
            datasets = args.datasets or DATASETS
            old = result.get("selection", {})
            runs, choices = [], dict(old.get("choices", {}))
            for ds in datasets:
                rows, chosen = protocol.select(ds, commit)
                runs += rows
                choices[ds] = chosen
            result["selection"] = {**here, "runs": _keep(old.get("runs", []), runs, datasets), "choices": choices}
        elif args.stage == "round2":
            datasets = args.datasets or list(protocol.LEARNED_TOWERS)
            sel = result["selection"]
            first = sel.get("first_choices", sel["choices"])  # round 2 always starts from round 1's
            round2 = ("towers", "round2")
            kept = [r for r in sel["runs"] if not (r["dataset"] in datasets and r["stage"].startswith(round2))]
            choices = dict(sel["choices"])
            for ds in datasets:
                rows, choices[ds] = protocol.select_round2(ds, commit, first[ds])
                kept += rows
            ran = {**sel.get("round2", {}), **{ds: here for ds in datasets}}  # per dataset: its round's provenance
            sel = {**sel, "runs": kept, "first_choices": first, "choices": choices, "round2": ran}
            result["selection"] = sel
        elif args.stage == "apply":
            choices = result["selection"]["choices"]
            for ds in args.datasets or list(choices):
                apply_choices(ds, choices[ds])
                check_committed(ds, choices[ds])
                print(f"{ds}: the configs hold the chosen settings")
            return
        elif args.stage == "final":
            datasets = args.datasets or DATASETS
            result["final"] = {**here, **committed_stage("final", protocol.final, result, datasets, commit)}
        elif args.stage == "resplit":
            datasets = args.datasets or REAL
            if not set(datasets) <= set(REAL):
                ap.error(f"--stage resplit is for the real data: {', '.join(REAL)}")
            got = committed_stage("resplit", protocol.resplit, result, datasets, commit)
            result["resplit"] = {**here, **got, "data_seed": protocol.RESPLIT_DATA_SEED}
        elif args.stage == "grid":
            datasets = args.datasets or REAL
            old = result.get("grid", {})
            got = stage_grid(datasets, commit)
            result["grid"] = {
                **here,
                "seeds": GRID_SEEDS,
                "runs": _keep(old.get("runs", []), got["runs"], datasets),
                "refused": _keep(old.get("refused", []), got["refused"], datasets),
            }
        elif args.stage == "sptt":
            result["sptt_check"] = {**here, **sptt_check(commit)}
        else:
            ap.error("give --stage or --report")
        path.write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, HERE / "results.md")


if __name__ == "__main__":
    main()
