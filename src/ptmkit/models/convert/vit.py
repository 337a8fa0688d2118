"""ViT checkpoints (transformers' ViTModel) <-> ptmkit ViTEncoder.

transformers 5 names a ViT layer `layers.{i}.attention.q_proj`; the checkpoints on the Hub (and transformers 4) use
`encoder.layer.{i}.attention.attention.query`. Both load; exports use the Hub names, which every transformers
version reads (version 5 renames them on load).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, fuse_qkv, split_qkv
from ptmkit.models.vit import ViTConfig

# ptmkit name inside a layer -> (Hub name inside encoder.layer.{i}, transformers 5 name inside layers.{i})
_LAYER = {
    "attn.out.weight": ("attention.output.dense.weight", "attention.o_proj.weight"),
    "attn.out.bias": ("attention.output.dense.bias", "attention.o_proj.bias"),
    "norm1.weight": ("layernorm_before.weight", "layernorm_before.weight"),
    "norm1.bias": ("layernorm_before.bias", "layernorm_before.bias"),
    "norm2.weight": ("layernorm_after.weight", "layernorm_after.weight"),
    "norm2.bias": ("layernorm_after.bias", "layernorm_after.bias"),
    "ffn.up.weight": ("intermediate.dense.weight", "mlp.fc1.weight"),
    "ffn.up.bias": ("intermediate.dense.bias", "mlp.fc1.bias"),
    "ffn.down.weight": ("output.dense.weight", "mlp.fc2.weight"),
    "ffn.down.bias": ("output.dense.bias", "mlp.fc2.bias"),
}
_QKV = {"hub": ("attention.attention.{}", ("query", "key", "value")), "v5": ("attention.{}", ("q_proj", "k_proj", "v_proj"))}
_TOP = {
    "embeddings.patches.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patches.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_channels": "num_channels",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "qkv_bias": "qkv_bias",
    "pooler_act": "pooler_act",
    "initializer_range": "initializer_range",
}


def square(hf: dict, key: str, where: str) -> int:
    """An image or patch size; transformers allows [height, width], ptmkit square images only."""
    value = hf[key]
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{where}: {key} {value} is not square; ptmkit's vision models take square images "
                                  "and patches")
        value = value[0]
    return int(value)


@dataclass
class ViTAdapter(Adapter):
    model_type: str = "vit"
    shape_keys: tuple = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "image_size", "patch_size")
    prefix: str = "vit."  # ViTForImageClassification and friends nest the encoder here
    architectures: dict = field(default_factory=lambda: {"ViTModel": "base"})
    heads: dict = field(default_factory=dict)
    head_key_prefixes: tuple = ()
    # ViTModel(use_mask_token=True) stores a mask token that only masked-image-modelling inputs read
    ignore: tuple = ("embeddings.mask_token",)

    def config_from_hf(self, hf: dict) -> ViTConfig:
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        for key in ("image_size", "patch_size"):
            if key in kwargs:
                kwargs[key] = square(hf, key, "vit")
        pooled = hf.get("pooler_output_size")
        if pooled is not None and pooled != kwargs.get("hidden_size", ViTConfig.hidden_size):
            raise CheckpointError(f"vit: pooler_output_size {pooled} differs from hidden_size; ptmkit's ViT pooler "
                                  "keeps the width (transformers' default)")
        return ViTConfig(**kwargs)

    def config_to_hf(self, cfg: ViTConfig) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        out.update(model_type="vit", pooler_output_size=cfg.hidden_size, encoder_stride=cfg.patch_size)
        return out

    def backbone_from_hf(self, r: Reader, cfg: ViTConfig) -> dict[str, torch.Tensor]:
        sd = {ours: r.take(theirs) for ours, theirs in _TOP.items()}
        cls, pos = r.take("embeddings.cls_token"), r.take("embeddings.position_embeddings")
        sd["embeddings.cls"] = None if cls is None else cls.reshape(-1)  # (1, 1, H) -> (H,)
        sd["embeddings.pos"] = None if pos is None else pos.reshape(pos.shape[-2], pos.shape[-1])  # (1, T, H) -> (T, H)
        layout = "hub" if any(k.startswith("encoder.layer.") for k in r.state) else "v5"
        for i in range(cfg.num_layers):
            hf = f"encoder.layer.{i}." if layout == "hub" else f"layers.{i}."
            pattern, names = _QKV[layout]
            kinds = ("weight", "bias") if cfg.qkv_bias else ("weight",)
            for kind in kinds:
                q, k, v = (r.take(hf + pattern.format(n) + "." + kind) for n in names)
                if q is not None and k is not None and v is not None:
                    sd[f"layers.{i}.attn.qkv.{kind}"] = fuse_qkv(q, k, v, cfg.num_heads, cfg.num_heads)
            for ours, (hub, v5) in _LAYER.items():
                sd[f"layers.{i}.{ours}"] = r.take(hf + (hub if layout == "hub" else v5))
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
        out = {theirs: sd[ours] for ours, theirs in _TOP.items()}
        out["embeddings.cls_token"] = sd["embeddings.cls"].reshape(1, 1, -1)
        out["embeddings.position_embeddings"] = sd["embeddings.pos"][None]
        h = cfg.num_heads
        for i in range(cfg.num_layers):
            hf = f"encoder.layer.{i}."
            for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
                for name, t in zip(("query", "key", "value"), split_qkv(sd[f"layers.{i}.attn.qkv.{kind}"], h, h)):
                    out[f"{hf}attention.attention.{name}.{kind}"] = t
            for ours, (hub, _) in _LAYER.items():
                out[hf + hub] = sd[f"layers.{i}.{ours}"]
        return out
