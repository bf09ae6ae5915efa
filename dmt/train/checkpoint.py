"""Checkpoints: one file for one device, torch.distributed.checkpoint (DCP) shards for many.

Both hold the same flat mapping, so a sharded checkpoint exports to a one-device file:

    "model/<parameter name>"           tensor   (each rank saves what it holds)
    "optim/<parameter name>/<state>"   tensor   (row-wise Adagrad sums, Adam moments and steps)
    "step"                             tensor

`save` and `resume` pick the form from the topology: a world of one writes DIR/model.pt; a
sharded run writes DIR/checkpoint and, at the end, exports the one-device DIR/model.pt.

A table held in shards is saved, in both forms, under its one-device name: in DCP each rank's
shard is a chunk of the whole tensor at its offsets (`TensorBlock`), so DCP can load any other
cut of it: resuming on another topology or sharding reads each rank's new block from whatever
chunks overlap it. The export (`export_sharded`) streams: it writes the one-device file's
skeleton (every tensor's shape, no bytes), then loads the saved chunks one at a time and writes
each at its place in the file, so that the exporting rank never holds the whole model, only one
chunk (64 MiB at most) at a time; it runs after the run's last collective, so no rank waits on it.

Nothing is ever half-written: a file is written under a temporary name and renamed into place;
a DCP directory is written beside the live one and swapped in after every rank has finished.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from dmt.config import Config, config_from_dict, to_dict
from dmt.errors import UserError
from dmt.guard import allowed_sync

FILE = "model.pt"
SHARDS = "checkpoint"
CHUNK_BYTES = 64 << 20  # DCP chunks of a big tensor hold at most this many bytes (TensorBlock)
EXPORT_ROWS = 1 << 16  # rows per read-modify-write of a column block during the export
EXPORT_BYTES = 64 << 20  # small chunks exported together up to this many bytes

Blocks = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # parameter name -> (offsets, one-device shape)


class TensorBlock(torch.Tensor):
    """A block of a bigger tensor as DCP sees it: the shape is the whole tensor's, the data
    (`local`, at `offsets`) only the block's. It computes nothing. DCP saves and loads it as
    chunks of at most CHUNK_BYTES, consecutive rows of the block (its `__create_write_items__` /
    `__create_chunk_list__` / `__get_tensor_shard__`), so that writing, reading back and exporting
    a big table never needs more than one such chunk of memory beside it."""

    @staticmethod
    def __new__(cls, local: Tensor, offsets: tuple[int, ...], shape: tuple[int, ...]):
        block = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=local.dtype, device=local.device)
        block.local, block.offsets = local, torch.Size(offsets)
        return block

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        raise TypeError(f"a TensorBlock only carries a block to torch.distributed.checkpoint, it cannot run {func}")

    def pieces(self) -> list[tuple[torch.Size, Tensor]]:
        """-> [(offsets in the whole tensor, view of `local`)], CHUNK_BYTES or less each."""
        local = self.local
        if local.dim() == 0 or local.shape[0] == 0:
            return [(self.offsets, local)]
        rows = max(1, CHUNK_BYTES // max(local[0].numel() * local.element_size(), 1))
        return [
            (torch.Size((self.offsets[0] + r, *self.offsets[1:])), local[r : r + rows])
            for r in range(0, local.shape[0], rows)
        ]

    def __create_write_items__(self, fqn: str, obj: object) -> list[WriteItem]:
        properties = TensorProperties.create_from_tensor(self.local)
        return [
            WriteItem(
                index=MetadataIndex(fqn, offsets),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(ChunkStorageMetadata(offsets, piece.shape), properties, self.shape),
            )
            for offsets, piece in self.pieces()
        ]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets, piece.shape) for offsets, piece in self.pieces()]

    def __get_tensor_shard__(self, index: MetadataIndex) -> Tensor:
        return next(piece for offsets, piece in self.pieces() if offsets == torch.Size(index.offset))


def _local(value: Tensor) -> Tensor:
    return value.local if isinstance(value, TensorBlock) else value


def _as_block(value: Tensor, where: tuple[tuple[int, ...], tuple[int, ...]] | None, param: Tensor) -> Tensor:
    """A parameter's tensor (or its optimizer state) as the block of the one-device tensor it is:
    the parameter's shape -> its block; one value per row -> that block of rows; else as it is. A
    whole tensor above CHUNK_BYTES is a block at the origin (DCP then saves it in chunks)."""
    if where is None:
        big = value.dim() > 0 and value.numel() * value.element_size() > CHUNK_BYTES
        return TensorBlock(value, (0,) * value.dim(), tuple(value.shape)) if big else value
    offsets, shape = where
    if value.shape == param.shape:
        return TensorBlock(value, offsets, shape)
    if value.dim() == 1 and value.shape[0] == param.shape[0]:
        return TensorBlock(value, offsets[:1], shape[:1])
    return value


def flat_state(
    named_params: list[tuple[str, nn.Parameter]],
    model_state: dict[str, Tensor],
    optimizers: list[torch.optim.Optimizer],
    step: int,
    blocks: Blocks | None = None,
) -> dict[str, Tensor]:
    """blocks: the parameters held as shards (ShardedModel.blocks()); they and their optimizer
    state become TensorBlocks of the one-device tensors."""
    blocks = blocks or {}
    params = dict(named_params)
    name_of = {id(p): n for n, p in named_params}
    out = {f"model/{n}": _as_block(t, blocks.get(n), params[n]) if n in params else t for n, t in model_state.items()}
    for opt in optimizers:
        for p, state in opt.state.items():
            name = name_of[id(p)]
            for key, value in state.items():
                value = value if isinstance(value, Tensor) else torch.tensor(value)
                out[f"optim/{name}/{key}"] = _as_block(value, blocks.get(name), p)
    out["step"] = torch.tensor(step)
    return out


def model_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's state dict inside a flat checkpoint state ("model/<name>" -> "<name>")."""
    return {k[len("model/") :]: v for k, v in state.items() if k.startswith("model/")}


