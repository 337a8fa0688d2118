"""Distillation as an objective that owns a frozen teacher (as ELECTRA's objective owns its generator): it wraps the
student's own objective (a task loss, or masked LM when pre-training), runs the teacher on exactly the call the student
made, and adds the method's terms. The teacher is never optimised and never saved: it is a plain attribute, not a
module of the training step, so neither the optimizer nor a checkpoint sees it. Learned projections between widths
(TinyBERT) are the objective's auxiliary module and train and checkpoint with the student.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptmkit.models.record import Recording, record
from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of


def padding_mask(rec: Recording) -> torch.Tensor | None:
    """The call's (B, T) padding mask (1 = token), or None (no padding, or a full (B, T, S) mask)."""
    mask = rec.kwargs.get("attention_mask", rec.args[1] if len(rec.args) > 1 else None)
    return mask if mask is not None and mask.dim() == 2 else None


def layer_map(n_student: int, n_teacher: int, strategy: str) -> list[int]:
    """The teacher layer (1-based, as hidden_states index it) matched to each student layer 1..n_student.
    uniform: TinyBERT's g(m) = m * N / M (every N/M-th layer, the last to the last); last: the top M layers."""
    if n_student > n_teacher:
        raise ConfigError(f"distill: the student has {n_student} layers and the teacher {n_teacher}; a student "
                          "distils from a teacher at least as deep (choose fewer student layers)")
    if strategy == "uniform":
        return [round(m * n_teacher / n_student) for m in range(1, n_student + 1)]
    if strategy == "last":
        return list(range(n_teacher - n_student + 1, n_teacher + 1))
    raise ConfigError(f"distill: layer strategy must be 'uniform' or 'last', got {strategy!r}")


def check_temperature(name: str, t: float) -> None:
    if not t > 0:
        raise ConfigError(f"{name}: temperature must be > 0 (1 = the plain softmax; Hinton et al. use 1-20), got {t}")


def check_weights(name: str, **weights: float) -> None:
    bad = {k: v for k, v in weights.items() if v < 0}
    if bad:
        raise ConfigError(f"{name}: loss weights must be >= 0, got {bad}")
    if not any(v > 0 for v in weights.values()):
        raise ConfigError(f"{name}: every loss weight is 0 ({sorted(weights)}); give at least one a positive weight")


class Distiller:
    """Base of the distillation objectives. Subclasses set `attention` (whether the kernels' inputs are needed) and
    implement terms(student, teacher) -> {name: (weight, loss)}; `hard` is the student objective's own loss."""

    attention = False
    name = "distill"

    def __init__(self, cfg: Any, student_objective, teacher: nn.Module):
        self.cfg, self.inner, self.teacher = cfg, student_objective, teacher
        teacher.eval()
        teacher.requires_grad_(False)
        self.task = student_objective.task
        if hasattr(student_objective, "corrupt"):  # masking for MLM distillation happens as the student's objective does
            self.corrupt = student_objective.corrupt

    # ---- set-up --------------------------------------------------------------------------------------------------
    def bind(self, model: nn.Module) -> nn.Module | None:
        """Check that the teacher fits the student, put it on the student's device, and return the networks this
        objective trains with the student (None here; TinyBERT's width projections)."""
        self.check_fits(model)
        param = next(model.parameters())
        self.teacher.to(param.device)
        return self.build(model)

    def build(self, model: nn.Module) -> nn.Module | None:
        return None

    def check_fits(self, model: nn.Module) -> None:
        s, t = backbone_of(model), backbone_of(self.teacher)
        if s.vocab_size != t.vocab_size:
            raise ConfigError(f"{self.name}: the student's vocabulary has {s.vocab_size} tokens and the teacher's "
                              f"{t.vocab_size}; distillation compares them token for token, so both need the same "
                              "tokenizer (a student made by student_from_teacher has it)")
        s_task, t_task = getattr(model, "task", None), getattr(self.teacher, "task", None)
        if s_task != t_task:
            raise ConfigError(f"{self.name}: the teacher is a {t_task} model and the student a {s_task} model; the "
                              f"teacher must have the student's head (fine-tune the teacher on the task first)")
        s_out, t_out = getattr(model, "num_labels", None), getattr(self.teacher, "num_labels", None)
        if s_out != t_out:
            raise ConfigError(f"{self.name}: the teacher predicts {t_out} outputs and the student {s_out}; the teacher "
                              "does not fit this task (fine-tune it on the same task and label set)")

    # ---- the step ------------------------------------------------------------------------------------------------
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training: the weighted terms (and the student objective's own loss, by hard_weight). Evaluation
        (model.eval()): the student objective's loss alone, so held-out figures compare with runs without a teacher."""
        if not model.training:
            return self.inner.loss(model, batch)
        with record(model, self.attention) as s:
            hard, metrics = self.inner.loss(model, batch)
        if s.calls != 1:
            raise ConfigError(f"{self.name}: the student objective ran the model {s.calls} times in one step; "
                              "distillation pairs one student call with one teacher call (use a single-pass "
                              "objective such as a task loss or masked LM)")
        with torch.no_grad(), record(self.teacher, self.attention) as t:
            self.teacher(*s.args, **s.kwargs)
        loss = hard * self.hard_weight() if self.hard_weight() else None
        out = {f"{self.inner_name()}_loss": metrics.get("loss", float(hard.detach()))}
        for name, (weight, value) in self.terms(s, t).items():
            out[f"{name}_loss"] = float(value.detach())
            if weight:
                loss = weight * value if loss is None else loss + weight * value
        out["loss"] = float(loss.detach())
        if "predicted_tokens" in metrics:
            out["predicted_tokens"] = metrics["predicted_tokens"]
        return loss, out

    def hard_weight(self) -> float:
        return self.cfg.hard_weight

    def inner_name(self) -> str:
        return "hard"

    def terms(self, student: Recording, teacher: Recording) -> dict[str, tuple[float, torch.Tensor]]:
        raise NotImplementedError
