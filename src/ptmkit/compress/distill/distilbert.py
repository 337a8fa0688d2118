"""DistilBERT: a student with every other layer of its teacher, trained on the teacher's soft predictions, the
student's own hard loss (masked LM when pre-training, the task's labels when fine-tuning) and the cosine between their
last hidden states. Sanh, Debut, Chaumond, Wolf 2019, "DistilBERT, a distilled version of BERT" (§2-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.compress.distill.base import Distiller, check_temperature, check_weights, padding_mask
from ptmkit.compress.distill.losses import cosine_loss, prediction_loss
from ptmkit.models.record import Recording
from ptmkit.config import ConfigError


@dataclass
class DistilBERTConfig:
    # The paper's pre-training weights (its released training script): 5 soft, 2 masked LM, 1 cosine; T = 2
    temperature: float = 2.0
    soft_weight: float = 5.0
    hard_weight: float = 2.0
    cosine_weight: float = 1.0

    def __post_init__(self) -> None:
        check_temperature("distilbert", self.temperature)
        check_weights("distilbert", soft_weight=self.soft_weight, hard_weight=self.hard_weight,
                      cosine_weight=self.cosine_weight)


class DistilBERT(Distiller):
    name = "distilbert"

    def check_fits(self, model) -> None:
        super().check_fits(model)
        from ptmkit.models.registry import backbone_of

        hs, ht = backbone_of(model).hidden_size, backbone_of(self.teacher).hidden_size
        if self.cfg.cosine_weight and hs != ht:
            raise ConfigError(f"distilbert: the cosine loss compares hidden states of equal width (student {hs}, "
                              f"teacher {ht}); DistilBERT keeps the teacher's width — set cosine_weight 0, or use "
                              "tinybert or minilm, which distil across widths")

    def terms(self, student: Recording, teacher: Recording) -> dict[str, tuple[float, torch.Tensor]]:
        c = self.cfg
        out = {"soft": (c.soft_weight, prediction_loss(student.logits, teacher.logits, c.temperature))}
        if c.cosine_weight:
            out["cosine"] = (c.cosine_weight, cosine_loss(student.hidden_states[-1], teacher.hidden_states[-1],
                                                          padding_mask(student)))
        return out
