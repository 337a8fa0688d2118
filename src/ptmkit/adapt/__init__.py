"""Adaptation beyond full fine-tuning: delta-tuning methods as model transforms (LoRA, IA3, BitFit, bottleneck
adapters, ...), one file each, registered in METHODS (methods.py). See docs/adaptation.md."""

from ptmkit.adapt.base import count_parameters, delta_parameters, disabled, freeze_except
from ptmkit.adapt.methods import METHODS, apply, make_config, merge, method, remove, unmerge

__all__ = ["METHODS", "apply", "count_parameters", "delta_parameters", "disabled", "freeze_except", "make_config",
           "merge", "method", "remove", "unmerge"]