def restore(
    state: dict[str, Tensor],
    model: nn.Module,
    held: set[str],
    named_params: list[tuple[str, nn.Parameter]],
    optimizers: list[torch.optim.Optimizer],
) -> int:
    """Load a flat state into `model` and the optimizers; `held`: the model keys this rank must get.
    -> step"""
    weights = model_weights(state)
    if set(weights) != held:
        missing, unexpected = sorted(held - set(weights)), sorted(set(weights) - held)
        raise UserError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict({k: _local(v) for k, v in weights.items()}, strict=False)
    name_of = {id(p): n for n, p in named_params}
    for opt in optimizers:
        # through the optimizer's own load_state_dict, which puts each state tensor where torch
        # wants it: on its parameter's device and dtype (a step counter stays on the host)
        saved = opt.state_dict()
        params = [p for group in opt.param_groups for p in group["params"]]
        for index, p in enumerate(params):
            prefix = f"optim/{name_of[id(p)]}/"
            entries = {k[len(prefix) :]: _local(v) for k, v in state.items() if k.startswith(prefix)}
            if entries:
                saved["state"][index] = entries
        opt.load_state_dict(saved)
    with allowed_sync("the step the checkpoint was taken at"):
        return int(state["step"])


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_file(directory: Path, cfg: Config, state: dict[str, Tensor]) -> Path:
    """One-device checkpoint DIR/model.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    _fsync_write(path, lambda tmp: torch.save({"config": to_dict(cfg), "state": state}, tmp))
    return path


def load_file(location: str | Path) -> tuple[Config, dict[str, Tensor]]:
    """-> (config, flat state) from DIR/model.pt or a file path."""
    path = Path(location)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise UserError(f"no checkpoint at {location} (expected {path})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return config_from_dict(blob["config"]), blob["state"]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's bad input
        raise UserError(f"checkpoint {path} is unreadable: {e}") from None


def save_sharded(directory: Path, cfg: Config, state: dict[str, Tensor]) -> Path:
    """Collective: every rank saves what it holds into DIR/checkpoint (DCP), swapped in atomically."""
    final, tmp, old = directory / SHARDS, directory / f".{SHARDS}.tmp", directory / f".{SHARDS}.old"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        (tmp / "config.json").write_text(json.dumps(to_dict(cfg)))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def sharded_location(directory: Path) -> Path | None:
    for p in (directory / SHARDS, directory / f".{SHARDS}.old"):
        if (p / ".metadata").is_file():
            return p
    return None


def load_sharded(
    location: Path,
    wanted: list[str] | None = None,
    prefixes: tuple[str, ...] = (),
    blocks: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
) -> dict[str, Tensor]:
    """Collective load of the keys this rank needs: `wanted` exactly, plus all keys under `prefixes`.
    blocks: key prefix ("model/<name>" or "optim/<name>/") -> (offsets, one-device shape, held
    shape) of a parameter held as a shard: its keys load as that block (from any cut they were
    saved in), its per-row optimizer state as those rows."""
    meta = dcp.FileSystemReader(str(location)).read_metadata().state_dict_metadata
    keys = set(wanted or [])
    if prefixes:
        keys |= {k for k in meta if k.startswith(prefixes)}
    template = {}
    for k in sorted(keys):
        if k not in meta:
            raise UserError(f"sharded checkpoint {location} lacks {k}")
        m = meta[k]
        size = tuple(getattr(m, "size", ()))
        where = next((b for prefix, b in (blocks or {}).items() if k == prefix or k.startswith(prefix + "/")), None)
        if where is not None and size == where[1]:
            template[k] = TensorBlock(torch.empty(where[2], dtype=m.properties.dtype), where[0], size)
        elif where is not None and len(size) == 1 and size[0] == where[1][0]:
            template[k] = TensorBlock(torch.empty(where[2][:1], dtype=m.properties.dtype), where[0][:1], size)
        else:
            template[k] = torch.empty(size, dtype=m.properties.dtype)
    dcp.load(template, checkpoint_id=str(location))
    return template


def export_sharded(location: Path, out_dir: Path) -> Path:
    """Write a DCP checkpoint as the one-device DIR/model.pt, chunk by chunk (run on one rank, no
    collective): first the file's skeleton (every tensor's shape, no bytes), then each chunk the
    ranks saved, loaded alone and written at its place in the file, so that the exporting rank
    holds at most EXPORT_BYTES of chunks (or one chunk, of at most CHUNK_BYTES) at a time."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    cfg = config_from_dict(json.loads((location / "config.json").read_text()))
    meta = dcp.FileSystemReader(str(location)).read_metadata().state_dict_metadata
    tensors = {k: m for k, m in sorted(meta.items()) if isinstance(m, TensorStorageMetadata)}
    tmp = out_dir / f".{FILE}.export-{os.getpid()}"
    with FakeTensorMode():
        skeleton = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in tensors.items()}
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save({"config": to_dict(cfg), "state": skeleton}, tmp)
    placed = torch.load(tmp, map_location="meta", weights_only=True)["state"]
    chunks = [(k, c, m) for k, m in tensors.items() for c in m.chunks]
    fd = os.open(tmp, os.O_RDWR)
    try:
        while chunks:
            batch: dict[str, TensorBlock] = {}
            size = 0
            for key, c, m in list(chunks):  # one load: small chunks of distinct tensors, or one big chunk
                nbytes = int(torch.Size(c.sizes).numel()) * m.properties.dtype.itemsize
                if key in batch or (batch and size + nbytes > EXPORT_BYTES):
                    continue
                local = torch.empty(tuple(c.sizes), dtype=m.properties.dtype, device="cpu")
                batch[key] = TensorBlock(local, tuple(c.offsets), tuple(m.size))
                size += nbytes
                chunks.remove((key, c, m))
            with warnings.catch_warnings():  # one process reads on purpose: DCP need not say so
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
                dcp.load(batch, checkpoint_id=str(location), no_dist=True)
            for key, block in batch.items():
                _write_block(fd, placed[key], block.local, list(block.offsets))
        os.fsync(fd)
    finally:
        os.close(fd)
    path = out_dir / FILE
    os.replace(tmp, path)
    return path


