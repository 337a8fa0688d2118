"""Distributed checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards in parallel,
and a checkpoint loads into any other layout (2 FSDP ranks -> 1 process, 1 -> 2, FSDP -> FSDP x TP), because
DCP stores each tensor by its name and global shape and reshards on load.

A checkpoint directory `step-00001234/` in this format holds:
  dcp/            model + optimizer state (names as the TrainingModule's: model.*, objective.*), via DCP
  train.pt        scheduler and precision state (identical on every rank; written by rank 0)
  rng-rank{r}.pt  each rank's torch RNG (dropout draws differ per rank)
  state.json      step, data position, Python/NumPy RNG, "format": "dcp", the world size that wrote it
  manifest.json   every file above with its size and SHA-256, written last (see train/checkpoint.py)
It is written under a temporary name and renamed into place by rank 0 after every rank has finished, so a crash
mid-write leaves the earlier checkpoints intact (as the single-process format does).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)

from ptmkit import atomic
from ptmkit.train.checkpoint import (
    PREFIX, BrokenCheckpointError, error_detail, load_torch_file, read_state, rng_state, rotate, save_torch, set_rng_state,
    write_manifest,
)

FORMAT = "dcp"


def is_dcp_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "dcp" / ".metadata").exists()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns when it runs without a process group; loading/saving in one process is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _state(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    sd = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        sd["optim"] = get_optimizer_state_dict(module, optimizer)
    return sd


def save_dcp_checkpoint(run_dir: str | Path, step: int, module, optimizer, scheduler, precision,
                        data_state: dict[str, Any], keep_last: int = 3, extra: dict[str, Any] | None = None,
                        keep_steps: tuple[int, ...] | list[int] = ()) -> Path:
    """Collective: every rank calls it. Returns the final directory (rotation as in checkpoint.rotate)."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:08d}", root / f".tmp-{PREFIX}{step:08d}"
    rank = _rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    with _single_process_ok():
        dcp.save(_state(module, optimizer), checkpoint_id=str(tmp / "dcp"))
    save_torch({"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        save_torch({"scheduler": scheduler.state_dict(), "precision": precision.state_dict()}, tmp / "train.pt")
        state = {"step": step, "data": data_state, "rng": rng_state(), "extra": extra or {}, "format": FORMAT,
                 "world_size": _world()}
        (tmp / "state.json").write_text(json.dumps(state))
        write_manifest(tmp)  # last, every rank's files complete: it vouches for all of them
        atomic.publish_dir(tmp, final)
        rotate(run_dir, step, keep_last, keep_steps)
    _barrier()
    return final


def load_dcp_checkpoint(path: str | Path, module, optimizer, scheduler, precision) -> dict[str, Any]:
    """Collective. Restores what save_dcp_checkpoint wrote, resharded to this run's layout; returns state.json."""
    path = Path(path)
    if not is_dcp_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a distributed (DCP) checkpoint: {path / 'dcp' / '.metadata'} missing")
    state = read_state(path)
    sd = _state(module, optimizer)
    _dcp_load(sd, path)
    set_model_state_dict(module, sd["model"])
    if optimizer is not None:
        set_optimizer_state_dict(module, optimizer, sd["optim"])
    blob = load_torch_file(path / "train.pt")
    scheduler.load_state_dict(blob["scheduler"])
    precision.load_state_dict(blob["precision"])
    own = path / f"rng-rank{_rank()}.pt"  # a rank the writer did not have takes rank 0's stream
    rng = load_torch_file(own if own.exists() else path / "rng-rank0.pt")
    set_rng_state(state["rng"], rng["torch_rng"], rng["cuda_rng"])
    return state


def _dcp_load(sd: dict[str, Any], path: Path) -> None:
    """dcp.load, naming the checkpoint and each rank's cause when its shards cannot be read (DCP raises a
    CheckpointException, a BaseException, with per-rank tracebacks that name neither the checkpoint nor the file)."""
    try:
        with _single_process_ok():
            dcp.load(sd, checkpoint_id=str(path / "dcp"))
    except CheckpointException as e:
        causes = "; ".join(f"rank {r}: {error_detail(exc)}" for r, (exc, _) in sorted(e.failures.items()))
        raise BrokenCheckpointError(
            f"{path / 'dcp'}: could not be read ({causes}); if the model matches the one that wrote it, its shards "
            "are truncated or corrupt: restore them from a backup, or move this checkpoint directory aside so that "
            "--resume falls back to the previous one") from e


def load_dcp_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Only the model weights of a DCP checkpoint, into `module` (any layout, or one plain process)."""
    sd = {"model": get_model_state_dict(module)}
    _dcp_load(sd, Path(path))
    set_model_state_dict(module, sd["model"])


def full_model_state(module: torch.nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """Collective: the unsharded weights on CPU, on rank 0 (other ranks get {}), or on every rank."""
    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
    return {k: v.detach().cpu() for k, v in sd.items()} if everywhere else sd
