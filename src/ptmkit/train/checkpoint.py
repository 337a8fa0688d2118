"""Training checkpoints: model (safetensors), optimizer/scheduler/precision state, every RNG and the data
position, written to a temporary directory and renamed into place, keeping the last k.

A checkpoint directory `step-00001234/` holds model.safetensors, optim.pt (tensors + plain containers only,
read back with weights_only=True) and state.json (step, data position, Python/NumPy RNG); with an objective that
has auxiliary networks (ELECTRA's generator), also objective.safetensors: their tensors not shared with the model.

Checkpoints verify themselves: manifest.json, written last inside the temporary directory (so it exists exactly when
every other file is complete), lists each file with its size and SHA-256:

    {"version": 1, "algorithm": "sha256",
     "files": {"model.safetensors": {"size": 1234, "sha256": "9f86d0..."}, "optim.pt": {...}, "state.json": {...}}}

A resume takes the newest checkpoint that verifies (newest_intact_checkpoint) and names every broken one it passes
over; every file read names the file when it is truncated or corrupt (BrokenCheckpointError). SHA-256 runs at ~1.2
GB/s per core here (SHA-NI), files are hashed in parallel: ~1 s for a 1.3 GB BERT-base checkpoint, on save and on
resume. Checkpoints written before manifests existed are accepted after structural checks (state.json parses, every
file is there, safetensors headers cover their files, torch zips have their directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from ptmkit import atomic
from ptmkit.log import get as get_logger

log = get_logger(__name__)

PREFIX = "step-"
OBJECTIVE_FILE = "objective.safetensors"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# what a file read raises when the bytes are wrong: safetensors' header checks, torch's zip reader (RuntimeError),
# the unpickler, JSON; a missing file is an OSError
READ_ERRORS = (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
               ValueError, UnicodeDecodeError)
# safetensors' own failures only: a RuntimeError from load_state_dict is a model mismatch, reported as such
SAFETENSORS_ERRORS = (SafetensorError, OSError)
READ_FIX = ("restore the file from a backup, or move this checkpoint directory aside so that --resume falls back "
            "to the previous one")


class BrokenCheckpointError(ValueError):
    """A training checkpoint has a missing, truncated or corrupt file; the message names the file, the fault and
    the fix."""


def error_detail(e: BaseException) -> str:
    """`Type: first line of the message`, for naming a fault in one line."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _fault(path: Path, e: BaseException) -> str:
    if not path.exists():
        return "missing"
    return f"{'unreadable' if isinstance(e, OSError) else 'truncated or corrupt'} ({error_detail(e)})"


@contextlib.contextmanager
def reading(path: str | Path, fix: str = READ_FIX, errors: tuple[type[BaseException], ...] = READ_ERRORS
            ) -> Iterator[None]:
    """Read one checkpoint file inside this: a failure names the file and what is wrong with it."""
    path = Path(path)
    try:
        yield
    except errors as e:
        if isinstance(e, BrokenCheckpointError):
            raise
        raise BrokenCheckpointError(f"{path}: {_fault(path, e)}; {fix}") from e


