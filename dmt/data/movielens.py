"""MovieLens-100k: will a user rate a movie 4 or 5 stars?

Read from the `recbole==1.2.1` wheel's `recbole/dataset_example/ml-100k/` folder (found without
importing recbole; research-only licence: read, never commit), or from `data.data_dir`: the
tab-separated ml-100k.inter (user, item, rating, timestamp), ml-100k.user and ml-100k.item files.

Rows: the 100,000 ratings. Label: rating >= 4 (55.4% positive). Split: seeded random 80/10/10 over
ratings (`data.seed`, `data.val_fraction`, `data.test_fraction`); vocabularies and dense scaling
are fitted on train.

    categorical (10): user, item, genre (multi-hot: the movie's 1-6 genres), occupation, gender,
        age_bucket (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), zip_prefix (first two characters
        of the zip code), release_year, weekday and hour (UTC) of the rating
    dense (3): age, release_year, rating_time (the timestamp), standardised on train

Each categorical has its own table; id 0 means missing or unseen in train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmt.config import DataConfig
from dmt.data.tabular import (
    InMemorySource,
    Table,
    encode_categorical,
    encode_multi,
    package_folder,
    pooling_factor,
    require,
    split_rows,
    standardize,
)
from dmt.errors import UserError
from dmt.specs import FeatureSpec

INSTALL = "pip install --no-deps recbole==1.2.1"
CATEGORICAL = [
    "user",
    "item",
    "genre",
    "occupation",
    "gender",
    "age_bucket",
    "zip_prefix",
    "release_year",
    "weekday",
    "hour",
]
DENSE = ["age", "release_year", "rating_time"]
AGE_EDGES = [18, 25, 35, 45, 50, 56]


def read_atomic(path: Path, columns: list[str]) -> dict[str, list[str]]:
    """A RecBole atomic file (tab-separated, header "name:type ...") -> the named columns' strings."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column(s) {missing} in the header {header}")
        idx = [header.index(c) for c in columns]
        out: dict[str, list[str]] = {c: [] for c in columns}
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                raise UserError(f"{path}:{lineno}: {len(fields)} fields, the header has {len(header)}")
            for c, i in zip(columns, idx, strict=True):
                out[c].append(fields[i])
    return out


def _float(col: list[str], path: Path, name: str) -> np.ndarray:
    try:
        return np.array([float(x) if x else np.nan for x in col])
    except ValueError as e:
        raise UserError(f"{path}: column {name}: {e}") from None


def rating_columns(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, list[list[str]]], dict, np.ndarray]:
    """Raw joined columns of the ratings.

    -> categorical name -> strings [n] ("" = missing), multi-hot name -> token lists [n],
       dense name -> float64 [n] (NaN = missing), rating float64 [n].
    """
    inter_path, user_path, item_path = (require(folder, f"ml-100k.{k}") for k in ("inter", "user", "item"))
    inter = read_atomic(inter_path, ["user_id", "item_id", "rating", "timestamp"])
    users = read_atomic(user_path, ["user_id", "age", "gender", "occupation", "zip_code"])
    items = read_atomic(item_path, ["item_id", "release_year", "class"])
    user_row = {u: i for i, u in enumerate(users["user_id"])}
    item_row = {m: i for i, m in enumerate(items["item_id"])}
    u = np.array([user_row.get(x, -1) for x in inter["user_id"]])
    m = np.array([item_row.get(x, -1) for x in inter["item_id"]])
    for ids, rows, path in ((inter["user_id"], u, user_path), (inter["item_id"], m, item_path)):
        if (rows < 0).any():
            raise UserError(f"{inter_path}: id {ids[int(np.flatnonzero(rows < 0)[0])]} is not in {path}")

    age = _float(users["age"], user_path, "age")[u]
    year = np.array([float(y) if y.isdigit() else np.nan for y in items["release_year"]])[m]  # one says "unkonwn"
    when = _float(inter["timestamp"], inter_path, "timestamp")
    seconds = when.astype(np.int64)
    bucket = np.searchsorted(AGE_EDGES, age, side="right")
    zips = np.array([z[:2] for z in users["zip_code"]], dtype=str)[u]
    cat = {
        "user": np.array(inter["user_id"], dtype=str),
        "item": np.array(inter["item_id"], dtype=str),
        "occupation": np.array(users["occupation"], dtype=str)[u],
        "gender": np.array(users["gender"], dtype=str)[u],
        "age_bucket": np.where(np.isnan(age), "", bucket.astype(str)),
        "zip_prefix": zips,
        "release_year": np.where(np.isnan(year), "", np.nan_to_num(year).astype(np.int64).astype(str)),
        "weekday": ((seconds // 86400 + 3) % 7).astype(str),  # 1970-01-01 was a Thursday; 0 = Monday
        "hour": (seconds // 3600 % 24).astype(str),
    }
    genres = [items["class"][i].split() for i in m]
    dense = {"age": age, "release_year": year, "rating_time": when}
    return cat, {"genre": genres}, dense, _float(inter["rating"], inter_path, "rating")


class MovieLensSource(InMemorySource):
    """Rating >= 4 prediction on MovieLens-100k; see the module docstring."""

    def __init__(self, cfg: DataConfig) -> None:
        folder = package_folder("recbole", "dataset_example/ml-100k", cfg.data_dir, INSTALL)
        cat, multi, dense, rating = rating_columns(folder)
        labels = (rating >= 4).astype(np.float32)
        splits = split_rows(len(labels), cfg.seed, cfg.val_fraction, cfg.test_fraction)
        fit = splits["train"]
        ids, features = [], []
        for name in CATEGORICAL:
            m, size = encode_multi(multi[name], fit) if name in multi else encode_categorical(cat[name], fit)
            ids.append(m)
            features.append(FeatureSpec(name, name, size, pooling_factor(m)))
        x = standardize(np.stack([dense[k] for k in DENSE], 1), fit)
        table = Table(x, ids, labels)
        super().__init__(cfg, features, list(DENSE), {k: table.take(v) for k, v in splits.items()})
