"""Capacity-constrained K-Means over items, with the assignment step as a MILP (HiGHS via scipy).

Items are the units that must stay together (features sharing an embedding table). Item i has a
point p_i [k] (the mean of its features' points), a weight w_i (its number of features) and a
cost c_i. With centroids m_t, the assignment step solves

    min  sum_{i,t} w_i ||p_i - m_t||^2 x_it
    s.t. sum_t x_it = 1                      every item in exactly one tower
         sum_i c_i x_it <= bound             per-tower load bound
         sum_i x_it >= 1                     no empty tower
         x_it in {0, 1}

and the update step sets m_t to the w-weighted mean of its items. Each restart starts from seeded
k-means++ centroids; the restart with the lowest objective wins. `is_feasible` decides whether a
bound can be met at all (cheap checks, then the same MILP with a zero objective);
`min_feasible_bound` solves the min-max-load problem (the same constraints with the bound as the
variable being minimised), the smallest bound any assignment meets: the number an error names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix, hstack, kron

from dmt.distributed.plan import lpt as place_lpt

_OPTIONS = {"mip_rel_gap": 0.0, "presolve": True}


class Infeasible(Exception):
    """No assignment meets the bound."""


def _structure(num_items: int, k: int) -> tuple[csr_matrix, csr_matrix]:
    """Constraint matrices on x [num_items * k] (item-major): one-tower-per-item [n, n*k], and
    per-tower sums with unit coefficients [k, n*k]."""
    one_each = kron(np.eye(num_items), np.ones((1, k)), format="csr")
    per_tower = kron(np.ones((1, num_items)), np.eye(k), format="csr")
    return one_each, per_tower


def _load_rows(per_tower: csr_matrix, loads: np.ndarray, k: int) -> csr_matrix:
    """[k, n*k]: row t sums the loads of the items placed in tower t."""
    return csr_matrix(per_tower.multiply(np.repeat(np.asarray(loads, dtype=np.float64), k)[None, :]))


def assign(cost_matrix: np.ndarray, loads: np.ndarray, bound: float, time_limit: float = 30.0) -> np.ndarray:
    """cost_matrix [n, k] (objective per item and tower), loads [n] -> labels [n] minimising the total
    objective with per-tower load <= bound and no empty tower (the best found within `time_limit`).
    Raises Infeasible when HiGHS proves that no assignment meets the bound."""
    n, k = cost_matrix.shape
    one_each, per_tower = _structure(n, k)
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(_load_rows(per_tower, loads, k), -np.inf, bound * (1 + 1e-9) + 1e-12),
        LinearConstraint(per_tower, 1, np.inf),
    ]
    res = milp(
        cost_matrix.ravel(),
        integrality=np.ones(n * k),
        bounds=Bounds(0, 1),
        constraints=constraints,
        options={**_OPTIONS, "time_limit": time_limit},
    )
    if res.status == 2:
        raise Infeasible(res.message)
    if res.x is None:
        raise RuntimeError(f"tower assignment MILP found no solution: {res.message}")
    return np.round(res.x).reshape(n, k).argmax(1)


def lpt(loads: np.ndarray, k: int) -> np.ndarray:
    """Longest processing time first (the placement rule of dmt.distributed.plan): items by decreasing
    load, each to the least-loaded tower, lowest index on ties -> labels [n]. Max load is within 4/3
    of the optimum."""
    return np.asarray(place_lpt(np.asarray(loads, dtype=np.float64).tolist(), k), dtype=np.int64)


def is_feasible(loads: np.ndarray, k: int, bound: float) -> bool:
    """Can `loads` [n] go to k non-empty towers with every load <= bound? Cheap checks first
    (too few items, max item, average, LPT's assignment), then the assignment MILP."""
    loads = np.asarray(loads, dtype=np.float64)
    slack = bound * (1 + 1e-9) + 1e-12
    if loads.size < k or loads.max() > slack or loads.sum() / k > slack:
        return False
    labels = lpt(loads, k)
    if np.bincount(labels, weights=loads, minlength=k).max() <= slack:
        return True
    try:
        assign(np.zeros((loads.size, k)), loads, bound)
    except Infeasible:
        return False
    return True


def min_feasible_bound(loads: np.ndarray, k: int, time_limit: float = 60.0) -> tuple[float, float]:
    """Smallest achievable max tower load over assignments of `loads` [n] to k non-empty towers.
    -> (lower, upper): equal when HiGHS proves optimality within `time_limit` (the usual case);
    else the optimum lies in [lower, upper] and `upper` is achieved.

    Symmetry breaking: with items sorted by decreasing load, item i may only use towers 0..i (any
    assignment can be relabelled so that towers are ordered by their first item)."""
    loads = np.sort(np.asarray(loads, dtype=np.float64))[::-1]
    n = loads.size
    if n < k:
        raise Infeasible(f"{n} items cannot fill {k} non-empty towers")
    one_each, per_tower = _structure(n, k)
    # variables: x [n*k], then z; minimise z with load_t - z <= 0
    objective = np.zeros(n * k + 1)
    objective[-1] = 1.0
    upper_bounds = np.r_[np.ones(n * k), np.inf]
    for i in range(min(n, k)):
        upper_bounds[i * k + i + 1 : (i + 1) * k] = 0.0
    constraints = [
        LinearConstraint(hstack([one_each, csr_matrix((n, 1))]), 1, 1),
        LinearConstraint(hstack([_load_rows(per_tower, loads, k), -csr_matrix(np.ones((k, 1)))]), -np.inf, 0),
        LinearConstraint(hstack([per_tower, csr_matrix((k, 1))]), 1, np.inf),
    ]
    integrality = np.r_[np.ones(n * k), 0.0]
    res = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(np.zeros(n * k + 1), upper_bounds),
        constraints=constraints,
        options={**_OPTIONS, "time_limit": time_limit},
    )
    if res.x is None:
        raise RuntimeError(f"min-max load MILP found no solution: {res.message}")
    labels = np.round(res.x[:-1]).reshape(n, k).argmax(1)
    upper = float(np.bincount(labels, weights=loads, minlength=k).max())  # exact load of the solution
    if res.status == 0:
        return upper, upper
    return float(max(res.mip_dual_bound, loads.max(), loads.sum() / k)), upper


