"""Shared by the exact-resume tests: interrupt a pre-training run with SIGINT, then resume it."""

from __future__ import annotations

import os
import signal

from ptmkit.data.batches import PretrainBatches
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain


def train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def interrupt_then_resume(cfg, monkeypatch, sigint_at_batch: int):
    """SIGINT while batch `sigint_at_batch` (0-based) is drawn, so the loop finishes that step, checkpoints and
    exits; then `--resume` to the end. Returns (the interrupted run's summary, the resumed run's summary)."""
    real_next = PretrainBatches.__next__

    def next_with_interrupt(self):
        if self.drawn == sigint_at_batch:
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(PretrainBatches, "__next__", next_with_interrupt)
    interrupted = pretrain(cfg)
    monkeypatch.setattr(PretrainBatches, "__next__", real_next)
    return interrupted, pretrain(cfg, resume=True)
