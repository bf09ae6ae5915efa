"""Tower Partitioner (DESIGN section 1, TP): interaction matrices, spectral embedding, capacity-
constrained K-Means, baselines; `dmt partition` runs `dmt.partition.run.run_partition`."""

from dmt.partition.partition import METHODS, PartitionResult, adjusted_rand_index, partition

__all__ = ["METHODS", "PartitionResult", "adjusted_rand_index", "partition"]
