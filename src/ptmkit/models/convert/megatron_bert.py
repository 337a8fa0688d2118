"""Megatron-BERT checkpoints (transformers' MegatronBertFor* names) <-> ptmkit MegatronBertEncoder: BERT's names,
with each layer's two norms at the sub-layers' inputs (attention.ln, ln), no embedding norm, and encoder.ln last."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Reader
from ptmkit.models.convert.bert import _LAYER, BertAdapter
from ptmkit.models.megatron_bert import MegatronBertConfig

# BERT's layer table with the two norms where Megatron keeps them
_NORMS = {"norm1.weight": "attention.ln.weight", "norm1.bias": "attention.ln.bias",
          "norm2.weight": "ln.weight", "norm2.bias": "ln.bias"}
_FINAL = {"final_norm.weight": "encoder.ln.weight", "final_norm.bias": "encoder.ln.bias"}


@dataclass
class MegatronBertAdapter(BertAdapter):
    model_type: str = "megatron-bert"
    shape_keys: tuple = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "max_position_embeddings")
    prefix: str = "bert."
    config_class: type = MegatronBertConfig
    architectures: dict = field(default_factory=lambda: {
        "MegatronBertModel": "base",
        "MegatronBertForMaskedLM": "masked-lm",
        "MegatronBertForPreTraining": "masked-lm",
        "MegatronBertForSequenceClassification": "sequence-classification",
        "MegatronBertForTokenClassification": "token-classification",
    })

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        for i in range(cfg.num_layers):  # rename the norms to BERT's places, then read it as BERT
            for ours, theirs in _NORMS.items():
                hf = f"encoder.layer.{i}.{theirs}"
                if hf in r.state:
                    r.state[f"encoder.layer.{i}.{_LAYER[ours]}"] = r.state.pop(hf)
        sd = super().backbone_from_hf(r, cfg)
        sd.pop("embeddings.norm.weight", None)  # Megatron has none; the BERT reader recorded it as missing
        sd.pop("embeddings.norm.bias", None)
        r.missing = [m for m in r.missing if not m.startswith("embeddings.LayerNorm.")]
        for ours, theirs in _FINAL.items():
            sd[ours] = r.take(theirs)
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        out = super().backbone_to_hf(sd, cfg)
        for i in range(cfg.num_layers):
            for ours, theirs in _NORMS.items():
                out[f"encoder.layer.{i}.{theirs}"] = out.pop(f"encoder.layer.{i}.{_LAYER[ours]}")
        out.update({theirs: sd[ours] for ours, theirs in _FINAL.items()})
        return out
