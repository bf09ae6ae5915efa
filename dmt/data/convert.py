"""`dmt data convert`: Criteo TSV files -> Parquet or TorchRec-layout npy day files, parsed and hashed once.

    dmt data convert --config C [--set ...] --to parquet --out DIR

reads the config's `criteo_tsv` train and test files with the rules of dmt/data/criteo.py (the
same hashing into `data.table_sizes`, log(1 + x) dense values, the `data.malformed` policy) and writes

    parquet   DIR/train/part-NNNNN.parquet, DIR/test/part-NNNNN.parquet: columns label (int8),
              dense_0.. (float32, already log(1 + x)), cat_0.. (int32 ids, already hashed); part k holds
              input lines [k * rows_per_part, (k + 1) * rows_per_part) minus malformed ones, in row
              groups of `row_group_rows` rows
    npy       DIR/day_N_{dense,sparse,labels}.npy, one day per input file: train files are days
              0 .. T-1, test files the days after

Reading the result gives the same batches as reading the TSV files (on files without malformed
rows; a skipped row no longer leaves its batch one row short): `data.source = "parquet"` with the
train and test folders, or `"criteo_npy"` with DIR and the day lists; the command prints the
`--set` arguments. DIR/manifest.json records the input (paths, sizes, modification times, the
settings) and each finished part or day, written atomically after it: running the same command
again continues where it stopped, and refuses a DIR that holds the conversion of other input.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from dmt.config import DataConfig
from dmt.data.criteo import CriteoTsvSource, LineSequence, MalformedCount
from dmt.errors import UserError

READ_LINES = 1 << 16  # input lines parsed at a time


@dataclass
class Converted:
    """What one `convert` call did."""

    out: Path
    to: str
    rows: dict[str, int] = field(default_factory=dict)  # good rows written per split (all parts, also earlier runs)
    malformed_rows: dict[str, int] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)  # parts / days written by this call
    skipped: list[str] = field(default_factory=list)  # already there from an earlier call
    read_with: list[str] = field(default_factory=list)  # --set arguments that read the result


def _fingerprint(cfg: DataConfig, src: CriteoTsvSource, to: str, rows_per_part: int, row_group_rows: int) -> dict:
    def files(paths: list[Path]) -> list:
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]

    return {
        "to": to,
        "train": files(src.train_paths),
        "test": files(src.test_paths),
        "num_dense": cfg.num_dense,
        "num_sparse": cfg.num_sparse,
        "table_sizes": list(cfg.table_sizes),
        "malformed": cfg.malformed,
        "rows_per_part": rows_per_part if to == "parquet" else None,
        "row_group_rows": row_group_rows if to == "parquet" else None,
    }


class Manifest:
    """DIR/manifest.json: the input's fingerprint and the finished units, rewritten atomically."""

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.path = out / "manifest.json"
        if self.path.is_file():
            state = json.loads(self.path.read_text())
            if state.get("input") != fingerprint:
                raise UserError(
                    f"{out} holds a conversion of other input or settings (see {self.path}); "
                    "choose another --out or delete it"
                )
            self.state = state
        else:
            self.state = {"input": fingerprint, "done": {}}

    def done(self, unit: str, out: Path) -> dict | None:
        entry = self.state["done"].get(unit)
        return entry if entry is not None and all((out / f).is_file() for f in entry["files"]) else None

    def finish(self, unit: str, entry: dict) -> None:
        self.state["done"][unit] = entry
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.path)


def _parsed(src: CriteoTsvSource, seq: LineSequence, lo: int, hi: int, count: MalformedCount, bar: tqdm):
    """(dense [n, D], ids [S, n], labels [n]) of lines [lo, hi) in chunks of READ_LINES lines."""
    readers = seq.readers()
    try:
        for start in range(lo, hi, READ_LINES):
            end = min(start + READ_LINES, hi)
            pieces = src.read(seq, readers, start, end, cycle=False)
            src.account(pieces, count)  # data.malformed: count them, or stop at file:line
            for p in pieces:
                yield p.rows.dense, p.rows.ids, p.rows.labels
            bar.update(end - start)
    finally:
        readers.close()


def _table(dense: np.ndarray, ids: np.ndarray, labels: np.ndarray, id_type: pa.DataType) -> pa.Table:
    cols = {"label": pa.array(labels.astype(np.int8))}
    cols.update({f"dense_{j}": pa.array(dense[:, j]) for j in range(dense.shape[1])})
    cols.update({f"cat_{j}": pa.array(ids[j], type=id_type) for j in range(ids.shape[0])})
    return pa.table(cols)


