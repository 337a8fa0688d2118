"""GPT-2 checkpoints (transformers' GPT2LMHeadModel names, Conv1D weights stored transposed) <-> GPT2Decoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, fuse_qkv, split_qkv
from ptmkit.models.gpt import GPT2Config

# ptmkit name inside a layer -> (HF name inside h.{i}, stored transposed as Conv1D?)
_LAYER = {
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),  # Conv1D columns [q | k | v], regrouped per head (fuse_qkv)
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.out.weight": ("attn.c_proj.weight", True),
    "attn.out.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),
    "norm2.bias": ("ln_2.bias", False),
    "ffn.up.weight": ("mlp.c_fc.weight", True),
    "ffn.up.bias": ("mlp.c_fc.bias", False),
    "ffn.down.weight": ("mlp.c_proj.weight", True),
    "ffn.down.bias": ("mlp.c_proj.bias", False),
}
_TOP = {
    "embeddings.tok.weight": "wte.weight",
    "embeddings.pos.weight": "wpe.weight",
    "norm_f.weight": "ln_f.weight",
    "norm_f.bias": "ln_f.bias",
}
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "n_embd",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "intermediate_size": "n_inner",
    "max_position_embeddings": "n_positions",
    "hidden_act": "activation_function",
    "layer_norm_eps": "layer_norm_epsilon",
    "dropout": "resid_pdrop",
    "attention_dropout": "attn_pdrop",
    "embedding_dropout": "embd_pdrop",
    "initializer_range": "initializer_range",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
# Variants of GPT-2 attention that this family does not implement; refusing beats silently differing.
_UNSUPPORTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


@dataclass
class GPT2Adapter(Adapter):
    model_type: str = "gpt2"
    shape_keys: tuple = ('vocab_size', 'n_embd', 'n_layer', 'n_head', 'n_positions')
    prefix: str = "transformer."
    architectures: dict = field(default_factory=lambda: {
        "GPT2Model": "base",
        "GPT2LMHeadModel": "causal-lm",
        "GPT2ForSequenceClassification": "sequence-classification",
        "GPT2ForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "causal-lm": {},  # GPT-2 always ties lm_head to wte
        "sequence-classification": {"score.weight": "score.weight"},
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("lm_head.", "score.", "classifier.")
    ignore: tuple = ("h.*.attn.bias", "h.*.attn.masked_bias", "lm_head.weight")

    def config_from_hf(self, hf: dict) -> GPT2Config:
        for key, want in _UNSUPPORTED.items():
            if hf.get(key, want) != want:
                raise CheckpointError(f"gpt2: {key}={hf[key]} is not supported (ptmkit implements {key}={want})")
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        return GPT2Config(**kwargs)

    def config_to_hf(self, cfg: GPT2Config) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        out.update(model_type="gpt2", n_ctx=cfg.max_position_embeddings, tie_word_embeddings=True, **_UNSUPPORTED)
        return out

    def backbone_from_hf(self, r: Reader, cfg: GPT2Config) -> dict[str, torch.Tensor]:
        sd = {ours: r.take(theirs) for ours, theirs in _TOP.items()}
        for i in range(cfg.num_layers):
            for ours, (theirs, transposed) in _LAYER.items():
                t = r.take(f"h.{i}.{theirs}")
                t = t.t().contiguous() if (t is not None and transposed) else t
                if t is not None and ours.startswith("attn.qkv"):
                    t = fuse_qkv(*t.chunk(3, dim=0), cfg.num_heads, cfg.num_heads)
                sd[f"layers.{i}.{ours}"] = t
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: GPT2Config) -> dict[str, torch.Tensor]:
        out = {theirs: sd[ours] for ours, theirs in _TOP.items()}
        for i in range(cfg.num_layers):
            for ours, (theirs, transposed) in _LAYER.items():
                t = sd[f"layers.{i}.{ours}"]
                if ours.startswith("attn.qkv"):
                    t = torch.cat(split_qkv(t, cfg.num_heads, cfg.num_heads), dim=0)
                out[f"h.{i}.{theirs}"] = t.t().contiguous() if transposed else t
        return out
