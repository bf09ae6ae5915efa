"""The Tower Partitioner's entry point: features + interaction matrix + costs -> K towers.

    I [F, F] --normalise--> S --spectral_embedding--> points [F, dim]
    items (features sharing a table) --mean point, summed cost--> constrained K-Means -> towers

`partition(..., method="tp")` is the learned partition; "sequential", "random" and "greedy" are
the baselines of docs/design.md, section 1. Every method keeps features that share a table in one tower.
The TP load bound is (1 + tolerance) * total cost / K; a bound that no assignment meets is a
UserError that names the smallest feasible bound (the optimum of the min-max-load assignment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dmt.errors import UserError
from dmt.partition import baselines
from dmt.partition.costs import feature_costs, items_of, parse_cost
from dmt.partition.embed import spectral_embedding
from dmt.partition.interaction import normalise
from dmt.partition.kmeans import constrained_kmeans, is_feasible, min_feasible_bound
from dmt.specs import FeatureSpec

METHODS = ("tp", "sequential", "random", "greedy")


@dataclass
class PartitionResult:
    """A partition and what it costs. Towers list feature names in feature order; towers are
    ordered by their first feature."""

    towers: list[list[str]]
    cost_per_tower: list[float]
    imbalance: float  # max / mean - 1 of cost_per_tower
    method: str
    cost: str  # the cost spec, e.g. "ids" or "ids=1,table_bytes=0.5"
    feature_names: list[str]
    feature_costs: list[float]  # [F]
    within_interaction: float | None  # share of the normalised interaction mass inside towers
    bound: float | None = None  # TP's per-tower load bound
    tolerance: float | None = None
    seed: int = 0
    interaction: np.ndarray | None = field(default=None, repr=False)  # normalised S [F, F]

    def labels(self) -> np.ndarray:
        """Tower index of each feature [F] in feature_names order."""
        tower_of = {f: t for t, tower in enumerate(self.towers) for f in tower}
        return np.array([tower_of[f] for f in self.feature_names])

    def to_json(self) -> dict:
        return {
            "towers": self.towers,
            "cost_per_tower": self.cost_per_tower,
            "imbalance": self.imbalance,
            "method": self.method,
            "cost": self.cost,
            "tolerance": self.tolerance,
            "bound": self.bound,
            "within_interaction": self.within_interaction,
            "seed": self.seed,
            "features": self.feature_names,
            "feature_costs": self.feature_costs,
            "interaction": None if self.interaction is None else np.round(self.interaction, 6).tolist(),
        }


def _canonical(spec: dict[str, float]) -> str:
    if len(spec) == 1 and next(iter(spec.values())) == 1.0:
        return next(iter(spec))
    return ",".join(f"{k}={v:g}" for k, v in spec.items())


def check_options(k: int, method: str, tolerance: float, cost: str) -> dict[str, float]:
    """Validate what needs no data (before any expensive work) -> the parsed cost spec."""
    if method not in METHODS:
        raise UserError(f"unknown partition method '{method}'; allowed: {', '.join(METHODS)}")
    if k < 1:
        raise UserError(f"--towers must be >= 1, got {k}")
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    return parse_cost(cost)


def tp_labels(
    similarity: np.ndarray,
    items: list[list[int]],
    loads: np.ndarray,
    k: int,
    bound: float,
    seed: int,
    dim: int | None = None,
    restarts: int = 10,
) -> np.ndarray:
    """similarity [F, F] normalised, items (feature index lists), loads [n_items] -> labels [n_items]."""
    points = spectral_embedding(similarity, dim or k)  # [F, dim]
    item_points = np.stack([points[it].mean(0) for it in items])
    weights = np.array([len(it) for it in items], dtype=np.float64)
    return constrained_kmeans(item_points, weights, loads, k, bound, seed=seed, restarts=restarts).labels


def partition(
    features: list[FeatureSpec],
    k: int,
    method: str = "tp",
    interaction: np.ndarray | None = None,
    cost: str = "ids",
    embedding_dim: int = 16,
    tolerance: float = 0.05,
    seed: int = 0,
    dim: int | None = None,
    restarts: int = 10,
) -> PartitionResult:
    """Split `features` into k towers. interaction: [F, F] in feature order (needed by "tp"; used by
    every method for `within_interaction`). dim: spectral embedding width (default k)."""
    spec = check_options(k, method, tolerance, cost)
    items = items_of(features)
    if k > len(items):
        raise UserError(
            f"--towers must be at most {len(items)} ({len(features)} features in {len(items)} tables), got {k}"
        )
    costs = feature_costs(features, spec, embedding_dim)  # [F]
    loads = np.array([costs[it].sum() for it in items])  # [n_items]
    similarity = None
    if interaction is not None:
        interaction = np.asarray(interaction, dtype=np.float64)
        if interaction.shape != (len(features), len(features)):
            raise ValueError(f"interaction must be [{len(features)}, {len(features)}], got {interaction.shape}")
        similarity = normalise(interaction)
    bound = None
    if method == "tp":
        if similarity is None:
            raise ValueError("method 'tp' needs an interaction matrix")
        bound = (1.0 + tolerance) * loads.sum() / k
        if not is_feasible(loads, k, bound):
            raise UserError(_infeasible_message(loads, k, bound, _canonical(spec), tolerance))
        labels = tp_labels(similarity, items, loads, k, bound, seed, dim, restarts)
    elif method == "sequential":
        labels = baselines.sequential(items, k)
    elif method == "random":
        labels = baselines.random(items, k, seed)
    else:
        labels = baselines.greedy(loads, k)
    return _result(features, items, labels, k, costs, similarity, method, _canonical(spec), bound, tolerance, seed)


def _infeasible_message(loads: np.ndarray, k: int, bound: float, cost: str, tolerance: float) -> str:
    lower, upper = min_feasible_bound(loads, k)
    smallest = (
        f"{upper:.6g}" if lower >= upper * (1 - 1e-9) else f"in [{lower:.6g}, {upper:.6g}] ({upper:.6g} is feasible)"
    )
    need = upper * k / loads.sum() - 1.0
    return (
        f"load bound {bound:.6g} (cost {cost}, tolerance {tolerance:g}) is infeasible for {k} towers: "
        f"the smallest feasible bound is {smallest}, i.e. --tolerance {need:.6g} or more"
    )


def _result(
    features: list[FeatureSpec],
    items: list[list[int]],
    item_labels: np.ndarray,
    k: int,
    costs: np.ndarray,
    similarity: np.ndarray | None,
    method: str,
    cost: str,
    bound: float | None,
    tolerance: float,
    seed: int,
) -> PartitionResult:
    labels = np.empty(len(features), dtype=np.int64)  # [F]
    for it, t in zip(items, item_labels, strict=True):
        labels[it] = t
    order = sorted(range(k), key=lambda t: int(np.flatnonzero(labels == t)[0]))
    towers = [[features[i].name for i in np.flatnonzero(labels == t)] for t in order]
    per_tower = [float(costs[labels == t].sum()) for t in order]
    mean = float(np.mean(per_tower))
    within = None
    if similarity is not None and similarity.sum() > 0:
        within = float(similarity[labels[:, None] == labels[None, :]].sum() / similarity.sum())
    return PartitionResult(
        towers=towers,
        cost_per_tower=per_tower,
        imbalance=max(per_tower) / mean - 1.0 if mean > 0 else 0.0,
        method=method,
        cost=cost,
        feature_names=[f.name for f in features],
        feature_costs=[float(c) for c in costs],
        within_interaction=within,
        bound=bound,
        tolerance=tolerance if method == "tp" else None,
        seed=seed,
        interaction=similarity,
    )


def adjusted_rand_index(towers: list[list[str]], groups: list[list[str]]) -> float:
    """ARI between two partitions of the same feature names."""
    from sklearn.metrics import adjusted_rand_score

    truth = {f: g for g, group in enumerate(groups) for f in group}
    found = {f: t for t, tower in enumerate(towers) for f in tower}
    names = sorted(truth)
    return float(adjusted_rand_score([truth[f] for f in names], [found[f] for f in names]))
