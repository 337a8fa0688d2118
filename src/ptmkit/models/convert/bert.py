"""BERT and RoBERTa checkpoints (transformers' BertFor*/RobertaFor* names) <-> ptmkit BertEncoder/RobertaEncoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.bert import BertConfig
from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, fuse_qkv, split_qkv
from ptmkit.models.roberta import RobertaConfig

# ptmkit name inside a layer -> HF name inside encoder.layer.{i}
_LAYER = {
    "attn.out.weight": "attention.output.dense.weight",
    "attn.out.bias": "attention.output.dense.bias",
    "norm1.weight": "attention.output.LayerNorm.weight",
    "norm1.bias": "attention.output.LayerNorm.bias",
    "ffn.up.weight": "intermediate.dense.weight",
    "ffn.up.bias": "intermediate.dense.bias",
    "ffn.down.weight": "output.dense.weight",
    "ffn.down.bias": "output.dense.bias",
    "norm2.weight": "output.LayerNorm.weight",
    "norm2.bias": "output.LayerNorm.bias",
}
_EMB = {
    "embeddings.tok.weight": "embeddings.word_embeddings.weight",
    "embeddings.pos.weight": "embeddings.position_embeddings.weight",
    "embeddings.segment.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Original TF-converted BERT checkpoints call LayerNorm parameters gamma/beta.
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in state.items()}


@dataclass
class BertAdapter(Adapter):
    model_type: str = "bert"
    shape_keys: tuple = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings')
    prefix: str = "bert."
    config_class: type = BertConfig
    architectures: dict = field(default_factory=lambda: {
        "BertModel": "base",
        "BertForMaskedLM": "masked-lm",
        "BertForPreTraining": "masked-lm",
        "BertForSequenceClassification": "sequence-classification",
        "BertForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "masked-lm": {
            "head.dense.weight": "cls.predictions.transform.dense.weight",
            "head.dense.bias": "cls.predictions.transform.dense.bias",
            "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "head.bias": "cls.predictions.bias",
        },
        "sequence-classification": {
            "dense.weight": "{p}pooler.dense.weight",
            "dense.bias": "{p}pooler.dense.bias",
            "out.weight": "classifier.weight",
            "out.bias": "classifier.bias",
        },
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("cls.", "classifier.", "{p}pooler.", "qa_outputs.")
    ignore: tuple = ("embeddings.position_ids", "cls.predictions.decoder.*")
    # name tables (ptmkit -> HF): the embeddings', each layer's (inside encoder.layer.{i}), and any other backbone
    # tensors; a variant of BERT that only moves or adds tensors (Megatron-BERT's norms) declares its own tables
    embedding_names: dict = field(default_factory=lambda: dict(_EMB))
    layer_names: dict = field(default_factory=lambda: dict(_LAYER))
    other_names: dict = field(default_factory=dict)

    def config_from_hf(self, hf: dict):
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise CheckpointError(f"{self.model_type}: position_embedding_type {pos!r} is not supported (only 'absolute')")
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        return self.config_class(**kwargs)

    def config_to_hf(self, cfg) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        out.update(model_type=self.model_type, position_embedding_type="absolute")
        return out

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        r.state = _legacy_names(r.state)
        sd = {ours: r.take(theirs) for ours, theirs in {**self.embedding_names, **self.other_names}.items()}
        if cfg.type_vocab_size == 0:
            sd.pop("embeddings.segment.weight")
        for i in range(cfg.num_layers):
            hf = f"encoder.layer.{i}."
            q, k, v = (r.take(f"{hf}attention.self.{n}.weight") for n in ("query", "key", "value"))
            qb, kb, vb = (r.take(f"{hf}attention.self.{n}.bias") for n in ("query", "key", "value"))
            if q is not None and k is not None and v is not None:
                sd[f"layers.{i}.attn.qkv.weight"] = fuse_qkv(q, k, v, cfg.num_heads, cfg.num_heads)
            if qb is not None and kb is not None and vb is not None:
                sd[f"layers.{i}.attn.qkv.bias"] = fuse_qkv(qb, kb, vb, cfg.num_heads, cfg.num_heads)
            for ours, theirs in self.layer_names.items():
                sd[f"layers.{i}.{ours}"] = r.take(hf + theirs)
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        out = {theirs: sd[ours] for ours, theirs in {**self.embedding_names, **self.other_names}.items() if ours in sd}
        h = cfg.num_heads
        for i in range(cfg.num_layers):
            hf = f"encoder.layer.{i}."
            for name, t in zip(("query", "key", "value"), split_qkv(sd[f"layers.{i}.attn.qkv.weight"], h, h)):
                out[f"{hf}attention.self.{name}.weight"] = t
            for name, t in zip(("query", "key", "value"), split_qkv(sd[f"layers.{i}.attn.qkv.bias"], h, h)):
                out[f"{hf}attention.self.{name}.bias"] = t
            for ours, theirs in self.layer_names.items():
                out[hf + theirs] = sd[f"layers.{i}.{ours}"]
        return out


@dataclass
class RobertaAdapter(BertAdapter):
    model_type: str = "roberta"
    prefix: str = "roberta."
    config_class: type = RobertaConfig
    architectures: dict = field(default_factory=lambda: {
        "RobertaModel": "base",
        "RobertaForMaskedLM": "masked-lm",
        "RobertaForSequenceClassification": "sequence-classification",
        "RobertaForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "masked-lm": {
            "head.dense.weight": "lm_head.dense.weight",
            "head.dense.bias": "lm_head.dense.bias",
            "head.norm.weight": "lm_head.layer_norm.weight",
            "head.norm.bias": "lm_head.layer_norm.bias",
            "head.bias": "lm_head.bias",
        },
        "sequence-classification": {
            "dense.weight": "classifier.dense.weight",
            "dense.bias": "classifier.dense.bias",
            "out.weight": "classifier.out_proj.weight",
            "out.bias": "classifier.out_proj.bias",
        },
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("lm_head.", "classifier.", "{p}pooler.", "qa_outputs.")
    ignore: tuple = ("embeddings.position_ids", "lm_head.decoder.*")
