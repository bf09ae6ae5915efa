"""The shape every dmt model has: embeddings -> Tower Modules -> head.

    sparse ids --embeddings--> pooled {feature: [B, d_f]}
               --tower t's features, concatenated--> X_t [B, D_t]  --tower_modules[t]--> [B, D'_t]
    dense [B, num_dense], [[B, D'_t] for each tower t] --head--> logits [B]

A `MultiTowerModel` is assembled from those parts; any embedding widths, any Tower Modules (the
contract is in dmt/modules/tower.py) and any head (an nn.Module called as
`head(dense, tower_outputs)` that returns [B] logits). The flat model is the special case of one
tower holding every feature in feature order with an identity Tower Module. `dmt.shard` runs the
same three stages on different ranks and must equal this module exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from dmt.modules.embedding import EmbeddingBagCollection
from dmt.modules.tower import IdentityTower, TowerOptions, make_tower_module
from dmt.sparse import as_keyed_jagged


class MultiTowerModel(nn.Module):
    """embeddings, towers (lists of feature names), one Tower Module per tower, and a head.

    towers None: one tower of every feature in feature order (the flat model). tower_modules
    None: identity Tower Modules. Every feature must be in exactly one tower.

    >>> from dmt.sparse import KeyedJagged
    >>> from dmt.specs import FeatureSpec
    >>> feats = [FeatureSpec(f"f{i}", f"t{i}", 100) for i in range(3)]
    >>> ebc = EmbeddingBagCollection.from_features(feats, dim=4)
    >>> class Head(nn.Module):
    ...     def __init__(self, width):
    ...         super().__init__()
    ...         self.out = nn.Linear(width, 1)
    ...     def forward(self, dense, tower_outputs):  # dense [B, 2], tower outputs [B, D'_t]
    ...         return self.out(torch.cat([dense, *tower_outputs], 1)).squeeze(1)
    >>> model = MultiTowerModel(ebc, Head(2 + 8 + 2), towers=[["f0", "f2"], ["f1"]],
    ...                         tower_modules=[IdentityTower(8), nn.Linear(4, 2)])
    >>> model.tower_widths, model.tower_in_widths
    ([8, 2], [8, 4])
    >>> sparse = KeyedJagged(["f0", "f1", "f2"], torch.tensor([1, 2, 3]), torch.tensor([1, 1, 1]))
    >>> model(torch.zeros(1, 2), sparse).shape
    torch.Size([1])
    """

    family: str = ""  # a short name for reports ("dlrm"); default: the head's class name

    def __init__(
        self,
        embeddings: EmbeddingBagCollection,
        head: nn.Module,
        towers: Sequence[Sequence[str]] | None = None,
        tower_modules: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        names = [f.name for f in embeddings.features]
        self.feature_names = names
        self.towers = check_towers([list(t) for t in towers] if towers is not None else [names], names)
        self.embeddings = embeddings
        dims = embeddings.feature_dims
        self.tower_in_widths = [sum(dims[f] for f in tower) for tower in self.towers]
        if tower_modules is None:
            tower_modules = [IdentityTower(w) for w in self.tower_in_widths]
        if len(tower_modules) != len(self.towers):
            raise ValueError(f"{len(tower_modules)} Tower Modules for {len(self.towers)} towers")
        self.tower_modules = nn.ModuleList(tower_modules)
        self.tower_widths = [
            tower_out_features(tm, w) for tm, w in zip(self.tower_modules, self.tower_in_widths, strict=True)
        ]
        self.head = head

    @property
    def is_flat(self) -> bool:
        return len(self.towers) == 1 and all(isinstance(m, IdentityTower) for m in self.tower_modules)

    @property
    def name(self) -> str:
        family = self.family or type(self.head).__name__.lower()
        return family if self.is_flat else f"dmt_{family}"

    def tower_input(self, pooled: dict[str, Tensor], tower: int) -> Tensor:
        """{feature: [B, d_f]} -> [B, D_t], the tower's features side by side in its order."""
        return torch.cat([pooled[f] for f in self.towers[tower]], 1)

    def forward(self, dense: Tensor, sparse) -> Tensor:
        """dense [B, num_dense], sparse (KeyedJagged or TorchRec KeyedJaggedTensor, B samples) -> logits [B]."""
        pooled = self.embeddings(as_keyed_jagged(sparse))
        outputs = [tm(self.tower_input(pooled, t)) for t, tm in enumerate(self.tower_modules)]
        return self.head(dense, outputs)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The tables (sparse gradients: give them a row-wise optimizer or SGD)."""
        return list(self.embeddings.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything else: Tower Modules and head (dense gradients)."""
        emb = {id(p) for p in self.embeddings.parameters()}
        return [p for p in self.parameters() if id(p) not in emb]

    def feature_order(self) -> list[str]:
        """Features in the order the head sees them (tower by tower)."""
        return [f for t in self.towers for f in t]

    def load_flat(self, flat: MultiTowerModel) -> None:
        """Take a flat model's weights; needs identity Tower Modules and a head with
        `permute_features`. The result computes the flat model's function exactly: the head's
        inputs are permuted, not changed."""
        if not all(isinstance(m, IdentityTower) for m in self.tower_modules):
            raise ValueError("load_flat needs identity Tower Modules")
        if sorted(self.feature_names) != sorted(flat.feature_names):
            raise ValueError("models have different features")
        self.load_state_dict(flat.state_dict())
        position = {f: i for i, f in enumerate(flat.feature_order())}
        dims = self.embeddings.feature_dims
        self.head.permute_features([position[f] for f in self.feature_order()], [dims[f] for f in flat.feature_order()])


