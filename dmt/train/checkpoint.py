"""Checkpoints: one file for one device, torch.distributed.checkpoint (DCP) shards for many.

Both hold the same flat mapping, so a sharded checkpoint exports to a one-device file:

    "model/<parameter name>"           tensor   (each rank saves what it holds)
    "optim/<parameter name>/<state>"   tensor   (row-wise Adagrad sums, Adam moments and steps)
    "step"                             tensor

`save` and `resume` pick the form from the topology: a world of one writes DIR/model.pt; a
sharded run writes DIR/checkpoint and, at the end, exports the merged DIR/model.pt.

Nothing is ever half-written: a file is written under a temporary name and renamed into place;
a DCP directory is written beside the live one and swapped in after every rank has finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn

from dmt.config import Config, config_from_dict, to_dict
from dmt.errors import UserError
from dmt.guard import allowed_sync

FILE = "model.pt"
SHARDS = "checkpoint"


def flat_state(
    named_params: list[tuple[str, nn.Parameter]],
    model_state: dict[str, Tensor],
    optimizers: list[torch.optim.Optimizer],
    step: int,
) -> dict[str, Tensor]:
    name_of = {id(p): n for n, p in named_params}
    out = {f"model/{n}": t for n, t in model_state.items()}
    for opt in optimizers:
        for p, state in opt.state.items():
            for key, value in state.items():
                out[f"optim/{name_of[id(p)]}/{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
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
    model.load_state_dict(weights, strict=False)
    name_of = {id(p): n for n, p in named_params}
    for opt in optimizers:
        # through the optimizer's own load_state_dict, which puts each state tensor where torch
        # wants it: on its parameter's device and dtype (a step counter stays on the host)
        saved = opt.state_dict()
        params = [p for group in opt.param_groups for p in group["params"]]
        for index, p in enumerate(params):
            prefix = f"optim/{name_of[id(p)]}/"
            entries = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
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


def load_sharded(location: Path, wanted: list[str] | None = None, prefixes: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Collective load of the keys this rank needs: `wanted` exactly, plus all keys under `prefixes`."""
    meta = dcp.FileSystemReader(str(location)).read_metadata().state_dict_metadata
    keys = set(wanted or [])
    if prefixes:
        keys |= {k for k in meta if k.startswith(prefixes)}
    template = {}
    for k in sorted(keys):
        if k not in meta:
            raise UserError(f"sharded checkpoint {location} lacks {k}")
        m = meta[k]
        template[k] = torch.empty(tuple(m.size), dtype=m.properties.dtype)
    dcp.load(template, checkpoint_id=str(location))
    return template


def export_sharded(location: Path, out_dir: Path) -> Path:
    """Merge a DCP checkpoint into the one-device DIR/model.pt (run on one rank)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    cfg = config_from_dict(json.loads((location / "config.json").read_text()))
    tmp = out_dir / f".merged-{os.getpid()}.pt"
    dcp_to_torch_save(str(location), str(tmp))
    state = torch.load(tmp, map_location="cpu", weights_only=True)
    tmp.unlink()
    return save_file(out_dir, cfg, state)


def save(model, optimizers: list[torch.optim.Optimizer], topo, cfg: Config, out: Path, step: int) -> None:
    """Collective. model: a ShardedModel; its `module` holds this rank's part under one-device names."""
    module = model.module
    state = flat_state(list(module.named_parameters()), module.state_dict(), optimizers, step)
    if topo.distributed:
        save_sharded(out, cfg, state)
    else:
        save_file(out, cfg, state)


def export(topo, out: Path) -> None:
    """Not collective: the first rank merges a sharded run's checkpoint into the one-device
    DIR/model.pt. Call it after the run's last collective, so that no rank waits inside one
    (under a collective timeout) while the merge runs."""
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
    state = load_sharded(location, wanted, prefixes=tuple(f"optim/{n}/" for n, _ in named))
    return restore(state, module, held, named, optimizers)
