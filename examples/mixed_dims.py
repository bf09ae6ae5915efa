"""Towers of different embedding widths: big tables get wide embeddings, small ones narrow, and
each tower is compressed by a plain MLP whose output width dmt reads from a dry run (the module
declares no `out_features`). Written against dmt's public API only.

    tower 0: user (dim 16), user_age (dim 4)         [B, 20] --MLP--> [B, 6]
    tower 1: item (dim 16), shop (dim 8), cat (dim 4) [B, 28] --MLP--> [B, 8]
    head:    [dense, tower outputs] --MLP--> logit   (a head that concatenates takes any widths)

Run it on 2 hosts x 2 ranks (it verifies, trains and evaluates; see harness.py):

    torchrun --nproc-per-node 4 examples/mixed_dims.py --ranks-per-host 2
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import dmt


class ConcatMLPHead(nn.Module):
    """dense [B, num_dense], tower outputs [B, D'_t] -> logits [B]."""

    def __init__(self, width: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        return self.mlp(torch.cat([dense, *tower_outputs], 1)).squeeze(1)


FEATURES = [
    dmt.FeatureSpec("user", "users", 2000),
    dmt.FeatureSpec("user_age", "ages", 10),
    dmt.FeatureSpec("item", "catalogue", 1500),
    dmt.FeatureSpec("shop", "shops", 120),
    dmt.FeatureSpec("cat", "cats", 30),
]
DIMS = {"users": 16, "ages": 4, "catalogue": 16, "shops": 8, "cats": 4}
TOWERS = [["user", "user_age"], ["item", "shop", "cat"]]
NUM_DENSE = 4


def mixed_dims() -> dmt.MultiTowerModel:
    tables = [dmt.TableSpec(f.table, f.num_embeddings, DIMS[f.table], pooling="sum") for f in FEATURES]
    embeddings = dmt.EmbeddingBagCollection(tables, FEATURES)
    widths = [sum(DIMS[f.table] for f in FEATURES if f.name in t) for t in TOWERS]  # 20 and 28
    outs = [6, 8]
    tower_modules = [
        nn.Sequential(nn.Linear(w, o), nn.ReLU(), nn.Linear(o, o)) for w, o in zip(widths, outs, strict=True)
    ]
    return dmt.MultiTowerModel(embeddings, ConcatMLPHead(NUM_DENSE + sum(outs)), TOWERS, tower_modules)


if __name__ == "__main__":
    from harness import run

    run(mixed_dims, FEATURES, NUM_DENSE)