@dataclass
class KMeansResult:
    labels: np.ndarray  # [n] tower of each item
    centroids: np.ndarray  # [k, dim]
    objective: float  # sum_i w_i ||p_i - m_label(i)||^2
    restart: int  # which restart won


def _kmeans_pp(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding -> centroids [k, dim]."""
    first = rng.choice(len(points), p=weights / weights.sum())
    centres = [points[first]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), 1) * weights
        total = d2.sum()
        pick = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
    return np.array(centres)


def constrained_kmeans(
    points: np.ndarray,
    weights: np.ndarray,
    loads: np.ndarray,
    k: int,
    bound: float,
    seed: int = 0,
    restarts: int = 10,
    max_iter: int = 50,
) -> KMeansResult:
    """points [n, dim], weights [n], loads [n] -> the best of `restarts` runs (deterministic for a
    seed). Raises Infeasible when no assignment meets `bound`."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best: KMeansResult | None = None
    for restart in range(restarts):
        centroids = _kmeans_pp(points, weights, k, rng)
        labels = None
        for _ in range(max_iter):
            dist = ((points[:, None, :] - centroids[None]) ** 2).sum(-1) * weights[:, None]  # [n, k]
            new = assign(dist, loads, bound)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            centroids = np.stack(
                [np.average(points[labels == t], axis=0, weights=weights[labels == t]) for t in range(k)]
            )
        objective = float((((points - centroids[labels]) ** 2).sum(1) * weights).sum())
        if best is None or objective < best.objective - 1e-12:
            best = KMeansResult(labels, centroids, objective, restart)
    assert best is not None
    return best
