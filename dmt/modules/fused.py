"""The tables on FBGEMM's table-batched embedding kernel, with the optimizer fused into its backward.

`model.embedding_backend = "fbgemm"` swaps a model's EmbeddingBagCollection for a
`FusedEmbeddingBagCollection`: the same tables, features, widths, pooling and per-table initial
values, the same interface (hold, pool, forward, feature_dims, `tables[t].weight`), but every table
the collection holds is one table of a single SplitTableBatchedEmbeddingBagsCodegen: one call pools
all the features, and the backward updates the rows it touched in place, with exact row-wise
Adagrad or SGD (gradients of a row summed over its ids first), the semantics of dmt's
RowWiseAdagrad and of torch's SGD on sparse gradients. The tables then need no optimizer of their
own; `FusedTables` stands in for one, so that checkpoints hold the Adagrad sums under the same
names as with the torch backend ("optim/<table weight>/sum").

The kernel batches whatever the collection holds (after `hold`): a whole table, or the block of a
table cut into shards (rows x columns), each a table of its own to it. Its inputs are slots, a
table's slots side by side (FBGEMM's CPU backward needs that), one per feature that reads the
table; the keys of a batch (features, or exchange units of shards) fill their table's slots and
are handed back by key. Mean pooling divides the kernel's sums by the bag lengths, as the torch
backend does (not for a shard of part of the rows: the mean comes after the partial sums).

FBGEMM is optional: pip install fbgemm-gpu-cpu (CPU) or fbgemm-gpu (CUDA); `require_fbgemm` says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from dmt.errors import UserError
from dmt.modules.embedding import Block, EmbeddingBagCollection, deferred_tables
from dmt.sparse import KeyedJagged

INSTALL_HINT = "pip install -c constraints.txt -e '.[fbgemm]' (fbgemm-gpu-cpu; on CUDA install fbgemm-gpu instead)"
OPTIMIZERS = ("rowwise_adagrad", "sgd")


def require_fbgemm():
    """The fbgemm_gpu module, or a UserError that says how to install it."""
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu import split_table_batched_embeddings_ops_training as tbe
    except ImportError as e:
        raise UserError(f"model.embedding_backend = 'fbgemm' needs FBGEMM ({e}): {INSTALL_HINT}") from None
    return tbe


class _TableView(nn.Module):
    """One table of the kernel as `weight` [rows, d]: a view of the kernel's weights (writing to it
    writes the table). It has no gradient: the kernel updates it during the backward."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach().clone()


