"""Per-feature costs that a tower's load is the sum of, and must-link items (shared tables).

Cost components (per feature f of width d):
    pooled_width  d                                  (bytes each sample sends out of the tower)
    ids           pooling_factor                     (ids per sample: lookup and id traffic)
    table_bytes   rows * d * 4 / (features sharing the table)   (memory of the host)
A spec is one name ("ids") or a weighted mix "ids=1,table_bytes=0.5"; in a mix each component
is first divided by its total over all features, so the weights compare like with like.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from dmt.errors import UserError
from dmt.specs import FeatureSpec

COMPONENTS = ("pooled_width", "ids", "table_bytes")


def parse_cost(spec: str) -> dict[str, float]:
    """'ids' -> {'ids': 1.0}; 'ids=1,table_bytes=0.5' -> {'ids': 1.0, 'table_bytes': 0.5}."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in COMPONENTS:
            raise UserError(
                f"--cost: unknown component '{name}'; allowed: {', '.join(COMPONENTS)} (or a mix a=1,b=0.5)"
            )
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"--cost: weight of '{name}' must be a number, got '{weight}'") from None
        if value < 0 or not np.isfinite(value):
            raise UserError(f"--cost: weight of '{name}' must be finite and >= 0, got {weight}")
        out[name] = out.get(name, 0.0) + value
    if not out or sum(out.values()) <= 0:
        raise UserError(f"--cost: need at least one component with a positive weight, got '{spec}'")
    return out


def component(features: list[FeatureSpec], name: str, embedding_dim: int) -> np.ndarray:
    """One cost component -> [F]."""
    if name == "pooled_width":
        return np.full(len(features), float(embedding_dim))
    if name == "ids":
        return np.array([f.pooling_factor for f in features], dtype=np.float64)
    sharing = Counter(f.table for f in features)
    return np.array([f.num_embeddings * embedding_dim * 4.0 / sharing[f.table] for f in features])


def feature_costs(features: list[FeatureSpec], spec: dict[str, float], embedding_dim: int) -> np.ndarray:
    """Cost of each feature [F] under a parsed spec (a single component keeps its own units)."""
    if len(spec) == 1:
        return component(features, next(iter(spec)), embedding_dim)
    total = np.zeros(len(features))
    for name, weight in spec.items():
        values = component(features, name, embedding_dim)
        total += weight * values / values.sum()
    return total


def items_of(features: list[FeatureSpec]) -> list[list[int]]:
    """Must-link items: feature indices grouped by table, ordered by their first feature."""
    by_table: dict[str, list[int]] = {}
    for i, f in enumerate(features):
        by_table.setdefault(f.table, []).append(i)
    return sorted(by_table.values(), key=lambda item: item[0])
