"""The evaluation protocol: every choice on the validation split with selection seeds, then the
final test numbers from fresh seeds that no choice has seen, as paired differences against flat.

Selection, per dataset and family (DLRM, DCN), each stage on data.eval_split = "validation",
train.seed in SELECTION_SEEDS, the winner being the highest mean validation AUC:

    flat_steps, flat_rates   the flat model: train.steps at the default learning rates, then the
                             (embedding, dense) learning rates at the chosen steps
    module   DMT x Tower Module candidates (kind and options) at the budget, default training settings
    budget   the winning module x MIXES: per-tower ratios that spend the budget of uniform CR 4,
             proposed from the towers file's interaction matrix (dmt/partition/budget.py); the
             uniform candidate (mix 1) reuses the module stage's runs, and the stage is skipped where
             every mix gives the same widths (the granule or the towers leave no choice)
    dmt_steps, dmt_rates     the winning module and ratios, as for flat

Then a second round (`select_round2`, added after the first final; real data only), from those
choices: flat's training settings again on wider grids (ROUND2_GRIDS); the towers stage, the chosen
module at its chosen settings and uniform CR 4 on the data's TP towers and on TP towers of flat
DLRM's and flat DCN's learned interactions (`learned_towers`), with the budget stage again where
learned towers win; DMT's training settings again on the wider grids.

A candidate that an earlier stage already ran (the same config) is reused, not run again.

The budget is the cross-host floats per sample of uniform CR 4: sum_t n_t d / 4. A DLRM Tower
Module sends whole d-wide embeddings, so DLRM spends the largest whole number of embeddings
within it (fewer floats where the towers do not divide; the ratio is then above 4).

Final: the committed configs (which must hold the chosen settings, `check_committed`), train.seed
in FINAL_SEEDS[dataset], data.eval_split = "test", run once. For each family, the paired difference
DMT - flat over the seeds, its mean and a 95% t interval.

Resplit (real data, after both finals): the same committed configs and the same paired report on
another random split of the rows (data.seed = RESPLIT_DATA_SEED) with seeds no run has used. The
second round was started because the first final missed the goal, so every choice since has been
made knowing how one test split came out; a split that no choice and no final has seen asks
whether the result belongs to that split. Nothing is chosen from it.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.accuracy.jobs import RUNS, Job, run_all, run_job

SELECTION_SEEDS = {"nycflights13": [0, 1, 2], "movielens100k": [0, 1, 2], "synthetic": [0, 1]}
# never used by any choice (nor by earlier grids). The real data's first finals used 100-104 before the
# second round (select_round2) existed; their finals after it use 200-204
FINAL_SEEDS = {
    "nycflights13": [200, 201, 202, 203, 204],
    "movielens100k": [200, 201, 202, 203, 204],
    "synthetic": [100, 101, 102, 103, 104],
}
RESPLIT_DATA_SEED = 4321  # the protocol's split is data.seed 1234
RESPLIT_SEEDS = {"nycflights13": [300, 301, 302, 303, 304], "movielens100k": [300, 301, 302, 303, 304]}
CONFIGS = ("dlrm", "dmt_dlrm", "dcn", "dmt_dcn")
BUDGET_RATIO = 4.0
FAMILIES = ("dlrm", "dcn")
TOWERS = {"nycflights13": "nycflights13_tp", "movielens100k": "movielens100k_tp", "synthetic": "synthetic_planted"}
TOWERS_DIR = Path("dmt/configs/towers")
TOWER_SOURCES = ("dlrm", "dcn")  # flat models whose learned interactions make the other tower candidates
LEARNED_TOWERS = ("nycflights13", "movielens100k")  # the synthetic data keeps the generator's planted towers

# training settings (train.steps, train.embedding_lr, train.dense_lr): steps at the default rates,
# then (embedding, dense) learning rates at the chosen steps
DEFAULT_TRAIN = {
    "nycflights13": (1000, 0.05, 0.002),
    "movielens100k": (600, 0.05, 0.002),
    "synthetic": (6000, 0.1, 0.002),
}
STEPS = {"nycflights13": (700, 1000, 1400), "movielens100k": (400, 600, 900), "synthetic": (6000, 8000)}
REAL_RATES = ((0.05, 0.002), (0.03, 0.001), (0.08, 0.004), (0.12, 0.006))
RATES = {
    "nycflights13": REAL_RATES,
    "movielens100k": REAL_RATES,
    "synthetic": ((0.1, 0.002), (0.05, 0.001), (0.2, 0.004)),
}

# the second round's training grids (select_round2): one step count above the top where a first-round
# choice sat there (MovieLens-100k: flat DCN and both DMT models took 900), one rate pair above the top
# where one did (nycflights13: flat DCN took 0.12 / 0.006)
ROUND2_GRIDS = {
    "nycflights13": (STEPS["nycflights13"], (*REAL_RATES, (0.16, 0.008))),
    "movielens100k": ((*STEPS["movielens100k"], 1200), REAL_RATES),
}

RESIDUAL = ["model.tower_module=residual"]
MODULES = {
    "dlrm": {
        "compress_h64": ["model.tower_module=compress", "model.tower_hidden=64"],
        "compress_h256": ["model.tower_module=compress", "model.tower_hidden=256"],
        "residual_256": [*RESIDUAL, "model.tower_mlp=[256]"],
        "residual_512": [*RESIDUAL, "model.tower_mlp=[512]"],
        "residual_256x2": [*RESIDUAL, "model.tower_mlp=[256, 256]"],
        "residual_256_norm": [*RESIDUAL, "model.tower_mlp=[256]", "model.tower_norm=true"],
        "residual_256_attention": [*RESIDUAL, "model.tower_mlp=[256]", "model.tower_attention_layers=1"],
        "residual_512_norm": [*RESIDUAL, "model.tower_mlp=[512]", "model.tower_norm=true"],
    },
    "dcn": {
        "compress_cross3": ["model.tower_module=compress", "model.tower_cross_layers=3"],
        "residual_cross3_256": [*RESIDUAL, "model.tower_cross_layers=3", "model.tower_mlp=[256]"],
        "residual_cross3_256_random": [
            *RESIDUAL,
            "model.tower_cross_layers=3",
            "model.tower_mlp=[256]",
            "model.tower_projection_init=default",
        ],
        "residual_cross3_nomlp": [*RESIDUAL, "model.tower_cross_layers=3", "model.tower_mlp=[]"],
        "residual_cross1_256": [*RESIDUAL, "model.tower_cross_layers=1", "model.tower_mlp=[256]"],
        "residual_cross3_512": [*RESIDUAL, "model.tower_cross_layers=3", "model.tower_mlp=[512]"],
        "residual_cross3_256_norm": [
            *RESIDUAL,
            "model.tower_cross_layers=3",
            "model.tower_mlp=[256]",
            "model.tower_norm=true",
        ],
        "residual_cross3_512_norm": [
            *RESIDUAL,
            "model.tower_cross_layers=3",
            "model.tower_mlp=[512]",
            "model.tower_norm=true",
        ],
        "residual_cross3_512_norm_dots": [
            *RESIDUAL,
            "model.tower_cross_layers=3",
            "model.tower_mlp=[512]",
            "model.tower_norm=true",
            "model.tower_dots=true",
        ],
        "residual_cross3_256_norm_dots": [
            *RESIDUAL,
            "model.tower_cross_layers=3",
            "model.tower_mlp=[256]",
            "model.tower_norm=true",
            "model.tower_dots=true",
        ],
    },
}
# Module candidates on the other datasets: the three best on nycflights13 validation and the
# compress module of before (screened there, so that the other datasets' grids stay affordable)
SCREEN_ON = "nycflights13"
BASELINE_MODULE = {"dlrm": "compress_h64", "dcn": "compress_cross3"}


def module_jobs(dataset: str, family: str, names: list[str]) -> list[Job]:
    """The module stage's jobs: each candidate at uniform CR 4's widths and the default training."""
    sets = [*train_sets(DEFAULT_TRAIN[dataset]), *ratio_sets(budget_ratios(dataset, family, 1.0))]
    return [
        Job(dataset, f"dmt_{family}", f"module/{name}", seed, "validation", (*MODULES[family][name], *sets))
        for name in names
        for seed in SELECTION_SEEDS[dataset]
    ]


def screened(dataset: str, family: str, commit: str) -> list[str]:
    """The module candidates of `dataset`: all on SCREEN_ON, else its top three there + the baseline
    (SCREEN_ON's module runs are read back from the journal, or run if it lacks them)."""
    if dataset == SCREEN_ON:
        return list(MODULES[family])
    top = [name for name, _ in ranked(run_all(module_jobs(SCREEN_ON, family, list(MODULES[family])), commit))][:3]
    return [n.split("/", 1)[1] for n in top] + [BASELINE_MODULE[family]] * (
        f"module/{BASELINE_MODULE[family]}" not in top
    )


MIXES = [1.0, 0.5, 0.0]  # share of the budget spent by tower size (1: uniform) rather than cross interaction


def train_sets(setting: tuple[int, float, float]) -> list[str]:
    steps, emb, dense = setting
    return [f"train.steps={steps}", f"train.embedding_lr={emb:g}", f"train.dense_lr={dense:g}"]


def train_name(setting: tuple[int, float, float]) -> str:
    return f"steps{setting[0]}_emb{setting[1]:g}_dense{setting[2]:g}"


def towers_file(dataset: str, name: str | None = None) -> dict:
    """The towers file `name` (default: the dataset's data-interaction towers, TOWERS)."""
    return json.loads((TOWERS_DIR / f"{name or TOWERS[dataset]}.json").read_text())


def towers_sets(dataset: str, name: str) -> list[str]:
    """--set items that train on towers file `name` (none for the configs' own TOWERS[dataset]); a
    --set path is relative to the working directory (a config file's own paths are relative to it)."""
    return [] if name == TOWERS[dataset] else [f"model.towers_file={TOWERS_DIR / name}.json"]


def learned_towers(dataset: str, source: str, flat_sets: list[str], commit: str) -> str:
    """The name of the TP towers file made from flat `source`'s learned interactions (`dmt partition
    --checkpoint`): the flat model at its chosen settings `flat_sets`, the first selection seed, trained
    on the train split; the same number of towers, cost, tolerance and seed as the data's towers file.
    A committed file is kept; otherwise it is made (and then committed with the selection)."""
    name = f"{TOWERS[dataset]}_{source}"
    path = TOWERS_DIR / f"{name}.json"
    if path.is_file():
        return name
    data = towers_file(dataset)
    probe = Job(dataset, source, "towers_probe", SELECTION_SEEDS[dataset][0], "validation", tuple(flat_sets))
    run_job(probe, commit, need_checkpoint=True)
    out = RUNS / "towers" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dmt", "partition", "--config", f"dmt/configs/{dataset}_{source}.toml"]
    cmd += ["--checkpoint", str(probe.out), "--towers", str(len(data["towers"])), "--method", "tp"]
    cmd += ["--cost", data["cost"], "--tolerance", f"{data['tolerance']:g}", "--seed", str(data["seed"])]
    subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    shutil.copyfile(out, path)
    return name


def budget_ratios(dataset: str, family: str, mix: float, dim: int = 16, towers: str | None = None) -> dict:
    """The per-tower ratios that spend uniform CR 4's bytes on towers file `towers` (default: TOWERS)
    (dmt/partition/budget.py)."""
    from dmt.partition.budget import propose_ratios

    t = towers_file(dataset, towers)
    if t.get("interaction") is None:  # planted towers: no matrix, spend by size
        names = [f for tower in t["towers"] for f in tower]
        similarity, mix = np.zeros((len(names), len(names))), 1.0
    else:
        names, similarity = t["features"], np.asarray(t["interaction"])
    return propose_ratios(t["towers"], names, similarity, dim, BUDGET_RATIO, dim if family == "dlrm" else 1, mix)


def ratio_sets(proposal: dict) -> list[str]:
    ratios = ", ".join(repr(r) for r in proposal["compression_ratios"])
    return [f"model.tower_compression_ratios=[{ratios}]"]


def ranked(rows: list[dict]) -> list[tuple[str, float]]:
    """-> (variant, mean AUC over its seeds), best first (ties: first listed)."""
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r["variant"], []).append(r["auc"])
    return sorted(((v, statistics.fmean(a)) for v, a in means.items()), key=lambda va: -va[1])