class FusedEmbeddingBagCollection(EmbeddingBagCollection):
    """See the module docstring. Build it with `FusedEmbeddingBagCollection.like(ebc)`."""

    fuses_optimizer = True

    def __init__(self, tables, features) -> None:
        require_fbgemm()
        # the kernel is no submodule (its flat buffers are reached through `tables`): plain attributes
        object.__setattr__(self, "_kernel", None)
        self._slots: list[str] = []  # the kernel's inputs: one per feature reading a held table, by table
        self._optimizer, self._lr, self._eps = "rowwise_adagrad", 0.05, 1e-8
        self._device = torch.device("cpu")
        super().__init__(tables, features)

    @staticmethod
    def like(ebc: EmbeddingBagCollection) -> FusedEmbeddingBagCollection:
        """The same tables, features and seed; holds what `ebc` holds (whole tables and shards),
        with its current values."""
        with deferred_tables():
            fused = FusedEmbeddingBagCollection(list(ebc.specs.values()), ebc.features)
        fused.seed = ebc.seed
        fused.blocks = dict(ebc.blocks)
        fused._rebuild({t: bag.weight.detach() for t, bag in ebc.tables.items()}, {})
        return fused

    # ---- which tables, which optimizer ----------------------------------------------------------

    def hold(self, tables: Collection[str], shards: Mapping[str, Block] | None = None) -> None:
        """As EmbeddingBagCollection.hold: whole `tables` and the blocks `shards` names, each a table
        of its own to the kernel; values of a table already held with the same block are kept."""
        shards = dict(shards or {})
        unknown = (set(tables) | set(shards)) - set(self.specs)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        wanted = {t: self._whole(t) for t in tables} | shards
        weights, sums = self._current()
        weights = {t: w for t, w in weights.items() if t in wanted and self.block(t) == wanted[t]}
        sums = {t: v for t, v in sums.items() if t in weights}
        for i, spec in enumerate(self.specs.values()):
            if spec.name in wanted and spec.name not in weights:
                weights[spec.name] = self.initial_block(i, spec, wanted[spec.name]).to(self._device)
        self.blocks = {t: b for t, b in shards.items() if b != self._whole(t)}
        self._rebuild(weights, sums)

    def configure(self, optimizer: str, lr: float, eps: float = 1e-8) -> None:
        """The optimizer fused into the backward: "rowwise_adagrad" or "sgd", at `lr`."""
        if optimizer not in OPTIMIZERS:
            raise UserError(f"the fbgemm backend fuses an embedding optimizer in {OPTIMIZERS}, got {optimizer!r}")
        if (optimizer, eps) == (self._optimizer, self._eps) and self._kernel is not None:
            self._lr = lr
            self._kernel.set_learning_rate(lr)
            return
        self._optimizer, self._lr, self._eps = optimizer, lr, eps
        weights, sums = self._current()
        self._rebuild(weights, sums)

    def row_sums(self) -> dict[str, Tensor]:
        """table -> its row-wise Adagrad sums [rows] (views of the kernel's state); {} for SGD."""
        if self._kernel is None or self._optimizer != "rowwise_adagrad":
            return {}
        states = self._kernel.split_optimizer_states()
        return {t: s[0] for t, s in zip(self.tables, states, strict=True)}

    def _current(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        weights = {t: v.weight.detach().clone() for t, v in self.tables.items()}
        return weights, {t: s.clone() for t, s in self.row_sums().items()}

    def _rebuild(self, weights: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
        """A kernel over `weights` (declaration order; a shard's weight is its block), Adagrad sums
        restored where given."""
        names = [t for t in self.specs if t in weights]
        self.tables = nn.ModuleDict()
        object.__setattr__(self, "_kernel", None)
        self._slots = []
        if not names:
            return
        tbe = require_fbgemm()
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode

        bad = [t for t in names if weights[t].shape[1] % 4]
        if bad:
            raise UserError(
                f"the fbgemm backend needs widths that are multiples of 4; tables (or column shards) {bad} are not"
            )
        cuda = self._device.type == "cuda"
        where = (
            (EmbeddingLocation.DEVICE, tbe.ComputeDevice.CUDA)
            if cuda
            else (EmbeddingLocation.HOST, tbe.ComputeDevice.CPU)
        )
        # a slot per feature reading a held table (any key of that table fills one in `forward`)
        self._slots = [t for t in names for f in self.features if f.table == t]
        optimizer = (
            EmbOptimType.EXACT_ROWWISE_ADAGRAD if self._optimizer == "rowwise_adagrad" else EmbOptimType.EXACT_SGD
        )
        kernel = tbe.SplitTableBatchedEmbeddingBagsCodegen(
            [(*weights[t].shape, *where) for t in names],
            feature_table_map=[names.index(t) for t in self._slots],
            optimizer=optimizer,
            learning_rate=self._lr,
            eps=self._eps,
            pooling_mode=PoolingMode.SUM,
            device=self._device,
        )
        object.__setattr__(self, "_kernel", kernel)
        for t, view in zip(names, self._kernel.split_embedding_weights(), strict=True):
            view.copy_(weights[t])
            self.tables[t] = _TableView(view)
        for t, state in self.row_sums().items():
            if t in sums:
                state.copy_(sums[t])

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)`: the kernel is rebuilt on the new device (its buffers are not submodules)."""
        device = fn(torch.empty(0, device=self._device)).device
        if device != self._device:
            weights, sums = self._current()
            self._device = device
            self._rebuild({t: w.to(device) for t, w in weights.items()}, {t: s.to(device) for t, s in sums.items()})
        return self

    # ---- compute --------------------------------------------------------------------------------

    def lookup(self, table: str, values: Tensor, lengths: Tensor, weights: Tensor | None) -> Tensor:
        raise NotImplementedError("the fbgemm backend pools all its features in one kernel call: use pool or forward")

    def forward(self, sparse: KeyedJagged, key_table: Mapping[str, str] | None = None) -> dict[str, Tensor]:
        """sparse with B samples -> {key: pooled [B, width]} for the keys of the tables held
        (key_table: the table of each key, default the features' own; a key of a shard pools its
        columns, and sums when the shard holds only some of the rows)."""
        key_table = self.feature_table if key_table is None else key_table
        b = sparse.batch_size
        free: dict[str, list[int]] = {}
        for i, t in enumerate(self._slots):
            free.setdefault(t, []).append(i)
        slot_of: dict[str, int] = {}
        for key in sparse.keys:
            t = key_table.get(key)
            if t in free:
                if not free[t]:
                    raise ValueError(f"more keys of table {t} in one batch than features read it")
                slot_of[key] = free[t].pop(0)
        widths = [self.tables[t].weight.shape[1] for t in self._slots]
        if not slot_of or b == 0:
            return {k: self.tables[key_table[k]].weight.new_zeros(b, widths[i]) for k, i in slot_of.items()}
        parts = sparse.per_key()
        empty = sparse.values[:0]
        weighted = sparse.weights is not None
        blank = (empty, sparse.lengths.new_zeros(b), empty.float() if weighted else None)
        by_slot = {i: k for k, i in slot_of.items()}
        inputs = [parts[by_slot[i]] if i in by_slot else blank for i in range(len(self._slots))]
        names = [f"slot{i}" for i in range(len(self._slots))]
        kj = KeyedJagged.concat_keys(inputs, names, b, sparse.values.device)
        offsets = torch.zeros(kj.lengths.numel() + 1, dtype=torch.long, device=kj.lengths.device)
        torch.cumsum(kj.lengths, 0, out=offsets[1:])
        pooled = self._kernel(kj.values.long(), offsets, per_sample_weights=kj.weights)  # [B, sum of widths]
        blocks = pooled.split(widths, dim=1)
        lengths = kj.lengths_per_key()
        out = {}
        for key, i in slot_of.items():
            t, block = self._slots[i], blocks[i]
            (r0, r1), _ = self.block(t)
            if self.specs[t].pooling == "mean" and r1 - r0 == self.specs[t].num_embeddings:
                block = block / lengths[i].clamp(min=1).unsqueeze(1).to(block.dtype)
            out[key] = block
        return out


class FusedTables(torch.optim.Optimizer):
    """Stands in for the tables' optimizer when the kernel fuses it: `step()` does nothing (the
    rows were updated during the backward); `state[weight]["sum"]` is a copy of the table's
    row-wise Adagrad sums; assigning a state or loading a state dict (as checkpoint restore does)
    writes into the kernel."""

    def __init__(self, collection: FusedEmbeddingBagCollection) -> None:
        params = [v.weight for v in collection.tables.values()]
        super().__init__(params, {"lr": collection._lr})
        self.collection = collection
        self.state = _LiveSums(collection)

    def step(self, closure=None):  # noqa: ANN001 - the torch.optim signature
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        """Write the saved Adagrad sums into the kernel (torch's own load would replace `state`)."""
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entries in state_dict["state"].items():
            self.state[params[int(index)]] = entries


class _LiveSums(dict):
    """weight -> {"sum": the kernel's Adagrad sums of that table}, read and written through."""

    def __init__(self, collection: FusedEmbeddingBagCollection) -> None:
        super().__init__()
        self.collection = collection
        self._table = {id(v.weight): t for t, v in collection.tables.items()}

    def _sums(self, p: Tensor) -> dict[str, Tensor]:
        table = self._table[id(p)]
        sums = self.collection.row_sums()
        return {"sum": sums[table]} if table in sums else {}

    def __getitem__(self, p):
        return {k: v.clone() for k, v in self._sums(p).items()}

    def __setitem__(self, p, value) -> None:
        live = self._sums(p)
        for key, v in value.items():
            live[key].copy_(v)

    def __contains__(self, p) -> bool:
        return id(p) in self._table

    def items(self):
        return [(v.weight, self[v.weight]) for v in self.collection.tables.values()]

    def keys(self):
        return [v.weight for v in self.collection.tables.values()]

    def values(self):
        return [s for _, s in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._table)
