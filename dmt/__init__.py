"""dmt: Disaggregated Multi-Tower training of large recommendation models on torch.distributed.

What this package exports is its public API; everything else is internal.

    specs        FeatureSpec, TableSpec, table_specs           features and the tables they read
    sparse       KeyedJagged, Batch                            multi-hot ids (TorchRec's KJT works too)
    modules      EmbeddingBagCollection, deferred_tables,      tables; Tower Modules; dense blocks
                 IdentityTower, DotCompressTower,
                 CrossCompressTower, ResidualDotTower,
                 ResidualCrossTower, TowerOptions,
                 make_tower_module, MLP, CrossNetwork
    models       MultiTowerModel, ModelInputs, check_model,    the model contract, and the
                 DLRM, DLRMHead, DCN, DCNHead                  built-in families
    topology     Layout, Topology                              hosts x ranks and process groups
    sharding     plan, ShardingPlan, shard, ShardedModel,      one call from one device to many;
                 MemoryBudget                                  tables cut to fit (docs/sharding.md)
    training     RowWiseAdagrad, verify, UserError             the tables' optimizer; sharded ==
                                                               one device

A one-device model becomes its sharded form with `shard(model, topology, "sptt")`; a plain
`loss.backward()` and the optimizers' `step()` then train it exactly as the one device would
(docs/library.md walks through it).

    >>> import dmt
    >>> feats = [dmt.FeatureSpec(f"f{i}", f"t{i}", 1000) for i in range(4)]
    >>> model = dmt.DLRM(feats, num_dense=3, towers=[["f0", "f1"], ["f2", "f3"]], dim=8,
    ...                  tower_module="compress", compression_ratios=[2, 2])
    >>> sharded = dmt.shard(model, dmt.Topology.single(), "sptt")   # a world of one
    >>> sharded.plan.mode, model.tower_widths
    ('single', [8, 8])
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureSpec": "dmt.specs",
    "TableSpec": "dmt.specs",
    "table_specs": "dmt.specs",
    "KeyedJagged": "dmt.sparse",
    "Batch": "dmt.sparse",
    "EmbeddingBagCollection": "dmt.modules.embedding",
    "deferred_tables": "dmt.modules.embedding",
    "IdentityTower": "dmt.modules.tower",
    "DotCompressTower": "dmt.modules.tower",
    "CrossCompressTower": "dmt.modules.tower",
    "ResidualDotTower": "dmt.modules.tower",
    "ResidualCrossTower": "dmt.modules.tower",
    "TowerOptions": "dmt.modules.tower",
    "make_tower_module": "dmt.modules.tower",
    "MLP": "dmt.modules.dense",
    "CrossNetwork": "dmt.modules.dense",
    "MultiTowerModel": "dmt.models.base",
    "ModelInputs": "dmt.models.build",
    "check_model": "dmt.models.build",
    "DLRM": "dmt.models.dlrm",
    "DLRMHead": "dmt.models.dlrm",
    "DCN": "dmt.models.dcn",
    "DCNHead": "dmt.models.dcn",
    "Layout": "dmt.distributed.topology",
    "Topology": "dmt.distributed.topology",
    "plan": "dmt.distributed.plan",
    "ShardingPlan": "dmt.distributed.plan",
    "shard": "dmt.distributed.sharded",
    "ShardedModel": "dmt.distributed.sharded",
    "MemoryBudget": "dmt.cost.fit",
    "RowWiseAdagrad": "dmt.train.optim",
    "verify": "dmt.verification",
    "UserError": "dmt.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Public names load on first use, so that `dmt --help` does not import torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dmt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
