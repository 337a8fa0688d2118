"""BERT-PKD, patient knowledge distillation: besides the soft predictions, the student's [CLS] state at each of its
intermediate layers learns the (l2-normalised) [CLS] state of a teacher layer, every k-th (PKD-skip) or the top ones
(PKD-last). Sun, Cheng, Gan, Liu 2019, "Patient Knowledge Distillation for BERT Model Compression" (§3, eq. 3-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.compress.distill.base import Distiller, check_temperature, check_weights
from ptmkit.compress.distill.losses import patient_loss, prediction_loss
from ptmkit.models.record import Recording
from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of


@dataclass
class PKDConfig:
    strategy: str = "skip"  # skip: teacher layers k, 2k, ... (k = N/M); last: the top M-1 below the last
    temperature: float = 10.0  # the paper searches {5, 10, 20}
    soft_weight: float = 0.5  # alpha; the hard (label) loss gets 1 - alpha as in eq. 4
    hard_weight: float = 0.5
    patient_weight: float = 100.0  # beta, searched in {10, 100, 500, 1000}

    def __post_init__(self) -> None:
        if self.strategy not in ("skip", "last"):
            raise ConfigError(f"pkd: strategy must be 'skip' or 'last' (PKD-Skip, PKD-Last), got {self.strategy!r}")
        check_temperature("pkd", self.temperature)
        check_weights("pkd", soft_weight=self.soft_weight, hard_weight=self.hard_weight,
                      patient_weight=self.patient_weight)


def pkd_layers(n_student: int, n_teacher: int, strategy: str) -> list[int]:
    """Teacher layers (1-based) for the student's layers 1..M-1; the last layer is left to the soft predictions (§3.2:
    12 -> 6 skip is {2, 4, 6, 8, 10}, last is {7, 8, 9, 10, 11})."""
    if n_student > n_teacher:
        raise ConfigError(f"pkd: the student has {n_student} layers and the teacher {n_teacher}; choose fewer")
    if strategy == "skip":
        k = n_teacher // n_student
        return [k * m for m in range(1, n_student)]
    return list(range(n_teacher - n_student + 1, n_teacher))


class PatientKD(Distiller):
    name = "pkd"

    def check_fits(self, model) -> None:
        super().check_fits(model)
        s, t = backbone_of(model), backbone_of(self.teacher)
        if s.causal or s.hidden_size != t.hidden_size:
            raise ConfigError(f"pkd: patient distillation matches the [CLS] states of two encoders of one width "
                              f"(student {s.family} {s.hidden_size}, teacher {t.family} {t.hidden_size}); use minilm "
                              "or tinybert across widths")

    def terms(self, student: Recording, teacher: Recording) -> dict[str, tuple[float, torch.Tensor]]:
        c = self.cfg
        hs, ht = student.hidden_states, teacher.hidden_states
        pairs = pkd_layers(len(hs) - 1, len(ht) - 1, c.strategy)
        out = {"soft": (c.soft_weight, prediction_loss(student.logits, teacher.logits, c.temperature))}
        if pairs:
            s_cls = torch.stack([hs[m][:, 0] for m in range(1, len(pairs) + 1)])  # (M-1, B, H)
            t_cls = torch.stack([ht[n][:, 0] for n in pairs])  # (M-1, B, H)
            out["patient"] = (c.patient_weight, patient_loss(s_cls, t_cls))
        return out