def read_state(path: str | Path) -> dict[str, Any]:
    """state.json of a checkpoint directory."""
    f = Path(path) / "state.json"
    with reading(f):
        state = json.loads(f.read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no 'step' in it")
    return state


def load_torch_file(f: Path) -> Any:
    """torch.load(weights_only=True) of a checkpoint file, naming the file when it is broken."""
    with reading(f):
        return torch.load(f, map_location="cpu", weights_only=True)


# ---- manifest -------------------------------------------------------------------------------------------------------
def _sha256(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # releases the GIL: files hash in parallel threads


def _sha256_or_fault(f: Path) -> str:
    try:
        return _sha256(f)
    except OSError as e:
        return f"unreadable ({error_detail(e)})"


def _sha256_all(files: list[Path], fn=_sha256) -> list[str]:
    if len(files) <= 1:
        return [fn(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, files))


def write_manifest(directory: str | Path) -> Path:
    """Record every file under `directory` (relative path, size, SHA-256) in manifest.json. Call it last, inside the
    temporary directory, before the directory is published."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = _sha256_all(files)
    manifest = {"version": MANIFEST_VERSION, "algorithm": "sha256",
                "files": {f.relative_to(directory).as_posix(): {"size": f.stat().st_size, "sha256": d}
                          for f, d in zip(files, digests)}}
    out = directory / MANIFEST
    out.write_text(json.dumps(manifest, indent=1) + "\n")  # the directory is published atomically, fsynced then
    return out


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("algorithm") != "sha256" or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"not a version-{MANIFEST_VERSION} sha256 manifest")
    for rel, entry in manifest["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or "sha256" not in entry:
            raise ValueError(f"bad entry for {rel!r}")
    return manifest["files"]


def _legacy_faults(path: Path) -> list[str]:
    """A checkpoint without a manifest (written before manifests existed): state.json parses, every file of its
    format is there, safetensors headers cover their files and torch zips have their central directory (cheap
    checks that catch a truncation; a changed byte is not caught without checksums)."""
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no 'step' in it")
    except (OSError, ValueError) as e:
        return [f"state.json is {_fault(path / 'state.json', e)}"]
    if state.get("format") == "dcp":
        files = ["dcp/.metadata", "train.pt"] + [f"rng-rank{r}.pt" for r in range(int(state.get("world_size", 1)))]
    else:
        files = ["model.safetensors", "optim.pt"] + ([OBJECTIVE_FILE] if (path / OBJECTIVE_FILE).exists() else [])
    faults = [f"{rel} is missing" for rel in files if not (path / rel).is_file()]
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):  # validates the header against the file's length
                    pass
            elif f.suffix == ".pt":
                zipfile.ZipFile(f).close()  # torch.save writes a zip; a truncated one has lost its directory
        except (SafetensorError, OSError, zipfile.BadZipFile) as e:
            faults.append(f"{rel} is truncated or corrupt ({error_detail(e)})")
    return faults


def verify_checkpoint(path: str | Path, checksums: bool = True) -> list[str]:
    """What is wrong with a checkpoint directory, one line per fault (empty: intact). With a manifest: every file
    listed is there with its size (always) and its SHA-256 (checksums=True); without one: see _legacy_faults."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        if not (path / "state.json").exists():
            return ["state.json and manifest.json are missing (not a complete checkpoint)"]
        return _legacy_faults(path)
    try:
        files = _read_manifest(path)
    except (OSError, ValueError, AttributeError) as e:
        return [f"{MANIFEST} is unreadable ({error_detail(e)})"]
    faults, to_hash = [], []
    for rel, entry in files.items():
        f = path / rel
        if not f.is_file():
            faults.append(f"{rel} is missing")
        elif (size := f.stat().st_size) != entry["size"]:
            how = "truncated" if size < entry["size"] else "longer than written"
            faults.append(f"{rel} is {size} bytes, the manifest says {entry['size']} ({how})")
        else:
            to_hash.append(rel)
    if checksums:
        for rel, digest in zip(to_hash, _sha256_all([path / rel for rel in to_hash], _sha256_or_fault)):
            if digest.startswith("unreadable"):
                faults.append(f"{rel} is {digest}")
            elif digest != files[rel]["sha256"]:
                faults.append(f"{rel} does not match its SHA-256 in the manifest (corrupt: its bytes changed after "
                              "it was written)")
    return faults


def check_checkpoint(path: str | Path, checksums: bool = True) -> None:
    """Raise BrokenCheckpointError naming every fault of the checkpoint at `path` (see verify_checkpoint)."""
    faults = verify_checkpoint(path, checksums)
    if faults:
        raise BrokenCheckpointError(
            f"checkpoint {path} is broken: " + "; ".join(faults) + ". Restore its files from a backup, or use an "
            f"earlier checkpoint of the run ({Path(path).parent})")


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


def save_torch(obj: Any, path: Path) -> None:
    """torch.save, with the system's refusal kept as what it is: torch reports a full disk or a file-size limit as
    a bare RuntimeError ("unexpected pos ..."), which is turned back into the OSError (ENOSPC / EFBIG) it was, so
    the user is told which file and why."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        import errno
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        written = path.stat().st_size if path.exists() else 0
        if limit != resource.RLIM_INFINITY and written + (1 << 16) >= limit:
            raise OSError(errno.EFBIG, "File too large", str(path)) from e
        if shutil.disk_usage(path.parent).free < (1 << 20):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise


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
    keep_steps: tuple[int, ...] | list[int] = (),
) -> Path:
    """Write checkpoint `step` atomically; a crash mid-write leaves earlier checkpoints untouched. Rotation keeps
    the newest `keep_last` and every step in `keep_steps`."""
    final = Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"
    with atomic.atomic_dir(final) as tmp:  # a crash mid-write leaves earlier checkpoints untouched
        save_safetensors_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) tensors
        if objective_module is not None:
            own = objective_tensors(objective_module, model)
            save_file({k: v.detach().contiguous().clone() for k, v in own.items()}, str(tmp / OBJECTIVE_FILE))
        save_torch(
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
        write_manifest(tmp)  # last: it vouches for every file above
    rotate(run_dir, step, keep_last, keep_steps)
    return final


def _step_dirs(run_dir: str | Path) -> list[Path]:
    """Every published checkpoint directory `step-<digits>`, oldest first (hidden temporaries are not among them)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    return int(Path(path).name[len(PREFIX):])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted writes are ignored)."""
    return [p for p in _step_dirs(run_dir) if (p / "state.json").exists()]


def rotate(run_dir: str | Path, step: int, keep_last: int, keep_steps: tuple[int, ...] | list[int] = ()) -> None:
    """Keep the newest `keep_last` checkpoints up to `step` (the one just written), and every checkpoint whose step
    is in `keep_steps` (milestones, e.g. the points of a learning curve). Newer ones (left when a resume fell back
    from a broken checkpoint) stay until the run writes their step again, so an intact one is never deleted in
    favour of a broken one."""
    if keep_last <= 0:
        return
    for old in [p for p in list_checkpoints(run_dir) if step_of(p) <= step][:-keep_last]:
        if step_of(old) not in keep_steps:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def newest_intact_checkpoint(run_dir: str | Path, checksums: bool = True) -> Path | None:
    """The newest checkpoint of a run that verifies (verify_checkpoint), for a resume; None when the run has none.
    Each broken checkpoint passed over is named, with its faults, in a warning; when every one is broken,
    BrokenCheckpointError names each and the fix. In a distributed run rank 0 verifies and every rank gets its
    answer (the files are read once, and all ranks resume from the same step)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box: list[Any] = [None]
        if dist.get_rank() == 0:
            try:
                found = _newest_intact(run_dir, checksums)
                box = [("ok", None if found is None else str(found))]
            except BrokenCheckpointError as e:
                box = [("error", str(e))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise BrokenCheckpointError(value)
        return None if value is None else Path(value)
    return _newest_intact(run_dir, checksums)


def _newest_intact(run_dir: str | Path, checksums: bool) -> Path | None:
    broken: list[tuple[Path, list[str]]] = []
    candidates = list(reversed(_step_dirs(run_dir)))
    for i, ckpt in enumerate(candidates):
        faults = verify_checkpoint(ckpt, checksums)
        if faults:
            log.warning(f"checkpoint {ckpt} is broken: {'; '.join(faults)}"
                        + ("; trying the one before it" if i + 1 < len(candidates) else ""))
            broken.append((ckpt, faults))
            continue
        if broken:
            names = ", ".join(p.name for p, _ in broken)
            log.warning(f"resuming from {ckpt}, the newest intact checkpoint (step {step_of(ckpt)}); the broken "
                        f"{names} {'is' if len(broken) == 1 else 'are'} left in place for inspection and replaced "
                        "when the run writes that step again")
        if not (ckpt / MANIFEST).exists():
            log.info(f"checkpoint {ckpt} predates checkpoint manifests: its files are there and their structure is "
                     "intact, but their contents have no checksums to verify")
        return ckpt
    if broken:
        lines = "\n".join(f"  {p}: {'; '.join(f)}" for p, f in broken)
        raise BrokenCheckpointError(
            f"--resume: no intact checkpoint in {Path(run_dir) / 'checkpoints'}:\n{lines}\n"
            "Start the run afresh (without --resume, or with --overwrite to replace the folder), or restore the "
            "broken files from a backup.")
    return None


def load_checkpoint(path: str | Path, model, optimizer, scheduler, precision, objective_module=None) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns state.json (step, data position, extra)."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (state.json missing)")
    state = read_state(path)  # first: the cheapest file to find broken
    with reading(path / "model.safetensors", errors=SAFETENSORS_ERRORS):
        missing, unexpected = load_safetensors_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    _load_objective(path, model, objective_module)
    blob = load_torch_file(path / "optim.pt")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    precision.load_state_dict(blob["precision"])
    set_rng_state(state["rng"], blob["torch_rng"], blob["cuda_rng"])
    return state


def load_checkpoint_weights(path: str | Path, model: torch.nn.Module, objective_module=None) -> None:
    """Only the weights of a single-process checkpoint (the model, strictly, and the objective's networks)."""
    f = Path(path) / "model.safetensors"
    with reading(f, errors=SAFETENSORS_ERRORS):
        load_safetensors_model(model, str(f))
    _load_objective(Path(path), model, objective_module)


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
    with reading(path / OBJECTIVE_FILE, errors=SAFETENSORS_ERRORS):
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
