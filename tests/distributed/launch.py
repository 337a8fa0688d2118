"""Run `ptm pretrain` under torchrun (gloo, CPU) from a test, and read back its training losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ptmkit.train.logging import read_metrics


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(nproc: int, target: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N TARGET...` with one thread per rank (the CI machine has two cores);
    a failure raises with the launch's output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def torchrun(nproc: int, config: Path, out: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`torchrun ... -m ptmkit.cli pretrain CONFIG --out OUT ...`."""
    return _launch(nproc, ["-m", "ptmkit.cli", *pretrain_args(config, out, *overrides)], timeout)


def torchrun_many(nproc: int, runs: list[list[str]], work: Path, timeout: int = 480) -> subprocess.CompletedProcess:
    """Several `ptm` commands (argument lists such as pretrain_args(...)), one after another, in one torchrun launch
    (tests/distributed/sequential.py): the same runs as one launch each, without paying the ranks' start-up (~5 s of
    CPU a process) for every run. Fails naming the run that failed."""
    spec = work / "runs.json"
    spec.write_text(json.dumps([[str(a) for a in argv] for argv in runs]))
    return _launch(nproc, [str(Path(__file__).with_name("sequential.py")), str(spec)], timeout)


def pretrain_args(config: Path, out: Path, *overrides: str) -> list[str]:
    return ["pretrain", str(config), "--out", str(out), *overrides]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r["split"] == "train"]


def resume_in_one_process(run: Path, step: int, config: Path, dest: Path) -> Path:
    """Copy checkpoint `step` of `run` (with its metrics so far) to `dest` and continue it in this process."""
    import shutil

    from ptmkit.config import from_dict
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    name = f"step-{step:08d}"
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / name, dest / "checkpoints" / name)
    shutil.copy(run / "metrics.jsonl", dest / "metrics.jsonl")
    cfg = yaml.safe_load(config.read_text())
    pretrain(from_dict(PretrainConfig, {**cfg, "out": str(dest)}), resume=True)
    return dest
