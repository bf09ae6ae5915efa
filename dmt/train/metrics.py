"""Quality metrics of click predictions: AUC, log loss, normalized entropy.

`click_metrics` computes them exactly on predictions in memory (scikit-learn); training runs use
`StreamingClickMetrics`, which never gathers the predictions of all ranks in one place.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import log_loss, roc_auc_score

from dmt.guard import allowed_sync


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


class StreamingClickMetrics:
    """AUC, log loss and NE over a prediction stream spread over ranks, without gathering it.

    Each rank keeps, on its device, a histogram of its predicted probabilities for positives and
    for negatives (`bins` equal bins on [0, 1]) and the summed log loss; `compute` adds them over
    the ranks (one all-reduce of 2 * bins + 3 numbers) and reads the AUC off the histograms, pairs
    in one bin counting as ties. That is the exact AUC of the binned scores; it differs from the
    exact AUC by at most `auc_error_bound` = sum_b pos_b * neg_b / (2 P N), reported beside it.

        >>> m = StreamingClickMetrics(torch.device("cpu"))
        >>> m.update(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.9, 0.2, 0.6, 0.4]))
        >>> out = m.compute()
        >>> out["auc"], out["eval_samples"]
        (1.0, 4)
    """

    def __init__(self, device: torch.device, bins: int = 1 << 18) -> None:
        self.bins = bins
        self.hist = torch.zeros(2, bins, dtype=torch.float64, device=device)  # [negatives, positives]
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # log loss sum, samples, positives

    def update(self, labels: torch.Tensor, probs: torch.Tensor) -> None:
        """labels [n] in {0, 1}, probs [n] in [0, 1], on the device."""
        p = probs.double().clamp(1e-7, 1 - 1e-7)
        y = labels.double()
        index = (p * self.bins).long().clamp_(max=self.bins - 1) + self.bins * y.long()
        self.hist += torch.bincount(index, minlength=2 * self.bins).view(2, self.bins)
        loss = -(y * p.log() + (1 - y) * (1 - p).log()).sum()
        self.sums += torch.stack([loss, y.new_tensor(float(y.numel())), y.sum()])

    def compute(self, group=None) -> dict[str, float]:
        """The metrics of every rank's predictions: collective over `group` (every member calls
        it); None: this process's predictions alone."""
        totals = torch.cat([self.hist.reshape(-1), self.sums])
        if group is not None:
            dist.all_reduce(totals, group=group)
        with allowed_sync("the metrics, once at the end of evaluation"):
            totals = totals.cpu().numpy()
        neg, pos = totals[: self.bins], totals[self.bins : 2 * self.bins]
        loss_sum, n, positives = totals[2 * self.bins :]
        if n == 0:
            raise ValueError("no evaluation samples")
        negatives = n - positives
        pairs = positives * negatives
        below = np.cumsum(neg) - neg  # negatives in lower bins
        auc = float((pos * (below + 0.5 * neg)).sum() / pairs) if pairs else float("nan")
        ll = float(loss_sum / n)
        entropy = binary_entropy(float(positives / n))
        return {
            "auc": auc,
            "auc_error_bound": float(0.5 * (pos * neg).sum() / pairs) if pairs else float("nan"),
            "logloss": ll,
            "ne": ll / entropy if entropy > 0 else float("nan"),
            "eval_samples": int(n),
        }