def best(rows: list[dict]) -> tuple[str, float]:
    """-> (variant, mean AUC) with the highest mean AUC over its seeds (ties: first listed)."""
    return ranked(rows)[0]


class Search:
    """The selection runs of one dataset: `stage` runs candidates on the selection seeds, `tune`
    searches training settings; `rows` gathers every run, labelled with its stage."""

    def __init__(self, dataset: str, commit: str) -> None:
        self.dataset, self.commit, self.rows = dataset, commit, []

    def of(self, variant: str, config: str) -> list[dict]:
        return [r for r in self.rows if r["variant"] == variant and r["config"] == config]

    def stage(
        self, label: str, config: str, group: str, variants: dict[str, list[str]], reuse: dict | None = None
    ) -> str:
        """Run each candidate {name: sets} as group/name on every seed; `reuse` {name: rows}: candidates
        an earlier stage measured already. -> the winner's name."""
        jobs = [
            Job(self.dataset, config, f"{group}/{v}", s, "validation", tuple(sets))
            for v, sets in variants.items()
            for s in SELECTION_SEEDS[self.dataset]
        ]
        got = run_all(jobs, self.commit)
        got += [{**r, "variant": f"{group}/{name}"} for name, rs in (reuse or {}).items() for r in rs]
        for r in got:
            r["stage"] = label
        self.rows.extend(got)
        return best(got)[0].split("/", 1)[1]

    def tune(
        self,
        kind: str,
        config: str,
        group: str,
        base: list[str],
        measured: list[dict],
        start: tuple | None = None,
        grids: tuple[tuple, tuple] | None = None,
    ) -> list[str]:
        """Coordinate search over training settings from `start` (steps, embedding lr, dense lr; default
        DEFAULT_TRAIN): steps at start's rates, then the rates at the chosen steps -> base + the chosen
        settings' --set items. measured: runs of base at `start` (reused), if any; grids: (steps,
        rates), default STEPS and RATES of the dataset."""
        steps0, emb0, dense0 = start or DEFAULT_TRAIN[self.dataset]
        step_grid, rate_grid = grids or (STEPS[self.dataset], RATES[self.dataset])
        first = {train_name((n, emb0, dense0)): (n, emb0, dense0) for n in sorted({*step_grid, steps0})}
        reuse = {train_name((steps0, emb0, dense0)): measured} if measured else {}
        todo = {k: [*base, *train_sets(t)] for k, t in first.items() if k not in reuse}
        steps = first[self.stage(f"{kind}_steps", config, group, todo, reuse)][0]
        second = {train_name((steps, e, d)): (steps, e, d) for e, d in [*rate_grid, (emb0, dense0)]}
        done = train_name((steps, emb0, dense0))
        reuse = {done: self.of(f"{group}/{done}", config)}
        todo = {k: [*base, *train_sets(t)] for k, t in second.items() if k != done}
        return [*base, *train_sets(second[self.stage(f"{kind}_rates", config, group, todo, reuse)])]

    def spend(
        self, label: str, config: str, distinct: dict[str, dict], measured: list[dict], before: list, after: list
    ) -> tuple[str, list[dict]]:
        """The budget stage: each mix of `distinct` but mix 1 (uniform, measured already: `measured`)
        as --set items [*before, its ratios, *after] -> (the winning mix, its rows); no stage where
        mix 1 is alone."""
        others = {n: [*before, *ratio_sets(p), *after] for n, p in distinct.items() if n != "mix1"}
        if not others:
            return "mix1", measured
        mix = self.stage(label, config, label, others, {"mix1": measured})
        return mix, self.of(f"{label}/{mix}", config)


