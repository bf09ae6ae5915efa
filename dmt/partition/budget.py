"""Per-tower compression ratios under a cross-host byte budget.

SPTT sends each tower's Tower Module output across hosts, so the cross-host bytes per sample are
4 * sum_t w_t for output widths w_t (floats). Uniform compression ratio CR spends
budget = sum_t n_t d / CR floats; `propose_ratios` spends the same budget (or less, where the
granule does not divide it) where it matters:

    cross_t = sum_{i in t, j not in t} S_ij          S: the normalised interaction matrix [F, F]
    share_t = mix * in_t / sum in + (1 - mix) * cross_t / sum cross
    w_t     = share_t * budget, in whole granules (DLRM: d floats, DCN: 1), at least one granule
              and at most the tower's input width; largest remainders get the spare granules

A tower whose features interact strongly with other towers keeps more width: those interactions
are only computed after the exchange, from what the tower sent, while its within-tower ones are
computed on its own host by the Tower Module. mix = 1 is the uniform ratio (up to granules).
"""

from __future__ import annotations

import math

import numpy as np

from dmt.errors import UserError


def check_budget(budget_ratio: float | None, mix: float) -> None:
    if budget_ratio is not None and not budget_ratio >= 1:
        raise UserError(f"--budget-ratio must be >= 1, got {budget_ratio}")
    if not 0 <= mix <= 1:
        raise UserError(f"--budget-mix must be in [0, 1], got {mix}")


def cross_interaction(similarity: np.ndarray, names: list[str], towers: list[list[str]]) -> np.ndarray:
    """similarity [F, F] in `names` order -> [T]: interaction mass between each tower and the rest."""
    index = {n: i for i, n in enumerate(names)}
    label = np.empty(len(names), dtype=np.int64)
    for t, tower in enumerate(towers):
        label[[index[f] for f in tower]] = t
    s = np.asarray(similarity, dtype=np.float64)
    return np.array([s[np.ix_(label == t, label != t)].sum() for t in range(len(towers))])


def allocate(shares: np.ndarray, units: int, caps: np.ndarray) -> np.ndarray:
    """Split `units` whole units over towers by `shares` [T], each at least 1 and at most caps [T]."""
    t = len(shares)
    if units < t:
        raise UserError(f"a budget of {units} units cannot give each of {t} towers one")
    caps = np.asarray(caps, dtype=np.int64)
    units = min(units, int(caps.sum()))
    shares = np.asarray(shares, dtype=np.float64)
    shares = shares / shares.sum() if shares.sum() > 0 else np.full(t, 1.0 / t)
    lo, hi = np.ones(t), caps.astype(np.float64)
    # water filling: the scale s with sum clip(s * shares, lo, hi) = units
    a, b = 0.0, float(units) / max(shares.min(), 1e-12) + 1.0
    for _ in range(200):
        s = 0.5 * (a + b)
        a, b = (s, b) if np.clip(s * shares, lo, hi).sum() < units else (a, s)
    ideal = np.clip(b * shares, lo, hi)
    whole = np.floor(ideal + 1e-9).astype(np.int64)
    order = np.argsort(-(ideal - whole), kind="stable")
    for i in order:
        if whole.sum() >= units:
            break
        if whole[i] < caps[i]:
            whole[i] += 1
    return whole


def propose_ratios(
    towers: list[list[str]],
    names: list[str],
    similarity: np.ndarray,
    dim: int,
    budget_ratio: float,
    granule: int,
    mix: float = 0.5,
) -> dict:
    """The per-tower compression ratios that spend the bytes of uniform `budget_ratio`.

    towers: feature names per tower; similarity [F, F] in `names` order; granule: floats per
    output unit (DLRM d, DCN 1). -> {"compression_ratios", "tower_widths", "budget_floats",
    "spent_floats", "cross_interaction", "mix", "granule"}."""
    check_budget(budget_ratio, mix)
    widths_in = np.array([len(t) * dim for t in towers], dtype=np.int64)
    budget = float(widths_in.sum()) / budget_ratio
    units = math.floor(budget / granule + 1e-9)
    if units < len(towers):
        raise UserError(
            f"the budget of uniform ratio {budget_ratio:g} ({budget:g} floats per sample) is less than one "
            f"{granule}-float unit for each of the {len(towers)} towers"
        )
    cross = cross_interaction(similarity, names, towers)
    by_size = widths_in / widths_in.sum()
    by_cross = cross / cross.sum() if cross.sum() > 0 else by_size
    shares = mix * by_size + (1.0 - mix) * by_cross
    out = allocate(shares, units, widths_in // granule) * granule
    return {
        "budget_ratio": budget_ratio,
        "compression_ratios": [float(i) / float(o) for i, o in zip(widths_in, out, strict=True)],
        "tower_widths": [int(o) for o in out],
        "budget_floats": budget,
        "spent_floats": int(out.sum()),
        "cross_interaction": [float(c) for c in cross],
        "mix": mix,
        "granule": granule,
    }
