"""results.json -> results.md: the final paired differences and those on another split, every
selection stage, the CR sweep and the SPTT check, each under its own Command / Commit / Machine lines."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import provenance_lines

MACHINE = ", OMP_NUM_THREADS=1, nice 10, two runs at a time"
BOUND = {"nycflights13": 0.001, "movielens100k": 0.001, "synthetic": 0.002}  # the acceptance bounds
ORDER = {"nycflights13": 0, "movielens100k": 1, "synthetic": 2}


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def _groups(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (ORDER.get(kv[0][0], 9), *map(str, kv[0][1:]))))


def _floats(rows: list[dict]) -> str:
    w = rows[0].get("tower_widths")
    return "-" if w is None else f"{sum(w)} ({'+'.join(map(str, w))})"


def _seeds(seeds: list[int] | dict[str, list[int]]) -> str:
    """Final seeds, one list for every dataset or one per dataset."""
    if isinstance(seeds, list):
        return str(seeds)
    return "; ".join(f"{ds}: {s}" for ds, s in sorted(seeds.items(), key=lambda kv: ORDER.get(kv[0], 9)))


def final_lines(final: dict) -> list[str]:
    about = f"train.seed in {_seeds(final['seeds'])} (no choice used them); data.seed 1234 (one split)."
    return paired_lines(final, "## Final: test split, fresh seeds, committed configs, run once", about)


def resplit_lines(resplit: dict) -> list[str]:
    about = (
        f"train.seed in {_seeds(resplit['seeds'])} (no run used them before); data.seed {resplit['data_seed']}: "
        "another random 80/10/10 split of the rows than the one (1234) that every choice and both finals used. "
        "Nothing was chosen from these runs."
    )
    title = f"## Resplit: the committed configs on another split of the rows (data.seed {resplit['data_seed']}), test"
    return paired_lines(resplit, title, about)


def paired_lines(stage: dict, title: str, about: str) -> list[str]:
    """A stage of committed configs on the test split (final, resplit): DMT - flat paired by seed."""
    lines = [
        title,
        "",
        *provenance_lines(stage, MACHINE),
        "",
        f"{about} "
        "Δ: DMT minus flat of the same family and seed; the 95% interval is Student's t over the paired seeds. "
        "Bound: the issue's "
        "acceptance (mean Δ at least minus it). Cross-host floats: what the Tower Modules send per sample "
        "(flat sends every pooled embedding: 16 per feature).",
        "",
        "| dataset | family | flat test AUC | DMT test AUC | Δ AUC (paired mean) | 95% interval | per-seed Δ "
        "| bound | met | DMT cross-host floats / sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_config = _groups(stage["runs"], "dataset", "config")
    for p in sorted(stage["pairs"], key=lambda p: (ORDER[p["dataset"]], p["family"])):
        bound = BOUND[p["dataset"]]
        dmt_rows = by_config[(p["dataset"], f"dmt_{p['family']}")]
        lines.append(
            f"| {p['dataset']} | {p['family']} | {_ms(p['flat_auc'])} | {_ms(p['dmt_auc'])} | {p['diff_mean']:+.4f} "
            f"| [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] | {' '.join(f'{d:+.4f}' for d in p['diff'])} "
            f"| -{bound:g} | {'yes' if p['diff_mean'] >= -bound else 'no'} | {_floats(dmt_rows)} |"
        )
    synthetic = [p for p in stage["pairs"] if p["dataset"] == "synthetic"]
    if synthetic:
        lines += ["", "Synthetic data, gap to the Bayes-optimal AUC of the test stream:", ""]
        lines += ["| family | optimal AUC | flat gap | DMT gap | DMT gap - flat gap |", "|---|---|---|---|---|"]
        for p in synthetic:
            opt = p["optimal_auc"]
            flat, dmt = opt - p["flat_mean"], opt - p["dmt_mean"]
            lines.append(f"| {p['family']} | {opt:.4f} | {flat:.4f} | {dmt:.4f} | {dmt - flat:+.4f} |")
    return [*lines, ""]


def selection_lines(selection: dict) -> list[str]:
    lines = [
        "## Selection: validation split, selection seeds",
        "",
        *provenance_lines(selection, MACHINE),
        "",
        *[
            line
            for ds, ran in sorted(selection.get("round2", {}).items(), key=lambda kv: ORDER.get(kv[0], 9))
            for line in (f"Second round on {ds} (after the first final):", "", *provenance_lines(ran, MACHINE), "")
        ],
        "Every candidate of every stage (benchmarks/accuracy/protocol.py), mean ± std of validation AUC over the "
        "selection seeds; **bold**: the stage's choice (highest mean). Cross-host floats per sample of the DMT "
        "candidates in the last column.",
        "",
    ]
    for (ds, config, stage), rows in _groups(selection["runs"], "dataset", "config", "stage").items():
        seeds = sorted({r["seed"] for r in rows})
        variants = _groups(rows, "variant")
        chosen = max(variants, key=lambda v: statistics.fmean(r["auc"] for r in variants[v]))
        lines += [f"### {ds}, {config}, stage {stage} (seeds {seeds})", "", "| candidate | validation AUC | floats |"]
        lines.append("|---|---|---|")
        for variant, vr in variants.items():
            name = variant[0].split("/", 1)[1]
            shown = f"**{name}**" if variant == chosen else name
            lines.append(f"| {shown} | {_ms([r['auc'] for r in vr])} | {_floats(vr)} |")
        lines.append("")
    return lines


def grid_lines(grid: dict) -> list[str]:
    lines = [
        "## Compression-ratio sweep: test split, seeds 0-2, committed configs at uniform ratios",
        "",
        *provenance_lines(grid, MACHINE),
        "",
        "`model.compression_ratio=CR model.tower_compression_ratios=[]` on the committed DMT configs; Δ: mean "
        "minus the flat model's mean. A ratio the towers cannot take exactly is refused (listed below).",
        "",
        "| dataset | config | CR | test AUC | Δ AUC | test log loss | cross-host floats / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = _groups(grid["runs"], "dataset", "config", "variant")
    flat = {(k[0], k[1]): statistics.fmean(r["auc"] for r in v) for k, v in groups.items() if k[2] == "flat"}
    order = {"dlrm": 0, "dmt_dlrm": 1, "dcn": 2, "dmt_dcn": 3}
    keys = sorted(groups, key=lambda k: (ORDER[k[0]], order[k[1]], int(k[2][2:]) if k[2] != "flat" else 0))
    for ds, config, variant in keys:
        rows = groups[(ds, config, variant)]
        auc = [r["auc"] for r in rows]
        base = flat.get((ds, config.removeprefix("dmt_")))
        delta = "-" if variant == "flat" or base is None else f"{statistics.fmean(auc) - base:+.4f}"
        cr = "flat" if variant == "flat" else variant[2:]
        lines.append(
            f"| {ds} | {config} | {cr} | {_ms(auc)} | {delta} | {_ms([r['logloss'] for r in rows])} | {_floats(rows)} |"
        )
    if grid.get("refused"):
        lines += ["", "Refused:", ""]
        lines += [f"- {r['dataset']} {r['config']} {r['variant']}: {r['refused']}" for r in grid["refused"]]
    return [*lines, ""]


def sptt_lines(c: dict) -> list[str]:
    s, p = c["single"], c["sptt"]
    return [
        "## SPTT on 2 hosts x 2 ranks against one process",
        "",
        *provenance_lines(c, MACHINE),
        "",
        f"`{p['command']}` (per-rank batch = the one-process batch / 4: the same global batch and data order).",
        "",
        "| run | mode | test AUC | test log loss | wall s |",
        "|---|---|---|---|---|",
        f"| one process | {s['mode']} | {s['auc']:.5f} | {s['logloss']:.5f} | {s['wall_s']:.0f} |",
        f"| SPTT 2x2 | {p['mode']} | {p['auc']:.5f} | {p['logloss']:.5f} | {p['wall_s']:.0f} |",
        "",
        f"Δ AUC {c['delta_auc']:+.5f}.",
        "",
    ]


def write_report(result: dict, path: Path) -> None:
    lines = [
        "# Accuracy of flat and DMT models (one process per run)",
        "",
        "Protocol: [README.md](README.md). Every run's command, commit and numbers: results.json.",
        "",
    ]
    if "final" in result:
        lines += final_lines(result["final"])
    if "resplit" in result:
        lines += resplit_lines(result["resplit"])
    if "selection" in result:
        lines += selection_lines(result["selection"])
    if "grid" in result:
        lines += grid_lines(result["grid"])
    if "sptt_check" in result:
        lines += sptt_lines(result["sptt_check"])
    path.write_text("\n".join(lines))
