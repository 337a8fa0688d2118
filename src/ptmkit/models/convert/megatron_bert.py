"""Megatron-BERT checkpoints (transformers' MegatronBertFor* names) <-> ptmkit MegatronBertEncoder: BERT's names,
with each layer's two norms at the sub-layers' inputs (attention.ln, ln), no embedding norm, and encoder.ln last."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptmkit.models.convert.bert import _EMB, _LAYER, BertAdapter
from ptmkit.models.megatron_bert import MegatronBertConfig

# BERT's layer table with the two norms where Megatron keeps them
_NORMS = {"norm1.weight": "attention.ln.weight", "norm1.bias": "attention.ln.bias",
          "norm2.weight": "ln.weight", "norm2.bias": "ln.bias"}


@dataclass
class MegatronBertAdapter(BertAdapter):
    model_type: str = "megatron-bert"
    prefix: str = "bert."
    config_class: type = MegatronBertConfig
    architectures: dict = field(default_factory=lambda: {
        "MegatronBertModel": "base",
        "MegatronBertForMaskedLM": "masked-lm",
        "MegatronBertForPreTraining": "masked-lm",
        "MegatronBertForSequenceClassification": "sequence-classification",
        "MegatronBertForTokenClassification": "token-classification",
    })
    embedding_names: dict = field(default_factory=lambda: {k: v for k, v in _EMB.items()
                                                           if not k.startswith("embeddings.norm.")})
    layer_names: dict = field(default_factory=lambda: {**_LAYER, **_NORMS})
    other_names: dict = field(default_factory=lambda: {"final_norm.weight": "encoder.ln.weight",
                                                       "final_norm.bias": "encoder.ln.bias"})
