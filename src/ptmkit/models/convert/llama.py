"""LLaMA-family checkpoints (transformers' LlamaForCausalLM names) <-> ptmkit LlamaDecoder (fused qkv, gate_up)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import (
    Adapter, CheckpointError, Reader, fuse_gate_up, fuse_qkv, split_gate_up, split_qkv,
)
from ptmkit.models.llama import LlamaConfig

# Attention output and norms; the feed-forward block has its own hook (ffn_from_hf / ffn_to_hf) because Mixtral
# (convert/mixtral.py) keeps these names and replaces only the feed-forward.
_LAYER = {
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
}
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
    "hidden_act": "hidden_act",
    "attention_bias": "attention_bias",
    "mlp_bias": "mlp_bias",
    "tie_word_embeddings": "tie_word_embeddings",
    "attention_dropout": "attention_dropout",
    "initializer_range": "initializer_range",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}


def _rope(hf: dict) -> tuple[float, float]:
    """Read rope theta and linear scaling from either the transformers 4.x or 5.x config layout."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return float(theta), 1.0
    if kind == "linear":
        return float(theta), float(params.get("factor", scaling.get("factor", 1.0)))
    raise CheckpointError(f"llama: rope type {kind!r} is not supported (supported: default, linear)")


@dataclass
class LlamaAdapter(Adapter):
    model_type: str = "llama"
    shape_keys: tuple = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size')
    prefix: str = "model."
    architectures: dict = field(default_factory=lambda: {
        "LlamaModel": "base",
        "LlamaForCausalLM": "causal-lm",
        "LlamaForSequenceClassification": "sequence-classification",
        "LlamaForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "causal-lm": {"lm_head.weight": "lm_head.weight"},
        "sequence-classification": {"score.weight": "score.weight"},
        "token-classification": {"out.weight": "score.weight", "out.bias": "score.bias"},
    })
    head_key_prefixes: tuple = ("lm_head.", "score.")
    ignore: tuple = ("layers.*.self_attn.rotary_emb.inv_freq", "rotary_emb.inv_freq")

    def config_from_hf(self, hf: dict) -> LlamaConfig:
        if hf.get("pretraining_tp", 1) != 1:
            raise CheckpointError("llama: pretraining_tp != 1 is not supported; re-save the checkpoint with pretraining_tp=1")
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        kwargs["rope_theta"], kwargs["rope_scaling_factor"] = _rope(hf)
        return LlamaConfig(**kwargs)

    def config_to_hf(self, cfg: LlamaConfig) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        scaling = None if cfg.rope_scaling_factor == 1.0 else {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
        rope_parameters = {"rope_theta": cfg.rope_theta, "rope_type": "linear" if scaling else "default"}
        if scaling:
            rope_parameters["factor"] = cfg.rope_scaling_factor
        # Both layouts: transformers 4.x reads rope_theta/rope_scaling, 5.x reads rope_parameters.
        out.update(model_type="llama", rope_theta=cfg.rope_theta, rope_scaling=scaling,
                   rope_parameters=rope_parameters, pretraining_tp=1)
        return out

    def backbone_from_hf(self, r: Reader, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
        sd = {"embeddings.tok.weight": r.take("embed_tokens.weight"), "norm_f.weight": r.take("norm.weight")}
        for i in range(cfg.num_layers):
            hf = f"layers.{i}."
            qkv = [r.take(f"{hf}self_attn.{n}_proj.weight") for n in "qkv"]
            if all(t is not None for t in qkv):
                sd[f"layers.{i}.attn.qkv.weight"] = fuse_qkv(*qkv, cfg.num_heads, cfg.num_kv_heads)
            if cfg.attention_bias:
                qkvb = [r.take(f"{hf}self_attn.{n}_proj.bias") for n in "qkv"]
                if all(t is not None for t in qkvb):
                    sd[f"layers.{i}.attn.qkv.bias"] = fuse_qkv(*qkvb, cfg.num_heads, cfg.num_kv_heads)
            for ours, theirs in _LAYER.items():
                if ours.endswith(".bias") and not cfg.attention_bias:
                    continue
                sd[f"layers.{i}.{ours}"] = r.take(hf + theirs)
            sd.update({f"layers.{i}.ffn.{k}": v for k, v in self.ffn_from_hf(r, hf, cfg).items()})
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
        out = {"embed_tokens.weight": sd["embeddings.tok.weight"], "norm.weight": sd["norm_f.weight"]}
        h, kv = cfg.num_heads, cfg.num_kv_heads
        for i in range(cfg.num_layers):
            hf = f"layers.{i}."
            for n, t in zip("qkv", split_qkv(sd[f"layers.{i}.attn.qkv.weight"], h, kv)):
                out[f"{hf}self_attn.{n}_proj.weight"] = t
            if cfg.attention_bias:
                for n, t in zip("qkv", split_qkv(sd[f"layers.{i}.attn.qkv.bias"], h, kv)):
                    out[f"{hf}self_attn.{n}_proj.bias"] = t
            for ours, theirs in _LAYER.items():
                if f"layers.{i}.{ours}" in sd:
                    out[hf + theirs] = sd[f"layers.{i}.{ours}"]
            ffn = {k[len(f"layers.{i}.ffn."):]: v for k, v in sd.items() if k.startswith(f"layers.{i}.ffn.")}
            out.update({hf + k: v for k, v in self.ffn_to_hf(ffn, cfg).items()})
        return out

    # ---- the feed-forward block of one layer (names relative to layers.{i}.ffn. and the HF layer) ------------------

    def ffn_from_hf(self, r: Reader, hf: str, cfg: LlamaConfig) -> dict[str, torch.Tensor | None]:
        """Dense SwiGLU: separate gate_proj/up_proj -> ptmkit's fused gate_up (rows alternate gate, up)."""
        sd: dict[str, torch.Tensor | None] = {}
        gate, up = r.take(f"{hf}mlp.gate_proj.weight"), r.take(f"{hf}mlp.up_proj.weight")
        if gate is not None and up is not None:
            sd["gate_up.weight"] = fuse_gate_up(gate, up)
        sd["down.weight"] = r.take(f"{hf}mlp.down_proj.weight")
        if cfg.mlp_bias:
            gb, ub = r.take(f"{hf}mlp.gate_proj.bias"), r.take(f"{hf}mlp.up_proj.bias")
            if gb is not None and ub is not None:
                sd["gate_up.bias"] = fuse_gate_up(gb, ub)
            sd["down.bias"] = r.take(f"{hf}mlp.down_proj.bias")
        return sd

    def ffn_to_hf(self, ffn: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
        out = {}
        for n, t in zip(("gate", "up"), split_gate_up(ffn["gate_up.weight"])):
            out[f"mlp.{n}_proj.weight"] = t
        out["mlp.down_proj.weight"] = ffn["down.weight"]
        if cfg.mlp_bias:
            for n, t in zip(("gate", "up"), split_gate_up(ffn["gate_up.bias"])):
                out[f"mlp.{n}_proj.bias"] = t
            out["mlp.down_proj.bias"] = ffn["down.bias"]
        return out
