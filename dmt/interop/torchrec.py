"""TorchRec interop: batches, embedding tables, and our models on a TorchRec embedding stage.

    KeyedJagged  <--to_kjt / from_kjt-->  torchrec.KeyedJaggedTensor   (same layout, same tensors)
    our EmbeddingBagCollection  --torchrec_ebc-->  torchrec.EmbeddingBagCollection   (same weights)
    TorchRecModel(model):  KJT --TorchRec EBC--> {feature: [B, d]} --our Tower Modules, head--> logits
    shard(TorchRecModel, sharding):  DistributedModelParallel, tables table-wise, table-row-wise or row-wise
                                     (fused SGD / row-wise Adagrad, or dense kernel; optionally
                                     TorchRec's quantized communication, qcomms)

Only the embedding stage differs from our model, so the two can be compared number for number
(tests/test_torchrec.py compares it with our flat baseline on 2 x 2 gloo ranks).

TorchRec is optional and imported lazily; see INSTALL_HINT.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dmt.models.base import MultiTowerModel
from dmt.modules.embedding import EmbeddingBagCollection
from dmt.sparse import KeyedJagged

if TYPE_CHECKING:
    import torchrec

INSTALL_HINT = (
    "pip install -c constraints.txt -e '.[torchrec]' && pip install --no-deps torchrec==1.8.0 "
    "(torchrec's metadata asks for the CUDA fbgemm-gpu; the extra brings fbgemm-gpu-cpu instead, "
    "so torchrec itself goes in with --no-deps)"
)


def require_torchrec() -> Any:
    """The torchrec module, or an ImportError that says how to install it."""
    try:
        import torchrec
    except ImportError as e:
        raise ImportError(f"dmt.interop.torchrec needs TorchRec: {INSTALL_HINT}") from e
    return torchrec


# ---- batches --------------------------------------------------------------------------------


def to_kjt(kj: KeyedJagged) -> torchrec.KeyedJaggedTensor:
    """keys F, values int64 [N], lengths [F * B] feature-major, weights [N] or None -> the same
    tensors as a KeyedJaggedTensor (both layouts are feature-major; nothing is copied)."""
    trec = require_torchrec()
    return trec.KeyedJaggedTensor(keys=list(kj.keys), values=kj.values, lengths=kj.lengths, weights=kj.weights)


def from_kjt(kjt: torchrec.KeyedJaggedTensor) -> KeyedJagged:
    """A KeyedJaggedTensor with one batch size for every key -> KeyedJagged (int64 ids and lengths)."""
    if kjt.variable_stride_per_key():
        raise ValueError("KeyedJagged needs the same batch size for every key; this KJT varies it per key")
    return KeyedJagged(
        keys=list(kjt.keys()),
        values=kjt.values().long(),
        lengths=kjt.lengths().long(),
        weights=kjt.weights_or_none(),
    )


# ---- tables ---------------------------------------------------------------------------------


def torchrec_ebc(
    ebc: EmbeddingBagCollection, is_weighted: bool = False, device: torch.device | None = None
) -> torchrec.EmbeddingBagCollection:
    """A TorchRec EmbeddingBagCollection with our tables: one EmbeddingBagConfig per table (name,
    rows, width), the features that read it as its feature_names, the same pooling (SUM, or
    MEAN = sum / bag length) and a copy of the weights [rows, width].

    Weighted MEAN pooling runs only sharded: the unsharded TorchRec module pools with
    torch.nn.EmbeddingBag, which takes per-sample weights in sum mode only.
    """
    trec = require_torchrec()
    readers = {t: names for t, names in ebc.table_features().items() if names}
    configs = [
        trec.EmbeddingBagConfig(
            name=table,
            embedding_dim=ebc.specs[table].embedding_dim,
            num_embeddings=ebc.specs[table].num_embeddings,
            feature_names=list(names),
            pooling=trec.PoolingType.MEAN if ebc.specs[table].pooling == "mean" else trec.PoolingType.SUM,
        )
        for table, names in readers.items()
    ]
    out = trec.EmbeddingBagCollection(tables=configs, is_weighted=is_weighted, device=device)
    with torch.no_grad():
        for table in readers:
            out.embedding_bags[table].weight.copy_(ebc.tables[table].weight)
    return out


# ---- models ---------------------------------------------------------------------------------


class TorchRecModel(nn.Module):
    """Our model with TorchRec's EmbeddingBagCollection as its embedding stage.

    dense [B, num_dense], sparse (KeyedJaggedTensor or KeyedJagged, B samples) -> logits [B]:
    `ebc` pools {feature: [B, d]}, then the model's own `tower_modules` and `head` run on that,
    so the only difference from `model(dense, sparse)` is the embedding stage.
    `model` (a copy of everything but the tables) holds the dense parameters.
    """

    def __init__(self, model: MultiTowerModel, is_weighted: bool = False) -> None:
        super().__init__()
        self.ebc = torchrec_ebc(model.embeddings, is_weighted)
        # deepcopy's memo maps the tables to None: they are not copied, and the copy has no embeddings
        self.model = copy.deepcopy(model, {id(model.embeddings): None})

    def forward(self, dense: Tensor, sparse: Any) -> Tensor:
        if isinstance(sparse, KeyedJagged):
            sparse = to_kjt(sparse)
        pooled = self.ebc(sparse).to_dict()  # sharded: waits for the pooled all-to-all here
        m = self.model
        outputs = [tm(m.tower_input(pooled, t)) for t, tm in enumerate(m.tower_modules)]
        return m.head(dense, outputs)

    def dense_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())


# ---- sharding -------------------------------------------------------------------------------


SHARDINGS = ("table_wise", "table_row_wise", "row_wise")
FUSED_OPTIMIZERS = ("sgd", "rowwise_adagrad")  # our embedding optimizers that fbgemm's CPU kernel fuses


def shard(
    module: TorchRecModel,
    sharding: str,
    table_owner: dict[str, int],
    ranks_per_host: int,
    lr: float,
    kernel: str = "fused",
    optimizer: str = "sgd",
    qcomms: str = "fp32",
    fp16_grad_scale: float | None = None,
    root: nn.Module | None = None,
    prefix: str = "",
) -> nn.Module:
    """Collective. Shard `module.ebc` with DistributedModelParallel on the default group.

    sharding "table_wise": table t whole on rank table_owner[t] (pass our flat plan's placement to
    compare like with like). "table_row_wise": table t split by rows over the ranks of host
    table_owner[t] // ranks_per_host (TorchRec's hierarchical TWRW: ids cross hosts, pooled
    partial sums are reduce-scattered inside the host). "row_wise": every table split by rows
    over all ranks. TorchRec reads the ranks per host from LOCAL_WORLD_SIZE (set by torchrun);
    it must equal `ranks_per_host`.

    kernel "fused": fbgemm's CPU table-batched kernel with the embedding `optimizer` at `lr`
    ("sgd": exact SGD; "rowwise_adagrad": exact row-wise Adagrad, eps 1e-8, as dmt's RowWiseAdagrad)
    applied inside the backward pass (TorchRec's optimizer fusion); the tables then need no
    optimizer of their own. kernel "dense": the tables are plain parameters with dense gradients
    (`lr`, `optimizer` unused); step `table_parameters(dmp)` with any torch optimizer.
    The dense part is wrapped in DDP (TorchRec's default), so gradients are those of the global
    batch mean loss when each rank calls `loss.backward()` on its local mean loss, unscaled: DDP
    averages the dense gradients, and TorchRec divides the pooled-embedding gradients by W in its
    backward all-to-all (`torchrec.distributed.comm_ops.get_gradient_division()`, on by default).
    dmt's own step instead scales the loss by 1/W and sums; both give the same gradients.
    """
    require_torchrec()
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.comm import get_local_size
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_row_wise, table_wise
    from torchrec.distributed.types import ShardingPlan

    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    if kernel == "fused" and optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"the fused kernel takes an optimizer in {FUSED_OPTIMIZERS}, got {optimizer!r}")
    world = dist.get_world_size()
    if sharding != "table_wise" and get_local_size(world) != ranks_per_host:
        raise ValueError(
            f"TorchRec sees {get_local_size(world)} ranks per host (LOCAL_WORLD_SIZE), the layout has {ranks_per_host}"
        )
    full = {t: bag.weight.detach().clone() for t, bag in module.ebc.embedding_bags.items()}
    if sharding == "table_wise":
        per_table = {t: table_wise(rank=table_owner[t], compute_kernel=kernel) for t in full}
    elif sharding == "table_row_wise":
        per_table = {t: table_row_wise(host_index=table_owner[t] // ranks_per_host) for t in full}
    else:
        per_table = {t: row_wise() for t in full}
    ebc_plan = construct_module_sharding_plan(
        module.ebc, per_table, local_size=ranks_per_host, world_size=world, device_type="cpu"
    )
    for param_sharding in ebc_plan.values():  # table_row_wise / row_wise take no kernel argument
        param_sharding.compute_kernel = kernel
    fused = None
    if kernel == "fused":
        opt = EmbOptimType.EXACT_SGD if optimizer == "sgd" else EmbOptimType.EXACT_ROWWISE_ADAGRAD
        fused = {"optimizer": opt, "learning_rate": lr, "eps": 1e-8}
    sharder = EmbeddingBagCollectionSharder(
        fused_params=fused, qcomm_codecs_registry=qcomm_registry(qcomms, fp16_grad_scale)
    )
    dmp = DistributedModelParallel(
        module if root is None else root,
        device=torch.device("cpu"),
        plan=ShardingPlan({f"{prefix}ebc": ebc_plan}),
        sharders=[sharder],
    )
    # Workaround: on CPU TorchRec 1.8's ShardedEmbeddingBagCollection does not take the unsharded
    # module's weights (it loads them only when the module sits on an accelerator) but starts from
    # fresh random ones; copy ours into the local shards.
    with torch.no_grad():
        for table, shards in local_shards(dmp).items():
            for (row, col), local in shards:
                local.copy_(full[table][row : row + local.shape[0], col : col + local.shape[1]])
    return dmp


def qcomm_registry(precision: str, fp16_grad_scale: float | None = None):
    """TorchRec's codecs for pooled embeddings at `precision` ("fp32": none), forward and backward."""
    if precision == "fp32":
        return None
    from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry

    kind = {"fp16": CommType.FP16, "bf16": CommType.BF16}[precision]
    config = QCommsConfig(forward_precision=kind, backward_precision=kind, backward_loss_scale=fp16_grad_scale)
    return get_qcomm_codecs_registry(config, device=torch.device("cpu"))


def shard_table_wise(
    module: TorchRecModel, table_owner: dict[str, int], ranks_per_host: int, lr: float, kernel: str = "fused"
) -> nn.Module:
    """`shard(module, "table_wise", ...)` with fused exact SGD (or the dense kernel)."""
    return shard(module, "table_wise", table_owner, ranks_per_host, lr, kernel)


def local_shards(dmp: nn.Module) -> dict[str, list[tuple[tuple[int, int], Tensor]]]:
    """Table shards this rank holds in a sharded TorchRecModel: {table: [((row, col) offset,
    [rows, cols] view of the kernel's weights)]} (writing to a view writes the table)."""
    out: dict[str, list] = {}
    for key, value in dmp.state_dict().items():
        parts = key.split(".")
        if "embedding_bags" not in parts:
            continue
        table = parts[parts.index("embedding_bags") + 1]
        for shard_ in value.local_shards() if hasattr(value, "local_shards") else []:
            row, col = shard_.metadata.shard_offsets
            out.setdefault(table, []).append(((row, col), shard_.tensor))
    return out


def local_tables(dmp: nn.Module) -> dict[str, Tensor]:
    """Tables this rank holds whole in a table-wise sharded TorchRecModel: {table: [rows, dim]},
    views of the kernel's weights (writing to them writes the table)."""
    out = {}
    for table, shards in local_shards(dmp).items():
        (offset, tensor), *rest = shards
        if rest or offset != (0, 0):
            raise ValueError(f"table {table} is not sharded table-wise (shards at {[o for o, _ in shards]})")
        out[table] = tensor
    return out


def table_parameters(dmp: nn.Module) -> list[nn.Parameter]:
    """The table parameters of a sharded TorchRecModel (for the "dense" kernel's optimizer); tables
    held elsewhere show up as empty [0] tensors."""
    return [p for name, p in dmp.named_parameters() if ".embedding_bags." in f".{name}"]
