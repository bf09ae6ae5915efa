"""What every data source gives the rest of dmt: feature specs and batches.

A source yields `Batch`es whose `sparse` holds the features in `features` order. Training
streams are addressed by (step, rank, world): global batch `step` is `world * batch_size`
consecutive samples and rank r takes the r-th slice of it, so a one-device run that takes the
whole global batch sees exactly the union of the ranks' batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from dmt.sparse import Batch
from dmt.specs import FeatureSpec


class DataSource(ABC):
    features: list[FeatureSpec]
    num_dense: int

    @abstractmethod
    def train_batches(self, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0) -> Iterator[Batch]:
        """Endless (or epoch-bounded) stream of this rank's [batch_size] batches from `start_step`."""

    @abstractmethod
    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """The held-out evaluation set, split over ranks without overlap or loss."""

    def optimal_metrics(self) -> dict[str, float] | None:
        """Bayes-optimal AUC and log loss on the evaluation set, where the truth is known."""
        return None

    def describe(self) -> dict:
        """Summary for `dmt data describe`."""
        return {
            "features": [
                {
                    "name": f.name,
                    "table": f.table,
                    "cardinality": f.num_embeddings,
                    "pooling_factor": f.pooling_factor,
                }
                for f in self.features
            ],
            "num_dense": self.num_dense,
        }
