"""TinyBERT: the student learns the teacher's embeddings, attention logits and hidden states layer by layer (through
a learned projection when the widths differ), then its predictions; first on general text, then on the task.
Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding" (§3.1-3.2, eqs. 3-7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.compress.distill.base import Distiller, check_temperature, layer_map, padding_mask
from ptmkit.compress.distill.losses import attention_score_loss, mse_loss, prediction_loss
from ptmkit.models.record import Recording
from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of

# the stages of §3.2: general distillation (pre-training text: layer terms only), then on the task the layer terms
# ("intermediate") and, after them, the predictions ("prediction"); "all": the layer terms and the predictions at
# once, as TernaryBERT (Zhang et al. 2020 §3.2) distils into its quantised student
STAGES = ("general", "intermediate", "prediction", "all")


@dataclass
class TinyBERTConfig:
    stage: str = "general"
    temperature: float = 1.0  # §4.2: t = 1 for the prediction layer
    layers: str = "uniform"  # g(m) = m * N / M (§3.1)
    hard_weight: float = 0.0  # TinyBERT uses no label loss; a mix is possible

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"tinybert: stage must be one of {STAGES} (general, then intermediate and prediction "
                              f"on the task), got {self.stage!r}")
        check_temperature("tinybert", self.temperature)
        if self.hard_weight < 0:
            raise ConfigError(f"tinybert: hard_weight must be >= 0, got {self.hard_weight}")


class TinyBERT(Distiller):
    name = "tinybert"

    @property
    def attention(self) -> bool:  # the kernels' inputs are only needed by the layer stages
        return self.cfg.stage != "prediction"

    def check_fits(self, model) -> None:
        super().check_fits(model)
        if self.cfg.stage == "prediction":
            return
        s, t = backbone_of(model).config, backbone_of(self.teacher).config
        if s.num_heads != t.num_heads:
            raise ConfigError(f"tinybert: the attention term compares head by head, and the student has {s.num_heads} "
                              f"heads and the teacher {t.num_heads}; give the student the teacher's head count, or "
                              "use minilm (relation heads work across head counts)")

    def build(self, model) -> nn.Module | None:
        """W_h: one learned projection student width -> teacher width, shared by the embeddings and every layer (as
        the released code's fit_dense); none when the widths agree."""
        hs, ht = backbone_of(model).hidden_size, backbone_of(self.teacher).hidden_size
        if getattr(self, "project", None) is not None and self.project.in_features == hs:
            return self.project  # bound again by the training step (after the model moved): the same projection
        if hs == ht or self.cfg.stage == "prediction":
            self.project = None
            return None
        self.project = nn.Linear(hs, ht).to(next(model.parameters()).device)
        return self.project

    def terms(self, student: Recording, teacher: Recording) -> dict[str, tuple[float, torch.Tensor]]:
        prediction = {"prediction": (1.0, prediction_loss(student.logits, teacher.logits, self.cfg.temperature))}
        if self.cfg.stage == "prediction":
            return prediction
        hs, ht = student.hidden_states, teacher.hidden_states
        pairs = layer_map(len(hs) - 1, len(ht) - 1, self.cfg.layers)
        mask = padding_mask(student)
        proj = self.project if self.project is not None else (lambda x: x)
        emb = mse_loss(proj(hs[0]), ht[0], mask)
        hidden = sum(mse_loss(proj(hs[m]), ht[n], mask) for m, n in enumerate(pairs, start=1))
        att = sum(attention_score_loss(student.kernels[m - 1].scores(), teacher.kernels[n - 1].scores(),
                                       teacher.kernels[n - 1].allowed()) for m, n in enumerate(pairs, start=1))
        layer_terms = {"embedding": (1.0, emb), "hidden": (1.0, hidden), "attention": (1.0, att)}
        return {**layer_terms, **prediction} if self.cfg.stage == "all" else layer_terms
