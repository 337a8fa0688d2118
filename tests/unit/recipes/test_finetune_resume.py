"""Fine-tuning runs on the one training engine: it resumes bit for bit after Ctrl-C and after `kill -9`, and gains
accumulation, every registered optimizer, and protected run folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.config import ConfigError
from ptmkit.data.task_batches import TaskBatches
from ptmkit.recipes.finetune import finetune
from ptmkit.train.logging import read_metrics
from tests.faults.kill import kill_repeatedly_then_finish
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir, tiny_model  # noqa: F401  (fixtures)


def _train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def _best_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "best" / "model.safetensors"))


def _assert_same_run(a, b) -> None:
    assert _train_losses(a) == _train_losses(b)  # every logged loss, bit for bit
    ra, rb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    assert (ra["best_step"], ra["dev"], ra["steps"], ra["epochs"]) == (rb["best_step"], rb["dev"], rb["steps"], rb["epochs"])
    wa, wb = _best_weights(a), _best_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# dropout on, several epochs (a resume crosses an epoch boundary), evaluation every 5 steps
RUN = dict(epochs=3.0, eval_every=5, checkpoint_every=3, log_every=1, lr=3e-3)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tiny_model, sst_dir, tmp_path, monkeypatch):
    reference = finetune(_cfg(tiny_model, sst_dir, tmp_path / "ref", **RUN))
    assert reference["steps"] == 18
    real_next = TaskBatches.__next__
    drawn = {"n": 0}

    def next_with_interrupt(self):
        drawn["n"] += 1
        if drawn["n"] == 8:  # Ctrl-C during step 8: the loop finishes it, checkpoints and stops
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(TaskBatches, "__next__", next_with_interrupt)
    cfg = _cfg(tiny_model, sst_dir, tmp_path / "cut", **RUN)
    first = finetune(cfg)
    assert first == {"interrupted": True, "steps": 8, "out": str(tmp_path / "cut")}
    monkeypatch.setattr(TaskBatches, "__next__", real_next)
    with pytest.raises(ConfigError, match="already holds a fine-tuning run.*--resume"):
        finetune(cfg)  # a second start without --resume would lose the first
    resumed = finetune(cfg, resume=True)
    assert resumed["steps"] == 18
    _assert_same_run(tmp_path / "ref", tmp_path / "cut")


def test_resume_refuses_other_settings(tiny_model, sst_dir, tmp_path):
    finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", max_steps=3, checkpoint_every=3))
    with pytest.raises(ConfigError, match=r"other settings: lr=0.01 \(now 0.02\)"):
        finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", max_steps=3, checkpoint_every=3, lr=2e-2), resume=True)
    with pytest.raises(ConfigError, match="holds no fine-tuning run"):
        finetune(_cfg(tiny_model, sst_dir, tmp_path / "empty"), resume=True)


def _cli(model, data, out, *extra):
    return [sys.executable, "-m", "ptmkit.cli", "finetune", str(model), "--task", "sst2", "--data-dir", str(data),
            "--out", str(out), "--epochs", "60", "--batch-size", "16", "--lr", "3e-3", "--max-length", "32",
            "--precision", "fp32", "--eval-every", "40", "--checkpoint-every", "7", "--log-every", "1",
            "--no-progress", "--device", "cpu", *extra]


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume(tiny_model, sst_dir, tmp_path):
    """SIGKILL a real `ptm finetune` process at random moments after a checkpoint (mid-step, mid-write), three times
    over one run, resuming each time: the same losses and best weights as a run never interrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    subprocess.run(_cli(tiny_model, sst_dir, tmp_path / "ref"), check=True, env=env, capture_output=True)
    out = tmp_path / "run"
    landed = kill_repeatedly_then_finish(_cli(tiny_model, sst_dir, out), out, env, kills=3, max_delay=0.5, seed=0)
    assert landed >= 2  # the kills really landed mid-run (and the run resumed from each)
    _assert_same_run(tmp_path / "ref", out)


def test_accumulation_lamb_and_mfu_come_from_the_engine(tiny_model, sst_dir, tmp_path):
    """96 examples in batches of 16 = 6 micro-batches an epoch; with --grad-accum 2, 3 optimizer steps an epoch."""
    res = finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", epochs=4.0, grad_accum=2, optimizer="lamb",
                        log_every=1, lr=2e-2))
    assert res["steps"] == 12 and res["epochs"] == 4.0
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 12 and all(r["mfu"] > 0 for r in train)
    assert train[-1]["epoch"] == pytest.approx(4.0)
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])  # the loss falls
    assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6, 9, 12]  # each epoch
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        _cfg(tiny_model, sst_dir, tmp_path / "x", optimizer="sgd")
    with pytest.raises(ConfigError, match="max_steps=0"):
        _cfg(tiny_model, sst_dir, tmp_path / "x", max_steps=0)  # 0 steps is refused, not a silent full epoch


def test_overwrite_replaces_the_whole_run(tiny_model, sst_dir, tmp_path):
    out = tmp_path / "run"
    finetune(_cfg(tiny_model, sst_dir, out, epochs=2.0, checkpoint_every=5, keep_last=3))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000005", "step-00000010",
                                                                         "step-00000012"]
    with pytest.raises(ConfigError, match="already holds a fine-tuning run"):
        finetune(_cfg(tiny_model, sst_dir, out, max_steps=2))
    finetune(_cfg(tiny_model, sst_dir, out, max_steps=2, overwrite=True))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # none of the old run's
    assert max(r["step"] for r in read_metrics(out)) == 2
