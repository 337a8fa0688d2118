"""Causal LM with segment-level recurrence (Transformer-XL, Dai et al. 2019 §3.2): each training step continues the
text of the previous one, and the model attends to the previous step's states (its memory) without gradient.

How it fits ptmkit's `train()` without a hook in the loop:
- the data: `ptmkit.data.streams.StreamBatches` gives batch row i of step t+1 the tokens that follow row i of step t,
  and labels that cross segment boundaries; it resumes from a plain position like every batch iterator;
- the memory: `bind(model)` (the hook objectives use for auxiliary networks) returns a `StreamMemory` module whose
  *buffers* hold the per-layer memory (L, B, M, H). The loop keeps that module in its TrainingModule, so the memory
  lives on the training device, is written into every checkpoint (objective.safetensors) and restored on resume:
  a resumed run sees the same memory, hence the same loss curve, as an uninterrupted one. It has no parameters, so
  the optimizer is unchanged. `loss()` reads the memory, runs the model with `mems=`, stores the new (detached)
  memory, and clears it when the stream says `reset_memory` (a new pass over the lanes).

Single process only: under data parallelism every rank would need its own lanes and its own memory (DDP would
broadcast rank 0's buffers). `evaluate_stream` scores a held-out stream the same way (perplexity with memory, or
with mem_len=0, every segment cold).

Dimension legend: B lanes, T segment length, M memory length, L layers, H hidden size, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch


@dataclass
class RecurrentCLMConfig:
    batch_size: int = 16  # lanes of the stream = rows of every batch; the memory buffers are sized for it

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"recurrent clm: batch_size (stream lanes) must be >= 1, got {self.batch_size}")


class StreamMemory(nn.Module):
    """The per-layer memory carried from step to step, as buffers (so checkpoints save and restore it).

    `mems` (L, B, M, H) holds up to M states per layer, right-aligned; `length` () how many of them are valid
    (0 before the first step and after a reset).
    """

    def __init__(self, num_layers: int, batch_size: int, mem_len: int, hidden: int, device=None):
        super().__init__()
        self.register_buffer("mems", torch.zeros(num_layers, batch_size, mem_len, hidden, device=device))
        self.register_buffer("length", torch.zeros((), dtype=torch.long, device=device))

    def read(self) -> tuple[torch.Tensor, ...] | None:
        """The memory to pass as `mems=` (a copy: the buffer is overwritten before backward runs), or None."""
        n = int(self.length)
        if n == 0:
            return None
        return tuple(self.mems[:, :, self.mems.shape[2] - n:].clone().unbind(0))  # L x (B, n, H)

    @torch.no_grad()
    def write(self, mems: tuple[torch.Tensor, ...] | None) -> None:
        if mems is None:
            self.length.zero_()
            return
        n = mems[0].shape[1]
        if n > self.mems.shape[2] or mems[0].shape[0] != self.mems.shape[1]:
            raise ValueError(f"memory {tuple(mems[0].shape)} does not fit the buffer {tuple(self.mems.shape[1:])}; "
                             "the model's mem_len or the batch size changed since bind()")
        self.mems[:, :, self.mems.shape[2] - n:] = torch.stack([m.detach() for m in mems])  # (L, B, n, H)
        self.length.fill_(n)

    def reset(self) -> None:
        self.length.zero_()


def _backbone_config(model):
    backbone = getattr(model, "backbone", model)
    c = backbone.config
    if not hasattr(c, "mem_len") or not getattr(backbone, "causal", False):
        raise ConfigError(f"the recurrent causal LM needs a decoder with segment memory (model family transfo-xl); "
                          f"{getattr(backbone, 'family', type(backbone).__name__)} has none")
    return c


class RecurrentCausalLM:
    """Next-token prediction over consecutive segments with the memory carried across steps (see the module doc)."""

    task = "causal-lm"

    def __init__(self, cfg: RecurrentCLMConfig | None = None):
        self.cfg = cfg or RecurrentCLMConfig()
        self.memory: StreamMemory | None = None

    def bind(self, model) -> StreamMemory:
        c = _backbone_config(model)
        device = next(model.parameters()).device
        self.memory = StreamMemory(c.num_layers, self.cfg.batch_size, c.mem_len, c.hidden_size, device)
        return self.memory

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Nothing to corrupt: StreamBatches already gives each token its successor as the label."""
        if "labels" not in batch:
            raise ValueError("the recurrent causal LM reads labels from the stream (ptmkit.data.streams.StreamBatches)")
        return dict(batch)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.memory is None:
            raise RuntimeError("RecurrentCausalLM.loss before bind(model); train() binds the objective to the model")
        ids, labels = batch["input_ids"], batch["labels"]  # (B, T) each
        if ids.shape[0] != self.cfg.batch_size:
            raise ValueError(f"batch has {ids.shape[0]} rows but the memory holds {self.cfg.batch_size} lanes; "
                             "use the same batch_size for StreamBatches and RecurrentCLMConfig")
        if "reset_memory" in batch and bool(batch["reset_memory"]):
            self.memory.reset()
        out = model(ids, mems=self.memory.read())
        self.memory.write(out.mems)  # detached: no gradient reaches an earlier step (§3.2)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return loss, {"loss": loss.item(), "predicted_tokens": float((labels != -100).sum())}


@torch.no_grad()
def evaluate_stream(model, batches, mem_len: int | None = None, device="cpu", autocast=None) -> dict[str, float]:
    """Perplexity of a causal LM over a token stream read in consecutive segments (StreamBatches with epochs=1,
    drop_last=False scores every token once). mem_len: the memory carried between segments (None = the model's
    mem_len; 0 = none: every segment starts cold, a fixed-context model). Returns loss (mean nll), ppl, tokens."""
    was_training = model.training
    model.eval()
    total, count, mems = 0.0, 0, None
    try:
        for batch in batches:
            if bool(batch["reset_memory"]):
                mems = None
            ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(ids, mems=mems, mem_len=mem_len)
            mems = out.mems
            total += float(F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), reduction="sum"))
            count += labels.numel()
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": float(count)}
