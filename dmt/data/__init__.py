"""Data sources by name (`data.source`)."""

from __future__ import annotations

from dmt.config import DataConfig
from dmt.data.base import DataSource, FeatureSpec

__all__ = ["DataSource", "FeatureSpec", "make_source"]


def make_source(cfg: DataConfig) -> DataSource:
    if cfg.source == "synthetic":
        from dmt.data.synthetic import SyntheticSource

        return SyntheticSource(cfg)
    raise ValueError(f"unknown data.source {cfg.source!r}")  # the config's Literal type prevents this
