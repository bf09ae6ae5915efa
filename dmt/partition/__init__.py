"""Tower Partitioner (docs/design.md, section 1): interaction matrices, spectral embedding, capacity-
constrained K-Means, baselines; `dmt partition` runs `dmt.partition.run.run_partition`."""

from dmt.partition.partition import METHODS, PartitionResult, adjusted_rand_index, partition

__all__ = ["METHODS", "PartitionResult", "adjusted_rand_index", "partition"]
