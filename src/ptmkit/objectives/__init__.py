"""Pre-training objectives, one file each; OBJECTIVES maps a YAML name to (config class, objective class)."""

from ptmkit.objectives.base import Objective, seeded_generator
from ptmkit.objectives.clm import CausalLM, CLMConfig
from ptmkit.objectives.mlm import MaskedLM, MLMConfig

OBJECTIVES = {
    "mlm": (MLMConfig, MaskedLM),
    "clm": (CLMConfig, CausalLM),
}

__all__ = ["OBJECTIVES", "Objective", "seeded_generator", "MaskedLM", "MLMConfig", "CausalLM", "CLMConfig"]
