"""The README's prediction: `dmt estimate` for a paper-like DLRM on 8 x 8 H100, with its chart.

    .venv/bin/python -m benchmarks.estimate.run

Writes results.json (the estimate's own JSON), results.md here and docs/estimate_h100_paper_dlrm.png.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.common import provenance, provenance_lines
from dmt.cli import main as dmt

HERE = Path(__file__).parent
CHART = HERE.parents[1] / "docs" / "estimate_h100_paper_dlrm.png"
ARGS = ["--preset", "h100", "--hosts", "8", "--ranks-per-host", "8", "--config", "dmt/configs/paper_dlrm.toml"]


SCAN = [(preset, cr) for preset in ("h100", "a100", "v100") for cr in (4, 8)]


def scan() -> dict:
    """End-to-end speedup of SPTT + TM over flat, 8 GPUs per host, for each preset and ratio."""
    from dmt.config import load_config
    from dmt.cost.estimate import SCALING_GPUS, Estimator, scaling
    from dmt.cost.presets import cluster

    out = {}
    for preset, cr in SCAN:
        est = Estimator(load_config("dmt/configs/paper_dlrm.toml", [f"model.compression_ratio={cr}"]), cluster(preset))
        rows = scaling(est, 8, SCALING_GPUS)
        out[f"{preset} cr{cr}"] = {
            r["gpus"]: (r["speedup"] or {}).get("sptt_tm_over_flat", {}).get("step") for r in rows if r.get("speedup")
        }
    return out


def main() -> None:
    out = Path("runs/bench_estimate/estimate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    dmt(["estimate", *ARGS, "--plot", "--out", str(out)])
    estimate = json.loads(out.read_text())
    shutil.copyfile(out.with_suffix(".png"), CHART)
    result = {**provenance(), "dmt_estimate_args": ARGS, "estimate": estimate, "scan": scan()}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    gb, ms = 1e9, 1e3
    e2e = estimate["end_to_end"]
    lines = [
        "# `dmt estimate`: paper-like DLRM on 8 x 8 H100",
        "",
        *provenance_lines(
            result, " (a prediction: no GPU involved)", f" (runs `dmt estimate {' '.join(ARGS)} --plot`)"
        ),
        "",
        "| mode | cross-host GB per GPU and step | communication ms | step ms (end to end) | compute ms "
        "| exposed communication ms | overlap ms | examples/s |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {m} | {estimate[m]['cross_host_bytes'] / gb:.2f} | {estimate[m]['comm_s'] * ms:.1f} "
            f"| {e2e[m]['step_s'] * ms:.1f} | {e2e[m]['compute_s'] * ms:.1f} | {e2e[m]['exposed_comm_s'] * ms:.1f} "
            f"| {e2e[m]['overlap_s'] * ms:.1f} | {estimate[m]['examples_per_s']:,.0f} |"
            for m in ("flat", "sptt", "sptt_tm")
        ],
        "",
        "Speedup of SPTT + Tower Modules over flat: "
        f"{estimate['speedup']['sptt_tm_over_flat']['step']:.2f}x end to end, "
        f"{estimate['speedup']['sptt_tm_over_flat']['comm']:.2f}x in communication alone",
        "",
        "## End-to-end speedup of SPTT + TM over flat by cluster size (8 GPUs per host)",
        "",
        "The same config with compression ratio 4 (as shipped) or 8, on each preset. A size left out or a "
        "cell `-`: the cost model refuses that layout, because the ratio's budget holds fewer whole "
        "128-float units than the cluster has towers (one per host), or, at 4096 GPUs, there are more hosts "
        "than features (`dmt estimate` prints the reason).",
        "",
    ]
    gpus = sorted({int(g) for row in result["scan"].values() for g in row})
    lines += ["| preset | " + " | ".join(str(g) for g in gpus) + " |", "|---|" + "---|" * len(gpus)]
    for name, row in result["scan"].items():
        cells = [f"{row[g]:.2f}x" if row.get(g) else "-" for g in gpus]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Chart: `{CHART.relative_to(HERE.parents[1])}`"]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
