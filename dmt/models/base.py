"""The shape every dmt model shares: embeddings -> Tower Modules -> head.

    sparse ids --embeddings--> pooled {feature: [B, d]}
               --group by tower--> X_t [B, n_t * d]  --TM_t--> [B, D'_t]   for each tower t
    dense [B, num_dense], [B, D'_t] for all t --head--> logits [B]

The flat model is the special case of one tower holding every feature in feature order with an
identity Tower Module. Distributed code runs the same three stages on different ranks.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from dmt.modules.embedding import EmbeddingBagCollection
from dmt.modules.tower import IdentityTower
from dmt.sparse import KeyedJagged
from dmt.specs import FeatureSpec


class MultiTowerModel(nn.Module):
    family: str = ""

    def __init__(
        self,
        features: list[FeatureSpec],
        towers: list[list[str]],
        dim: int,
        pooling: str,
        tables: Collection[str] | None = None,
    ) -> None:
        """tables: the embedding tables to create (default all; a rank of a sharded run creates
        only the ones it owns, see EmbeddingBagCollection.hold)."""
        super().__init__()
        self.feature_names = [f.name for f in features]
        self.towers = [list(t) for t in towers]
        self.dim = dim
        self.embeddings = EmbeddingBagCollection(features, dim, pooling, tables)
        self.tower_modules = nn.ModuleList()

    @property
    def is_flat(self) -> bool:
        return len(self.towers) == 1 and all(isinstance(m, IdentityTower) for m in self.tower_modules)

    @property
    def name(self) -> str:
        return self.family if self.is_flat else f"dmt_{self.family}"

    def tower_input(self, pooled: dict[str, Tensor], tower: int) -> Tensor:
        """{feature: [B, d]} -> [B, n_t * d] in the tower's feature order."""
        return torch.cat([pooled[f] for f in self.towers[tower]], 1)

    def head(self, dense: Tensor, tower_outputs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, dense: Tensor, sparse: KeyedJagged) -> Tensor:
        """dense [B, num_dense], sparse (B samples) -> logits [B]."""
        pooled = self.embeddings(sparse)
        outputs = [tm(self.tower_input(pooled, t)) for t, tm in enumerate(self.tower_modules)]
        return self.head(dense, outputs)

    def dense_parameters(self) -> list[nn.Parameter]:
        emb = {id(p) for p in self.embeddings.parameters()}
        return [p for p in self.parameters() if id(p) not in emb]

    def feature_order(self) -> list[str]:
        """Features in the order the head sees them (tower by tower)."""
        return [f for t in self.towers for f in t]

    def load_flat(self, flat: MultiTowerModel) -> None:
        """Take a flat model's weights; needs identity Tower Modules. The result computes the flat
        model's function exactly: the head's inputs are permuted, not changed."""
        if not all(isinstance(m, IdentityTower) for m in self.tower_modules):
            raise ValueError("load_flat needs identity Tower Modules")
        if sorted(self.feature_names) != sorted(flat.feature_names):
            raise ValueError("models have different features")
        state = flat.state_dict()
        self.load_state_dict(state)
        position = {f: i for i, f in enumerate(flat.feature_order())}
        self._permute_head([position[f] for f in self.feature_order()])

    def _permute_head(self, flat_index: list[int]) -> None:
        """Feature i of this model's order is feature flat_index[i] of the flat model's order."""
        raise NotImplementedError
