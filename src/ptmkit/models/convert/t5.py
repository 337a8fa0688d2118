"""T5 checkpoints (transformers' T5ForConditionalGeneration / T5Model / T5EncoderModel names) <-> ptmkit T5.

HF keeps q, k, v separate and the relative position bias inside the first block's attention; ptmkit fuses
self-attention q/k/v, fuses cross-attention k/v, and keeps the bias table on the stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import (
    Adapter, Reader, fuse_gate_up, fuse_qkv, split_gate_up, split_qkv, split_rows, tied_embedding,
)
from ptmkit.models.t5 import T5Config

_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_layers": "num_layers",
    "num_decoder_layers": "num_decoder_layers",
    "num_heads": "num_heads",
    "head_dim": "d_kv",
    "intermediate_size": "d_ff",
    "feed_forward_proj": "feed_forward_proj",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "layer_norm_eps": "layer_norm_epsilon",
    "dropout": "dropout_rate",
    "initializer_factor": "initializer_factor",
    "pad_token_id": "pad_token_id",
    "eos_token_id": "eos_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
}
_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _ffn_from_hf(r: Reader, hf: str, ours: str, gated: bool, sd: dict) -> None:
    if gated:
        g, u = r.take(f"{hf}DenseReluDense.wi_0.weight"), r.take(f"{hf}DenseReluDense.wi_1.weight")
        if g is not None and u is not None:
            sd[f"{ours}ffn.gate_up.weight"] = fuse_gate_up(g, u)
    else:
        sd[f"{ours}ffn.up.weight"] = r.take(f"{hf}DenseReluDense.wi.weight")
    sd[f"{ours}ffn.down.weight"] = r.take(f"{hf}DenseReluDense.wo.weight")


def _ffn_to_hf(sd: dict, ours: str, hf: str, cfg: T5Config, out: dict) -> None:
    if cfg.gated:
        g, u = split_gate_up(sd[f"{ours}ffn.gate_up.weight"])
        out[f"{hf}DenseReluDense.wi_0.weight"], out[f"{hf}DenseReluDense.wi_1.weight"] = g, u
    else:
        out[f"{hf}DenseReluDense.wi.weight"] = sd[f"{ours}ffn.up.weight"]
    out[f"{hf}DenseReluDense.wo.weight"] = sd[f"{ours}ffn.down.weight"]


def _qkv(r: Reader, hf: str, heads: int) -> torch.Tensor | None:
    parts = [r.take(f"{hf}{n}.weight") for n in "qkv"]
    return fuse_qkv(*parts, heads, heads) if all(p is not None for p in parts) else None


def _kv(r: Reader, hf: str) -> torch.Tensor | None:
    parts = [r.take(f"{hf}{n}.weight") for n in "kv"]
    return torch.cat(parts, dim=0) if all(p is not None for p in parts) else None  # rows [k; v]


def encoder_from_hf(r: Reader, cfg: T5Config) -> dict[str, torch.Tensor]:
    sd = {"encoder.rel_bias.embedding.weight": r.take(f"encoder.{_BIAS}"),
          "encoder.final_norm.weight": r.take("encoder.final_layer_norm.weight")}
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.block.{i}.layer.", f"encoder.layers.{i}."
        sd[f"{ours}attn.qkv.weight"] = _qkv(r, f"{hf}0.SelfAttention.", cfg.num_heads)
        sd[f"{ours}attn.out.weight"] = r.take(f"{hf}0.SelfAttention.o.weight")
        sd[f"{ours}norm1.weight"] = r.take(f"{hf}0.layer_norm.weight")
        _ffn_from_hf(r, f"{hf}1.", ours, cfg.gated, sd)
        sd[f"{ours}norm2.weight"] = r.take(f"{hf}1.layer_norm.weight")
    return sd


def encoder_to_hf(sd: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    inner = cfg.num_heads * cfg.head_dim
    out = {f"encoder.{_BIAS}": sd["encoder.rel_bias.embedding.weight"],
           "encoder.final_layer_norm.weight": sd["encoder.final_norm.weight"]}
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.block.{i}.layer.", f"encoder.layers.{i}."
        for n, t in zip("qkv", split_qkv(sd[f"{ours}attn.qkv.weight"], cfg.num_heads, cfg.num_heads)):
            out[f"{hf}0.SelfAttention.{n}.weight"] = t
        out[f"{hf}0.SelfAttention.o.weight"] = sd[f"{ours}attn.out.weight"]
        out[f"{hf}0.layer_norm.weight"] = sd[f"{ours}norm1.weight"]
        _ffn_to_hf(sd, ours, f"{hf}1.", cfg, out)
        out[f"{hf}1.layer_norm.weight"] = sd[f"{ours}norm2.weight"]
    return out


@dataclass
class T5Adapter(Adapter):
    model_type: str = "t5"
    shape_keys: tuple = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_kv', 'd_ff')
    prefix: str = ""  # T5 task models keep the backbone at the top level
    architectures: dict = field(default_factory=lambda: {
        "T5Model": "base",
        "T5ForConditionalGeneration": "seq2seq-lm",
    })
    heads: dict = field(default_factory=lambda: {"seq2seq-lm": {"lm_head.weight": "lm_head.weight"}})
    head_key_prefixes: tuple = ("lm_head.",)
    # Old checkpoints carry an unused bias table in the first cross-attention layer.
    ignore: tuple = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

    def config_from_hf(self, hf: dict) -> T5Config:
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        kwargs.setdefault("decoder_start_token_id", kwargs.get("pad_token_id", 0))
        # transformers 5 always stores tie_word_embeddings=true for T5 and records an untied (v1.1) head as
        # scale_decoder_outputs=false; transformers 4 stores tie_word_embeddings=false. Read both.
        kwargs["tie_word_embeddings"] = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
        return T5Config(**kwargs)

    def config_to_hf(self, cfg: T5Config) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        # Both spellings, so transformers 4 and 5 read the same head (tied + rescaled, or untied).
        out.update(model_type="t5", is_encoder_decoder=True, tie_word_embeddings=cfg.tie_word_embeddings,
                   scale_decoder_outputs=cfg.tie_word_embeddings)
        return out

    def backbone_from_hf(self, r: Reader, cfg: T5Config) -> dict[str, torch.Tensor]:
        sd = {"shared.weight": tied_embedding(r, "shared.weight", ["encoder.embed_tokens.weight",
                                                                    "decoder.embed_tokens.weight"])}
        sd.update(encoder_from_hf(r, cfg))
        sd["decoder.rel_bias.embedding.weight"] = r.take(f"decoder.{_BIAS}")
        sd["decoder.final_norm.weight"] = r.take("decoder.final_layer_norm.weight")
        for i in range(cfg.num_decoder_layers):
            hf, ours = f"decoder.block.{i}.layer.", f"decoder.layers.{i}."
            sd[f"{ours}attn.qkv.weight"] = _qkv(r, f"{hf}0.SelfAttention.", cfg.num_heads)
            sd[f"{ours}attn.out.weight"] = r.take(f"{hf}0.SelfAttention.o.weight")
            sd[f"{ours}norm1.weight"] = r.take(f"{hf}0.layer_norm.weight")
            sd[f"{ours}cross.q.weight"] = r.take(f"{hf}1.EncDecAttention.q.weight")
            sd[f"{ours}cross.kv.weight"] = _kv(r, f"{hf}1.EncDecAttention.")
            sd[f"{ours}cross.out.weight"] = r.take(f"{hf}1.EncDecAttention.o.weight")
            sd[f"{ours}norm2.weight"] = r.take(f"{hf}1.layer_norm.weight")
            _ffn_from_hf(r, f"{hf}2.", ours, cfg.gated, sd)
            sd[f"{ours}norm3.weight"] = r.take(f"{hf}2.layer_norm.weight")
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
        inner = cfg.num_heads * cfg.head_dim
        out = {"shared.weight": sd["shared.weight"]}
        out.update(encoder_to_hf(sd, cfg))
        out[f"decoder.{_BIAS}"] = sd["decoder.rel_bias.embedding.weight"]
        out["decoder.final_layer_norm.weight"] = sd["decoder.final_norm.weight"]
        for i in range(cfg.num_decoder_layers):
            hf, ours = f"decoder.block.{i}.layer.", f"decoder.layers.{i}."
            for n, t in zip("qkv", split_qkv(sd[f"{ours}attn.qkv.weight"], cfg.num_heads, cfg.num_heads)):
                out[f"{hf}0.SelfAttention.{n}.weight"] = t
            out[f"{hf}0.SelfAttention.o.weight"] = sd[f"{ours}attn.out.weight"]
            out[f"{hf}0.layer_norm.weight"] = sd[f"{ours}norm1.weight"]
            out[f"{hf}1.EncDecAttention.q.weight"] = sd[f"{ours}cross.q.weight"]
            for n, t in zip("kv", split_rows(sd[f"{ours}cross.kv.weight"], [inner] * 2)):
                out[f"{hf}1.EncDecAttention.{n}.weight"] = t
            out[f"{hf}1.EncDecAttention.o.weight"] = sd[f"{ours}cross.out.weight"]
            out[f"{hf}1.layer_norm.weight"] = sd[f"{ours}norm2.weight"]
            _ffn_to_hf(sd, ours, f"{hf}2.", cfg, out)
            out[f"{hf}2.layer_norm.weight"] = sd[f"{ours}norm3.weight"]
        return out


@dataclass
class T5EncoderAdapter(T5Adapter):
    """transformers' T5EncoderModel: the shared table and the encoder stack only."""

    architectures: dict = field(default_factory=lambda: {"T5EncoderModel": "base"})
    heads: dict = field(default_factory=dict)
    head_key_prefixes: tuple = ()
    ignore: tuple = ()

    def backbone_from_hf(self, r: Reader, cfg: T5Config) -> dict[str, torch.Tensor]:
        sd = {"shared.weight": tied_embedding(r, "shared.weight", ["encoder.embed_tokens.weight"])}
        sd.update(encoder_from_hf(r, cfg))
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
        return {"shared.weight": sd["shared.weight"], **encoder_to_hf(sd, cfg)}
