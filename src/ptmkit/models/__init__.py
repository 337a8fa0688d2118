"""Model families (one file each), task heads, the registries, and Hugging Face checkpoint I/O."""

from ptmkit.models.albert import (
    AlbertConfig, AlbertEncoder, AlbertPreTraining, AlbertSequenceClassifier, AlbertTokenClassifier,
)
from ptmkit.models.base import BackboneOutput, ModelOutput
from ptmkit.models.bert import BertConfig, BertEncoder
from ptmkit.models.gpt import GPT2Config, GPT2Decoder
from ptmkit.models.heads import (
    CausalLM, DecoderSequenceClassifier, MaskedLM, SequenceClassifier, TokenClassifier,
)
from ptmkit.models.io import init_model, load_model, save_model
from ptmkit.models.llama import LlamaConfig, LlamaDecoder
from ptmkit.models.registry import FAMILIES, PRESETS, TASKS, build_model, from_preset, make_config
from ptmkit.models.roberta import RobertaConfig, RobertaEncoder
from ptmkit.models.electra import ElectraConfig, ElectraEncoder, ElectraMaskedLM, ReplacedTokenDetector
from ptmkit.models.bart import BartConfig, BartEncoderDecoder
from ptmkit.models.encdec import Seq2SeqCache, Seq2SeqOutput, shift_right
from ptmkit.models.mbart import MBartConfig, MBartEncoderDecoder
from ptmkit.models.seq2seq import Seq2SeqLM
from ptmkit.models.t5 import T5Config, T5Encoder, T5EncoderDecoder
from ptmkit.models.transfo_xl import TransfoXLBackbone, TransfoXLConfig, TransfoXLLMHead
from ptmkit.models.xlnet import (
    XLNetBackbone, XLNetConfig, XLNetLMHead, XLNetSequenceClassifier, XLNetTokenClassifier,
)

__all__ = [
    "BackboneOutput", "ModelOutput", "BertConfig", "BertEncoder", "GPT2Config", "GPT2Decoder",
    "CausalLM", "DecoderSequenceClassifier", "MaskedLM", "SequenceClassifier", "TokenClassifier",
    "init_model", "load_model", "save_model", "LlamaConfig", "LlamaDecoder", "FAMILIES", "PRESETS", "TASKS",
    "build_model", "from_preset", "make_config", "RobertaConfig", "RobertaEncoder",
    "ElectraConfig", "ElectraEncoder", "ElectraMaskedLM", "ReplacedTokenDetector",
    "BartConfig", "BartEncoderDecoder", "MBartConfig", "MBartEncoderDecoder", "T5Config", "T5Encoder",
    "T5EncoderDecoder", "Seq2SeqLM", "Seq2SeqOutput", "Seq2SeqCache", "shift_right",
    "XLNetBackbone", "XLNetConfig", "XLNetLMHead", "XLNetSequenceClassifier", "XLNetTokenClassifier",
    "AlbertConfig", "AlbertEncoder", "AlbertPreTraining", "AlbertSequenceClassifier", "AlbertTokenClassifier",
    "TransfoXLBackbone", "TransfoXLConfig", "TransfoXLLMHead",
]
