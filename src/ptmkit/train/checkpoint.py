"""Training checkpoints: model (safetensors), optimizer/scheduler/precision state, every RNG and the data
position, written to a temporary directory and renamed into place, keeping the last k.

A checkpoint directory `step-00001234/` holds model.safetensors, optim.pt (tensors + plain containers only,
read back with weights_only=True) and state.json (step, data position, Python/NumPy RNG); with an objective that
has auxiliary networks (ELECTRA's generator), also objective.safetensors: their tensors not shared with the model.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from ptmkit import atomic

PREFIX = "step-"
OBJECTIVE_FILE = "objective.safetensors"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any], torch_cpu: torch.Tensor, torch_cuda: list[torch.Tensor] | None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch_cpu)
    if torch_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(torch_cuda)


def objective_tensors(objective_module: torch.nn.Module, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The auxiliary module's state without the tensors it shares with the model (those live in model.safetensors)."""
    shared = {id(t) for t in model.state_dict(keep_vars=True).values()}
    return {k: v for k, v in objective_module.state_dict(keep_vars=True).items() if id(v) not in shared}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    precision,
    data_state: dict[str, Any],
    keep_last: int = 3,
    extra: dict[str, Any] | None = None,
    objective_module: torch.nn.Module | None = None,
) -> Path:
    """Write checkpoint `step` atomically; a crash mid-write leaves earlier checkpoints untouched."""
    final = Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"
    with atomic.atomic_dir(final) as tmp:  # a crash mid-write leaves earlier checkpoints untouched
        save_safetensors_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) tensors
        if objective_module is not None:
            own = objective_tensors(objective_module, model)
            save_file({k: v.detach().contiguous().clone() for k, v in own.items()}, str(tmp / OBJECTIVE_FILE))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "precision": precision.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            tmp / "optim.pt",
        )
        state = {"step": step, "data": data_state, "rng": rng_state(), "extra": extra or {}}
        (tmp / "state.json").write_text(json.dumps(state))
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted writes are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler, precision, objective_module=None) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns state.json (step, data position, extra)."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (state.json missing)")
    missing, unexpected = load_safetensors_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    _load_objective(path, model, objective_module)
    blob = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    precision.load_state_dict(blob["precision"])
    state = json.loads((path / "state.json").read_text())
    set_rng_state(state["rng"], blob["torch_rng"], blob["cuda_rng"])
    return state


def _load_objective(path: Path, model, objective_module) -> None:
    has_file = (path / OBJECTIVE_FILE).exists()
    if objective_module is None:
        if has_file:
            raise ValueError(f"checkpoint {path} holds an objective's auxiliary networks ({OBJECTIVE_FILE}) but this "
                             "run's objective has none; resume with the objective the run was started with")
        return
    if not has_file:
        raise ValueError(f"checkpoint {path} has no {OBJECTIVE_FILE} but this run's objective has auxiliary networks "
                         "(e.g. ELECTRA's generator); resume with the objective the run was started with")
    own = objective_tensors(objective_module, model)
    saved = load_file(path / OBJECTIVE_FILE)
    if set(saved) != set(own):
        raise ValueError(f"{path / OBJECTIVE_FILE} does not match the objective: "
                         f"missing {sorted(set(own) - set(saved))}, unexpected {sorted(set(saved) - set(own))}")
    with torch.no_grad():
        for k, t in own.items():
            if t.shape != saved[k].shape:
                raise ValueError(f"{path / OBJECTIVE_FILE}: {k} is {tuple(saved[k].shape)}, "
                                 f"the objective's is {tuple(t.shape)}")
            t.copy_(saved[k])