def distinct_budgets(dataset: str, family: str, towers: str | None = None) -> dict[str, dict]:
    """{mix name: proposal} of MIXES on towers file `towers`; mixes that give the same widths are one."""
    distinct: dict[str, dict] = {}
    for m in MIXES:
        p = budget_ratios(dataset, family, m, towers=towers)
        if all(p["tower_widths"] != q["tower_widths"] for q in distinct.values()):
            distinct[f"mix{m:g}"] = p
    return distinct


def select(dataset: str, commit: str) -> tuple[list[dict], dict]:
    """Run (or read back) every selection stage of one dataset -> (rows, choices per family)."""
    search = Search(dataset, commit)
    choices: dict[str, dict] = {}
    for family in FAMILIES:
        flat_sets = search.tune("flat", family, "flat", [], [])
        default = train_sets(DEFAULT_TRAIN[dataset])
        uniform = budget_ratios(dataset, family, 1.0)
        modules = {m: MODULES[family][m] for m in screened(dataset, family, commit)}
        dmt = f"dmt_{family}"
        module = search.stage(
            "module", dmt, "module", {m: [*sets, *default, *ratio_sets(uniform)] for m, sets in modules.items()}
        )
        chosen = MODULES[family][module]
        distinct = distinct_budgets(dataset, family)
        measured = search.of(f"module/{module}", dmt)  # mix 1 (uniform): the module stage's winner
        mix, measured = search.spend("budget", dmt, distinct, measured, [*chosen, *default], [])
        dmt_sets = search.tune("dmt", dmt, "train", [*chosen, *ratio_sets(distinct[mix])], measured)
        choices[family] = {
            "flat_sets": flat_sets,
            "module": module,
            "towers": TOWERS[dataset],
            "budget": {"mix": mix, **distinct[mix]},
            "dmt_sets": dmt_sets,
        }
    return search.rows, choices


