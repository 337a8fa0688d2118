"""Adaptation beyond full fine-tuning: delta-tuning methods as model transforms (LoRA, IA3, BitFit, bottleneck
adapters, ...), one file each, registered in METHODS (methods.py). See docs/adaptation.md."""

from ptmkit.adapt.base import count_parameters, delta_parameters, disabled, freeze_except
from ptmkit.adapt.methods import METHODS, apply, bake, make_config, merge, method, remove, unmerge
from ptmkit.adapt.peft_io import load_adapter, save_adapter

__all__ = ["METHODS", "apply", "bake", "count_parameters", "delta_parameters", "disabled", "freeze_except",
           "load_adapter", "make_config", "merge", "method", "remove", "save_adapter", "unmerge"]