def convert(
    cfg: DataConfig,
    out: str | Path,
    to: str = "parquet",
    rows_per_part: int = 1_000_000,
    row_group_rows: int = 1024,
    progress: bool = True,
) -> Converted:
    """Convert the config's TSV files into `out`; see the module docstring."""
    if cfg.source != "criteo_tsv":
        raise UserError(f"dmt data convert reads data.source = 'criteo_tsv' files, got '{cfg.source}'")
    if to not in ("parquet", "npy"):
        raise UserError(f"--to must be parquet or npy, got '{to}'")
    if rows_per_part < 1 or row_group_rows < 1:
        raise UserError(f"--rows-per-part and --row-group-rows must be >= 1, got {rows_per_part}, {row_group_rows}")
    out = Path(out)
    src = CriteoTsvSource(cfg)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, _fingerprint(cfg, src, to, rows_per_part, row_group_rows))
    result = Converted(out, to)
    id_type = pa.int32() if max(f.num_embeddings for f in src.features) <= 2**31 else pa.int64()
    days = {"train": [], "test": []}
    day = 0
    for split, seq in (("train", src.train), ("test", src.test)):
        units = _parquet_units(seq, split, rows_per_part) if to == "parquet" else []
        if to == "npy":
            for f, file in enumerate(seq.files):
                units.append((f"day_{day}", int(seq.starts[f]), int(seq.starts[f]) + file.lines))
                days[split].append(day)
                day += 1
        bar = tqdm(total=seq.total, desc=f"convert {split}", unit="row", disable=not progress, leave=False)
        rows = bad = 0
        for unit, lo, hi in units:
            entry = manifest.done(unit, out)
            if entry is None:
                count = MalformedCount()
                parsed = _parsed(src, seq, lo, hi, count, bar)
                if to == "parquet":
                    empty = _table(
                        np.zeros((0, cfg.num_dense), np.float32),
                        np.zeros((cfg.num_sparse, 0), np.int64),
                        np.zeros(0, np.float32),
                        id_type,
                    )
                    entry = _write_part(out, unit, parsed, row_group_rows, empty, id_type)
                else:
                    entry = _write_day(out, unit, parsed, hi - lo, cfg.num_dense, cfg.num_sparse, id_type)
                entry["malformed_rows"] = count.rows
                manifest.finish(unit, entry)
                result.written.append(unit)
            else:
                bar.update(hi - lo)
                result.skipped.append(unit)
            rows += entry["rows"]
            bad += entry["malformed_rows"]
        bar.close()
        result.rows[split], result.malformed_rows[split] = rows, bad
    sizes = f"data.table_sizes={json.dumps(list(cfg.table_sizes))}"
    if to == "parquet":
        result.read_with = [
            "data.source=parquet",
            f"data.train_path={out / 'train'}",
            f"data.test_path={out / 'test'}",
            sizes,
        ]
    else:
        result.read_with = [
            "data.source=criteo_npy",
            f"data.train_path={out}",
            f"data.train_days={json.dumps(days['train'])}",
            f"data.test_days={json.dumps(days['test'])}",
            f"data.num_dense={cfg.num_dense}",
            f"data.num_sparse={cfg.num_sparse}",
            sizes,
        ]
    return result


def _parquet_units(seq: LineSequence, split: str, rows_per_part: int) -> list[tuple[str, int, int]]:
    count = max(1, -(-seq.total // rows_per_part))
    return [
        (f"{split}/part-{k:05d}.parquet", k * rows_per_part, min((k + 1) * rows_per_part, seq.total))
        for k in range(count)
    ]


def _write_part(out: Path, unit: str, parsed, row_group_rows: int, empty: pa.Table, id_type: pa.DataType) -> dict:
    """Rows of one part into out/unit (via a temporary file), in row groups of exactly row_group_rows rows."""
    path = out / unit
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer, held, rows = None, [], 0

    def flush(tables: list[pa.Table]) -> None:
        nonlocal writer
        table = pa.concat_tables(tables)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=row_group_rows)

    for dense, ids, labels in parsed:
        if not labels.size:
            continue
        held.append(_table(dense, ids, labels, id_type))
        rows += labels.size
        pending = sum(t.num_rows for t in held)
        if pending >= row_group_rows:
            table = pa.concat_tables(held)
            whole = pending - pending % row_group_rows
            flush([table.slice(0, whole)])
            held = [table.slice(whole)] if whole < pending else []
    if held or writer is None:
        flush(held or [empty])
    writer.close()
    os.replace(tmp, path)
    return {"files": [unit], "rows": rows}


def _write_day(out: Path, unit: str, parsed, lines: int, num_dense: int, num_sparse: int, id_type) -> dict:
    """One day's rows into out/unit_{dense,sparse,labels}.npy (memory-mapped, then trimmed to the good rows)."""
    names = {k: f"{unit}_{k}.npy" for k in ("dense", "sparse", "labels")}
    dtype = np.int32 if id_type == pa.int32() else np.int64
    shapes = {
        "dense": ((lines, num_dense), np.float32),
        "sparse": ((lines, num_sparse), dtype),
        "labels": ((lines, 1), np.int32),
    }
    tmp = {k: out / (names[k] + ".tmp") for k in names}
    arrays = {k: np.lib.format.open_memmap(tmp[k], mode="w+", dtype=t, shape=s) for k, (s, t) in shapes.items()}
    rows = 0
    for dense, ids, labels in parsed:
        n = labels.size
        arrays["dense"][rows : rows + n] = dense
        arrays["sparse"][rows : rows + n] = ids.T
        arrays["labels"][rows : rows + n, 0] = labels
        rows += n
    for k, a in arrays.items():
        if rows < lines:  # malformed rows were dropped: write the good rows only
            (s, t) = shapes[k]
            final = np.lib.format.open_memmap(out / (names[k] + ".trim"), mode="w+", dtype=t, shape=(rows, *s[1:]))
            final[:] = a[:rows]
            final.flush()
            del final
            tmp[k].unlink()
            os.replace(out / (names[k] + ".trim"), out / names[k])
        else:
            a.flush()
            os.replace(tmp[k], out / names[k])
    del arrays
    return {"files": list(names.values()), "rows": rows}
