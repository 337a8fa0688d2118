"""A student made from its teacher: the same embeddings, head and tokenizer, and a subset of its layers — DistilBERT
§3 initialises the student "by taking one layer out of two" of the teacher (and keeps its width)."""

from __future__ import annotations

import copy

from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of


def teacher_layers(n_teacher: int, n_student: int) -> list[int]:
    """The teacher layers (0-based) a student of n_student layers starts from: evenly spaced, ending with the last
    (6 -> 3: 1, 3, 5; 12 -> 6: 1, 3, 5, 7, 9, 11, DistilBERT's one out of two)."""
    if not 1 <= n_student <= n_teacher:
        raise ConfigError(f"distill: a student needs 1 to {n_teacher} layers (the teacher's depth), got {n_student}")
    return [round((m + 1) * n_teacher / n_student) - 1 for m in range(n_student)]


def student_from_teacher(teacher: nn.Module, layers: int | list[int]) -> nn.Module:
    """A copy of `teacher` keeping only its blocks `layers` (0-based indices, or a count: teacher_layers). The
    teacher is left as it was."""
    backbone = backbone_of(teacher)
    blocks = getattr(backbone, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"distill: {backbone.family} has no list of independent blocks to take layers from "
                          "(ALBERT shares one); start the student from its own model directory instead")
    n = len(blocks)
    keep = teacher_layers(n, layers) if isinstance(layers, int) else list(layers)
    if not keep or sorted(set(keep)) != keep or not all(0 <= i < n for i in keep):
        raise ConfigError(f"distill: student layers must be increasing, distinct indices in 0..{n - 1}, got {keep}")
    student = copy.deepcopy(teacher)
    sb = backbone_of(student)
    sb.layers = nn.ModuleList([sb.layers[i] for i in keep])
    sb.config.num_layers = len(keep)
    return student
