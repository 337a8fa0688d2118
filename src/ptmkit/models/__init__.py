"""Model families (one file each), task heads, the registries, and Hugging Face checkpoint I/O."""

from ptmkit.models.base import BackboneOutput, ModelOutput
from ptmkit.models.bert import BertConfig, BertEncoder
from ptmkit.models.gpt import GPT2Config, GPT2Decoder
from ptmkit.models.heads import (
    CausalLM, DecoderSequenceClassifier, MaskedLM, SequenceClassifier, TokenClassifier,
)
from ptmkit.models.io import load_model, save_model
from ptmkit.models.llama import LlamaConfig, LlamaDecoder
from ptmkit.models.registry import FAMILIES, PRESETS, TASKS, build_model, from_preset, make_config
from ptmkit.models.roberta import RobertaConfig, RobertaEncoder

__all__ = [
    "BackboneOutput", "ModelOutput", "BertConfig", "BertEncoder", "GPT2Config", "GPT2Decoder",
    "CausalLM", "DecoderSequenceClassifier", "MaskedLM", "SequenceClassifier", "TokenClassifier",
    "load_model", "save_model", "LlamaConfig", "LlamaDecoder", "FAMILIES", "PRESETS", "TASKS",
    "build_model", "from_preset", "make_config", "RobertaConfig", "RobertaEncoder",
]