def check_towers(towers: list[list[str]], names: list[str]) -> list[list[str]]:
    """Every feature in exactly one tower, no empty tower, no unknown name. -> towers"""
    seen = [f for t in towers for f in t]
    unknown = sorted(set(seen) - set(names))
    if unknown:
        raise ValueError(f"towers name unknown features {unknown}; features are {names}")
    dup = sorted({f for f in seen if seen.count(f) > 1})
    if dup:
        raise ValueError(f"features {dup} appear in more than one tower")
    missing = [f for f in names if f not in seen]
    if missing:
        raise ValueError(f"features {missing} are in no tower")
    if any(not t for t in towers):
        raise ValueError("a tower is empty")
    return towers


def tower_out_features(tm: nn.Module, in_width: int) -> int:
    """A Tower Module's output width: its `out_features`, else read from one dry run on [2, D_t]
    (on the meta device where the module lives there). Checks `in_features` where it is given."""
    declared_in = getattr(tm, "in_features", None)
    if isinstance(declared_in, int) and declared_in != in_width:
        raise ValueError(f"Tower Module {type(tm).__name__} takes {declared_in} inputs, its tower is {in_width} wide")
    out = getattr(tm, "out_features", None)
    if isinstance(out, int):
        return out
    param = next(tm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        y = tm(torch.zeros(2, in_width, device=device))
    if y.dim() != 2 or y.shape[0] != 2:
        raise ValueError(f"Tower Module {type(tm).__name__} maps [2, {in_width}] to {list(y.shape)}, not [2, width]")
    return int(y.shape[1])


def build_tower_modules(
    towers: list[list[str]],
    feature_dims: Mapping[str, int],
    family: str,
    kind: str,
    compression_ratios: list[float] | None,
    options: TowerOptions,
) -> list[nn.Module]:
    """One Tower Module per tower (dmt/modules/tower.py's `make_tower_module`) of `kind` for the
    model `family`, each with its tower's ratio (default 1)."""
    ratios = compression_ratios or [1.0] * len(towers)
    return [
        make_tower_module(kind, family, [feature_dims[f] for f in t], cr, options)
        for t, cr in zip(towers, ratios, strict=True)
    ]