def chosen_training(sets: list[str]) -> tuple[int, float, float]:
    """(steps, embedding lr, dense lr) of a choice's --set items."""
    got = dict(item.split("=", 1) for item in sets)
    return int(got["train.steps"]), float(got["train.embedding_lr"]), float(got["train.dense_lr"])


def select_round2(dataset: str, commit: str, choices: dict) -> tuple[list[dict], dict]:
    """The second round (after the first final), from `select`'s choices -> (rows, choices):

    1. flat: training settings again from its choice, on the ROUND2 grids;
    2. towers: the chosen Tower Module at its chosen training settings and uniform CR 4 on the data's
       TP towers (TOWERS) and on the TP towers of flat DLRM's and flat DCN's learned interactions
       (`learned_towers`); where learned towers win, the budget stage again on them;
    3. DMT: training settings again from its choice, on the ROUND2 grids.
    A candidate the first round ran has the same command and is read back."""
    search = Search(dataset, commit)
    grids = ROUND2_GRIDS[dataset]
    candidates = {"tp_data": TOWERS[dataset]}
    for source in TOWER_SOURCES:
        name = learned_towers(dataset, source, choices[source]["flat_sets"], commit)
        seen = [sorted(map(sorted, towers_file(dataset, n)["towers"])) for n in candidates.values()]
        if sorted(map(sorted, towers_file(dataset, name)["towers"])) not in seen:
            candidates[f"tp_{source}"] = name
    out = {}
    for family in FAMILIES:
        c, dmt = choices[family], f"dmt_{family}"
        flat_sets = search.tune("round2_flat", family, "flat", [], [], chosen_training(c["flat_sets"]), grids)
        module, start = MODULES[family][c["module"]], chosen_training(c["dmt_sets"])
        variants = {
            k: [*module, *towers_sets(dataset, n), *ratio_sets(budget_ratios(dataset, family, 1.0, towers=n))]
            for k, n in candidates.items()
        }
        won = search.stage("towers", dmt, "towers", {k: [*v, *train_sets(start)] for k, v in variants.items()})
        towers, budget = candidates[won], c["budget"]
        base = [item for item in c["dmt_sets"] if not item.startswith("train.")]  # the first round's: read back
        group, measured = "train", []
        if towers != TOWERS[dataset]:
            place = [*module, *towers_sets(dataset, towers)]
            distinct = distinct_budgets(dataset, family, towers)
            measured = search.of(f"towers/{won}", dmt)
            mix, measured = search.spend("towers_budget", dmt, distinct, measured, place, train_sets(start))
            base, group, budget = [*place, *ratio_sets(distinct[mix])], "towers_train", {"mix": mix, **distinct[mix]}
        dmt_sets = search.tune("round2_dmt", dmt, group, base, measured, start, grids)
        out[family] = {**c, "flat_sets": flat_sets, "towers": towers, "budget": budget, "dmt_sets": dmt_sets}
    return search.rows, out


