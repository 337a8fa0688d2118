"""BART and mBART checkpoints (transformers' Bart*/MBart* names) <-> ptmkit BartEncoderDecoder/MBartEncoderDecoder.

Both families share tensor names; mBART adds `encoder.layer_norm` / `decoder.layer_norm` (final norms of its
pre-norm stacks). ptmkit fuses self-attention q/k/v and cross-attention k/v.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ptmkit.models.bart import BartConfig
from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, fuse_qkv, split_qkv, split_rows, tied_embedding
from ptmkit.models.mbart import MBartConfig

log = logging.getLogger(__name__)

_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_layers": "encoder_layers",
    "num_decoder_layers": "decoder_layers",
    "num_heads": "encoder_attention_heads",
    "num_decoder_heads": "decoder_attention_heads",
    "intermediate_size": "encoder_ffn_dim",
    "decoder_intermediate_size": "decoder_ffn_dim",
    "max_position_embeddings": "max_position_embeddings",
    "hidden_act": "activation_function",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "scale_embedding": "scale_embedding",
    "initializer_range": "init_std",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
    "tie_word_embeddings": "tie_word_embeddings",
}
_SELF = {"attn.out": "self_attn.out_proj", "norm1": "self_attn_layer_norm"}
_ENC = {**_SELF, "ffn.up": "fc1", "ffn.down": "fc2", "norm2": "final_layer_norm"}
_DEC = {**_SELF, "cross.q": "encoder_attn.q_proj", "cross.out": "encoder_attn.out_proj",
        "norm2": "encoder_attn_layer_norm", "ffn.up": "fc1", "ffn.down": "fc2", "norm3": "final_layer_norm"}


def _cat(r: Reader, names: list[str]) -> torch.Tensor | None:
    parts = [r.take(n) for n in names]
    return torch.cat(parts, dim=0) if all(p is not None for p in parts) else None


def _qkv(r: Reader, names: list[str], heads: int) -> torch.Tensor | None:
    parts = [r.take(n) for n in names]
    return fuse_qkv(*parts, heads, heads) if all(p is not None for p in parts) else None


@dataclass
class BartAdapter(Adapter):
    model_type: str = "bart"
    shape_keys: tuple = ('vocab_size', 'd_model', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads', 'decoder_attention_heads', 'encoder_ffn_dim', 'decoder_ffn_dim', 'max_position_embeddings')
    prefix: str = "model."
    config_class: type = BartConfig
    architectures: dict = field(default_factory=lambda: {
        "BartModel": "base",
        "BartForConditionalGeneration": "seq2seq-lm",
    })
    heads: dict = field(default_factory=lambda: {
        "seq2seq-lm": {"lm_head.weight": "lm_head.weight", "final_logits_bias": "final_logits_bias"},
    })
    head_key_prefixes: tuple = ("lm_head.", "final_logits_bias")
    ignore: tuple = ("encoder.version", "decoder.version")  # fairseq bookkeeping
    optional: tuple = ("final_logits_bias",)  # transformers tolerates its absence (zeros)
    # Layout switches found in fairseq-era config.json files: what this family must have.
    layout: dict = field(default_factory=lambda: {
        "normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": True,
        "static_position_embeddings": False, "add_bias_logits": False,
    })

    def config_from_hf(self, hf: dict):
        for key, want in self.layout.items():
            if key in hf and hf[key] != want:
                raise CheckpointError(
                    f"{self.model_type}: {key}={hf[key]} does not match this family ({key}={want}); "
                    "check model_type in config.json (bart = post-norm, mbart = pre-norm with final norms)"
                )
        for key in ("encoder_layerdrop", "decoder_layerdrop"):
            if hf.get(key):
                log.warning("%s: %s=%s is not implemented (only affects training); layers are never dropped",
                            self.model_type, key, hf[key])
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        for key in ("eos_token_id", "bos_token_id"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = kwargs[key][0]
        if "decoder_start_token_id" in hf:
            kwargs["decoder_start_token_id"] = hf["decoder_start_token_id"]  # may be None (mBART)
        return self.config_class(**kwargs)

    def config_to_hf(self, cfg) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        out.update(model_type=self.model_type, is_encoder_decoder=True, encoder_layerdrop=0.0, decoder_layerdrop=0.0)
        return out

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        sd = {"shared.weight": tied_embedding(r, "shared.weight", ["encoder.embed_tokens.weight",
                                                                    "decoder.embed_tokens.weight"])}
        for stack in ("encoder", "decoder"):
            sd[f"{stack}.positions.weight"] = r.take(f"{stack}.embed_positions.weight")
            for p in ("weight", "bias"):
                sd[f"{stack}.embed_norm.{p}"] = r.take(f"{stack}.layernorm_embedding.{p}")
                if self.model_type == "mbart":
                    sd[f"{stack}.final_norm.{p}"] = r.take(f"{stack}.layer_norm.{p}")
        for i in range(cfg.num_layers):
            hf, ours = f"encoder.layers.{i}.", f"encoder.layers.{i}."
            for p in ("weight", "bias"):
                sd[f"{ours}attn.qkv.{p}"] = _qkv(r, [f"{hf}self_attn.{n}_proj.{p}" for n in "qkv"], cfg.num_heads)
                for mine, theirs in _ENC.items():
                    sd[f"{ours}{mine}.{p}"] = r.take(f"{hf}{theirs}.{p}")
        for i in range(cfg.num_decoder_layers):
            hf, ours = f"decoder.layers.{i}.", f"decoder.layers.{i}."
            for p in ("weight", "bias"):
                sd[f"{ours}attn.qkv.{p}"] = _qkv(r, [f"{hf}self_attn.{n}_proj.{p}" for n in "qkv"],
                                                 cfg.num_decoder_heads)
                sd[f"{ours}cross.kv.{p}"] = _cat(r, [f"{hf}encoder_attn.{n}_proj.{p}" for n in "kv"])  # rows [k; v]
                for mine, theirs in _DEC.items():
                    sd[f"{ours}{mine}.{p}"] = r.take(f"{hf}{theirs}.{p}")
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        h = cfg.hidden_size
        out = {"shared.weight": sd["shared.weight"]}
        if not cfg.tie_word_embeddings:
            # transformers 5 ties the per-stack tables to `shared` only when the output layer is tied too.
            out["encoder.embed_tokens.weight"] = out["decoder.embed_tokens.weight"] = sd["shared.weight"]
        for stack in ("encoder", "decoder"):
            out[f"{stack}.embed_positions.weight"] = sd[f"{stack}.positions.weight"]
            for p in ("weight", "bias"):
                out[f"{stack}.layernorm_embedding.{p}"] = sd[f"{stack}.embed_norm.{p}"]
                if f"{stack}.final_norm.{p}" in sd:
                    out[f"{stack}.layer_norm.{p}"] = sd[f"{stack}.final_norm.{p}"]
        for stack, n_layers, heads, table in (("encoder", cfg.num_layers, cfg.num_heads, _ENC),
                                              ("decoder", cfg.num_decoder_layers, cfg.num_decoder_heads, _DEC)):
            for i in range(n_layers):
                pre = f"{stack}.layers.{i}."
                for p in ("weight", "bias"):
                    for n, t in zip("qkv", split_qkv(sd[f"{pre}attn.qkv.{p}"], heads, heads)):
                        out[f"{pre}self_attn.{n}_proj.{p}"] = t
                    if stack == "decoder":
                        for n, t in zip("kv", split_rows(sd[f"{pre}cross.kv.{p}"], [h, h])):
                            out[f"{pre}encoder_attn.{n}_proj.{p}"] = t
                    for mine, theirs in table.items():
                        out[f"{pre}{theirs}.{p}"] = sd[f"{pre}{mine}.{p}"]
        return out


@dataclass
class MBartAdapter(BartAdapter):
    model_type: str = "mbart"
    config_class: type = MBartConfig
    architectures: dict = field(default_factory=lambda: {
        "MBartModel": "base",
        "MBartForConditionalGeneration": "seq2seq-lm",
    })
    layout: dict = field(default_factory=lambda: {
        "normalize_before": True, "add_final_layer_norm": True, "normalize_embedding": True,
        "static_position_embeddings": False, "add_bias_logits": False,
    })
