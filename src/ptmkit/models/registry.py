"""The model registries: families (config, backbone, checkpoint adapter), tasks (heads) and presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptmkit.config import ConfigError, from_dict
from ptmkit.models.bert import BertConfig, BertEncoder
from ptmkit.models.convert.base import Adapter
from ptmkit.models.convert.bert import BertAdapter, RobertaAdapter
from ptmkit.models.convert.gpt2 import GPT2Adapter
from ptmkit.models.convert.llama import LlamaAdapter
from ptmkit.models.gpt import GPT2Config, GPT2Decoder
from ptmkit.models.heads import (
    CausalLM, DecoderSequenceClassifier, MaskedLM, SequenceClassifier, TaskModel, TokenClassifier,
)
from ptmkit.models.llama import LlamaConfig, LlamaDecoder
from ptmkit.models.roberta import RobertaConfig, RobertaEncoder


@dataclass(frozen=True)
class Family:
    config: type
    backbone: type
    adapter: Adapter


FAMILIES: dict[str, Family] = {
    "bert": Family(BertConfig, BertEncoder, BertAdapter()),
    "roberta": Family(RobertaConfig, RobertaEncoder, RobertaAdapter()),
    "gpt2": Family(GPT2Config, GPT2Decoder, GPT2Adapter()),
    "llama": Family(LlamaConfig, LlamaDecoder, LlamaAdapter()),
}

TASKS = ("base", "masked-lm", "causal-lm", "sequence-classification", "token-classification")

# Sizes as data. "mini" is the shape used by the demo and tests of speed; base/small follow the papers.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-tiny": ("bert", dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)),
    "bert-mini": ("bert", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)),
    "bert-base": ("bert", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)),
    "roberta-base": ("roberta", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)),
    "gpt2-mini": ("gpt2", dict(hidden_size=256, num_layers=4, num_heads=4)),
    "gpt2-small": ("gpt2", dict(hidden_size=768, num_layers=12, num_heads=12)),
    "llama-mini": ("llama", dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688,
                                 vocab_size=32000, max_position_embeddings=2048)),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unsupported model family {name!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[name]


def make_config(family_name: str, overrides: dict[str, Any] | None = None):
    """Build a family config from a dict; unknown keys and wrong types are errors."""
    return from_dict(family(family_name).config, overrides or {}, where=f"{family_name} model config")


def from_preset(preset: str, task: str = "base", **overrides):
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    fam, params = PRESETS[preset]
    return build_model(fam, make_config(fam, {**params, **overrides.pop("config", {})}), task, **overrides)


def build_model(family_name: str, config, task: str = "base", num_labels: int | None = None):
    """A freshly initialised model: the family's backbone plus the head for `task`."""
    backbone = family(family_name).backbone(config)
    return attach_head(backbone, task, num_labels)


def attach_head(backbone, task: str, num_labels: int | None = None):
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if task == "base":
        return backbone
    if task == "masked-lm":
        if backbone.causal:
            raise ConfigError(f"{backbone.family} is a decoder; masked-lm needs an encoder (bert, roberta)")
        return MaskedLM(backbone)
    if task == "causal-lm":
        if not backbone.causal:
            raise ConfigError(f"{backbone.family} is an encoder; causal-lm needs a decoder (gpt2, llama)")
        return CausalLM(backbone, tie_word_embeddings=getattr(backbone.config, "tie_word_embeddings", True))
    if num_labels is None:
        raise ConfigError(f"task {task!r} needs num_labels")
    if task == "sequence-classification":
        return DecoderSequenceClassifier(backbone, num_labels) if backbone.causal else SequenceClassifier(backbone, num_labels)
    return TokenClassifier(backbone, num_labels)


def task_of(model) -> str:
    return model.task if isinstance(model, TaskModel) else "base"


def backbone_of(model):
    return model.backbone if isinstance(model, TaskModel) else model