def final(dataset: str, commit: str) -> list[dict]:
    """The committed configs on the test split with the fresh seeds (run once at the end)."""
    jobs = [Job(dataset, c, "final", s, "test") for c in CONFIGS for s in FINAL_SEEDS[dataset]]
    return run_all(jobs, commit)


def resplit(dataset: str, commit: str) -> list[dict]:
    """The committed configs on the test split of another split of the rows, with unused seeds."""
    sets = (f"data.seed={RESPLIT_DATA_SEED}",)
    jobs = [Job(dataset, c, "resplit", s, "test", sets) for c in CONFIGS for s in RESPLIT_SEEDS[dataset]]
    return run_all(jobs, commit)


def paired(rows: list[dict]) -> list[dict]:
    """Final rows -> per dataset and family: DMT - flat test AUC per seed, mean, std, 95% t interval."""
    from scipy.stats import t as student

    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for family in FAMILIES:
            by = {(r["config"], r["seed"]): r for r in rows if r["dataset"] == dataset}
            seeds = sorted(s for (c, s) in by if c == family and (f"dmt_{family}", s) in by)
            if not seeds:
                continue
            flat = [by[(family, s)]["auc"] for s in seeds]
            dmt = [by[(f"dmt_{family}", s)]["auc"] for s in seeds]
            diff = [b - a for a, b in zip(flat, dmt, strict=True)]
            mean = statistics.fmean(diff)
            sd = statistics.stdev(diff) if len(diff) > 1 else 0.0
            half = student.ppf(0.975, len(diff) - 1) * sd / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            out.append(
                {
                    "dataset": dataset,
                    "family": family,
                    "seeds": seeds,
                    "flat_auc": flat,
                    "dmt_auc": dmt,
                    "flat_mean": statistics.fmean(flat),
                    "dmt_mean": statistics.fmean(dmt),
                    "diff": diff,
                    "diff_mean": mean,
                    "diff_std": sd,
                    "ci95": [mean - half, mean + half],
                    "optimal_auc": by[(family, seeds[0])].get("optimal_auc"),
                }
            )
    return out