def _write_block(fd: int, whole: Tensor, block: Tensor, offsets: list[int]) -> None:
    """Write `block` (at `offsets` of the one-device tensor `whole`, a meta tensor that knows where
    its bytes start in the file) into the file."""
    base = whole.untyped_storage()._checkpoint_offset
    item = block.element_size()
    data = block.detach().cpu().contiguous()
    if block.dim() < 2 or tuple(block.shape[1:]) == tuple(whole.shape[1:]):  # whole rows: one span
        row = item * (int(torch.Size(whole.shape[1:]).numel()) if whole.dim() > 1 else 1)
        _pwrite_all(fd, data.reshape(-1).view(torch.uint8).numpy(), base + (offsets[0] if offsets else 0) * row)
        return
    width, (r0, c0) = whole.shape[1], offsets[:2]
    for start in range(0, block.shape[0], EXPORT_ROWS):
        rows = data[start : start + EXPORT_ROWS]
        at = base + (r0 + start) * width * item
        span = bytearray(os.pread(fd, rows.shape[0] * width * item, at))
        full = torch.frombuffer(span, dtype=block.dtype).view(rows.shape[0], width)
        full[:, c0 : c0 + block.shape[1]] = rows
        _pwrite_all(fd, full.view(torch.uint8).numpy(), at)


def _pwrite_all(fd: int, data, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def save(model, optimizers: list[torch.optim.Optimizer], topo, cfg: Config, out: Path, step: int) -> None:
    """Collective. model: a ShardedModel; its `module` holds this rank's part under one-device names."""
    module = model.module
    blocks = model.blocks() if hasattr(model, "blocks") else {}
    state = flat_state(list(module.named_parameters()), module.state_dict(), optimizers, step, blocks)
    if topo.distributed:
        save_sharded(out, cfg, state)
    else:
        save_file(out, cfg, state)


def export(topo, out: Path) -> None:
    """Not collective: the first rank writes a sharded run's checkpoint as the one-device
    DIR/model.pt. Call it after the run's last collective, so that no rank waits inside one
    (under a collective timeout) while the export runs."""
    if topo.distributed and topo.rank == 0:
        export_sharded(out / SHARDS, out)


def resume(model, optimizers: list[torch.optim.Optimizer], topo, out: Path) -> int:
    """Collective. Load the latest checkpoint in `out` into the model and optimizers, if there is
    one. -> the step to start from (0 without a checkpoint)."""
    module = model.module
    named = list(module.named_parameters())
    held = set(module.state_dict())
    if not topo.distributed:
        if not (out / FILE).exists():
            return 0
        _, state = load_file(out)
        return restore(state, module, held, named, optimizers)
    location = sharded_location(out)
    if location is None:
        return 0
    wanted = [f"model/{n}" for n in sorted(held)] + ["step"]
    params = dict(named)
    blocks = {}
    for name, (offsets, shape) in model.blocks().items():
        local = tuple(params[name].shape)
        blocks[f"model/{name}"] = blocks[f"optim/{name}"] = (offsets, shape, local)
    state = load_sharded(location, wanted, prefixes=tuple(f"optim/{n}/" for n, _ in named), blocks=blocks)
    return restore(state, module, held, named, optimizers)
