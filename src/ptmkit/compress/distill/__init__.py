"""Knowledge distillation (survey §6.3) as objectives that own a frozen teacher; DISTILLERS maps a method name to
(config class, objective class). Each objective wraps the student's own objective: `Objective(cfg, student_objective,
teacher)`."""

from ptmkit.compress.distill.base import Distiller, layer_map
from ptmkit.compress.distill.distilbert import DistilBERT, DistilBERTConfig
from ptmkit.compress.distill.minilm import MiniLM, MiniLMConfig
from ptmkit.compress.distill.pkd import PatientKD, PKDConfig
from ptmkit.compress.distill.student import student_from_teacher, teacher_layers
from ptmkit.compress.distill.tinybert import TinyBERT, TinyBERTConfig

DISTILLERS = {
    "distilbert": (DistilBERTConfig, DistilBERT),
    "pkd": (PKDConfig, PatientKD),
    "tinybert": (TinyBERTConfig, TinyBERT),
    "minilm": (MiniLMConfig, MiniLM),
}

__all__ = ["DISTILLERS", "Distiller", "layer_map", "DistilBERT", "DistilBERTConfig", "PatientKD", "PKDConfig",
           "TinyBERT", "TinyBERTConfig", "MiniLM", "MiniLMConfig", "student_from_teacher", "teacher_layers"]
