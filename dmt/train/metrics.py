"""Quality metrics of click predictions: AUC, log loss, normalized entropy."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def binary_entropy(rate: float) -> float:
    if rate <= 0.0 or rate >= 1.0:
        return 0.0
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def click_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """labels [n] in {0, 1}, probs [n] in (0, 1) -> auc, logloss, ne (log loss / entropy of the
    base rate: 1.0 is no better than predicting the average click rate)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    if labels.size == 0:
        raise ValueError("no evaluation samples")
    ll = float(log_loss(labels, probs, labels=[0, 1]))
    both = 0 < labels.sum() < labels.size
    entropy = binary_entropy(float(labels.mean()))
    return {
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "logloss": ll,
        "ne": ll / entropy if entropy > 0 else float("nan"),
    }
