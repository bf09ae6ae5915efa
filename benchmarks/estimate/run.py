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


def main() -> None:
    out = Path("runs/bench_estimate/estimate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    dmt(["estimate", *ARGS, "--plot", "--out", str(out)])
    estimate = json.loads(out.read_text())
    shutil.copyfile(out.with_suffix(".png"), CHART)
    result = {**provenance(), "dmt_estimate_args": ARGS, "estimate": estimate}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    gb, ms = 1e9, 1e3
    lines = [
        "# `dmt estimate`: paper-like DLRM on 8 x 8 H100",
        "",
        *provenance_lines(
            result, " (a prediction: no GPU involved)", f" (runs `dmt estimate {' '.join(ARGS)} --plot`)"
        ),
        "",
        "| mode | cross-host GB per GPU and step | communication ms per step |",
        "|---|---|---|",
        *[
            f"| {m} | {estimate[m]['cross_host_bytes'] / gb:.2f} | {estimate[m]['comm_s'] * ms:.1f} |"
            for m in ("flat", "sptt", "sptt_tm")
        ],
        "",
        f"Speedup of SPTT + Tower Modules over flat: {json.dumps(estimate['speedup']['sptt_tm_over_flat'])}",
        "",
        f"Chart: `{CHART.relative_to(HERE.parents[1])}`",
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
