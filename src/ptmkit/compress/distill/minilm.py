"""MiniLM: deep self-attention distillation of one layer — the student's last layer learns the teacher's attention
distributions and value relations, compared in relation heads so widths and head counts may differ.
Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation" (§3, eqs. 4-6); relation heads and q-q / k-k relations
from Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation" (§3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.compress.distill.base import Distiller, padding_mask
from ptmkit.compress.distill.losses import relation_heads, relation_kl
from ptmkit.models.record import KernelCall, Recording
from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of

# a relation "ab" is softmax(a b^T / sqrt(d_r)) of the layer's queries, keys or values: qk is the attention
# distribution (MiniLM), vv the value relation (MiniLM), qq and kk MiniLMv2's additions
RELATIONS = ("qk", "vv", "qq", "kk")


@dataclass
class MiniLMConfig:
    relations: list[str] = field(default_factory=lambda: ["qk", "vv"])  # MiniLM v1; v2: ["qq", "kk", "vv"]
    relation_heads: int | None = None  # None: the teacher's head count (v1 compares head by head); v2 uses 48 or 64
    teacher_layer: int = -1  # 0-based; -1 the last (v1); v2 prefers an upper-middle layer of large teachers
    student_layer: int = -1
    hard_weight: float = 0.0  # MiniLM distils task-agnostically with no label loss; fine-tuning adds it

    def __post_init__(self) -> None:
        bad = [r for r in self.relations if r not in RELATIONS]
        if bad or not self.relations:
            raise ConfigError(f"minilm: relations must be a non-empty list from {RELATIONS}, got {self.relations}")
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ConfigError(f"minilm: relation_heads must be >= 1 (or unset for the teacher's heads), got "
                              f"{self.relation_heads}")
        if self.hard_weight < 0:
            raise ConfigError(f"minilm: hard_weight must be >= 0, got {self.hard_weight}")


class MiniLM(Distiller):
    name = "minilm"
    attention = True

    def _heads(self) -> int:
        return self.cfg.relation_heads or backbone_of(self.teacher).config.num_heads

    def check_fits(self, model) -> None:
        super().check_fits(model)
        r = self._heads()
        for who, m in (("student", model), ("teacher", self.teacher)):
            c = backbone_of(m).config
            width = c.num_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_heads)
            if width % r:
                raise ConfigError(f"minilm: {r} relation heads must divide the {who}'s attention width {width}; "
                                  "choose relation_heads that divides both models' widths")
            layers = c.num_layers
            idx = self.cfg.student_layer if who == "student" else self.cfg.teacher_layer
            if not -layers <= idx < layers:
                raise ConfigError(f"minilm: {who}_layer {idx} is outside the {who}'s {layers} layers")

    def _vectors(self, call: KernelCall) -> dict[str, torch.Tensor]:
        r = self._heads()
        return {"q": relation_heads(call.q, r), "k": relation_heads(call.expanded(call.k), r),
                "v": relation_heads(call.expanded(call.v), r)}  # (B, R, T, d_r) each

    def terms(self, student: Recording, teacher: Recording) -> dict[str, tuple[float, torch.Tensor]]:
        s_call, t_call = student.kernels[self.cfg.student_layer], teacher.kernels[self.cfg.teacher_layer]
        s, t = self._vectors(s_call), self._vectors(t_call)
        allowed, queries = t_call.allowed(), padding_mask(student)
        return {f"relation_{a}{b}": (1.0, relation_kl((s[a], s[b]), (t[a], t[b]), allowed, queries))
                for a, b in self.cfg.relations}
