"""CLIP checkpoints (transformers' CLIPModel: OpenAI's released CLIPs, converted, and any trained with transformers)
<-> ptmkit CLIPModel. The config nests a text and a vision config, as transformers' does."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ptmkit.log import get
from ptmkit.models.clip import MAX_LOGIT_SCALE, CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from ptmkit.models.convert.base import Adapter, Reader, fuse_qkv, split_qkv
from ptmkit.models.convert.vit import square

# ptmkit name inside a block -> HF name inside {tower}.encoder.layers.{i}
log = get(__name__)

_LAYER = {
    "attn.out.weight": "self_attn.out_proj.weight",
    "attn.out.bias": "self_attn.out_proj.bias",
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "ffn.up.weight": "mlp.fc1.weight",
    "ffn.up.bias": "mlp.fc1.bias",
    "ffn.down.weight": "mlp.fc2.weight",
    "ffn.down.bias": "mlp.fc2.bias",
}
_TOP = {
    "text.embeddings.tok.weight": "text_model.embeddings.token_embedding.weight",
    "text.embeddings.pos.weight": "text_model.embeddings.position_embedding.weight",
    "text.norm.weight": "text_model.final_layer_norm.weight",
    "text.norm.bias": "text_model.final_layer_norm.bias",
    "vision.embeddings.cls": "vision_model.embeddings.class_embedding",
    "vision.embeddings.patches.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "vision.embeddings.pos": "vision_model.embeddings.position_embedding.weight",
    "vision.pre_norm.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
    "vision.pre_norm.bias": "vision_model.pre_layrnorm.bias",
    "vision.post_norm.weight": "vision_model.post_layernorm.weight",
    "vision.post_norm.bias": "vision_model.post_layernorm.bias",
    "text_projection.weight": "text_projection.weight",
    "visual_projection.weight": "visual_projection.weight",
    "logit_scale": "logit_scale",
}
_TOWERS = (("text", "text_model", "text_config"), ("vision", "vision_model", "vision_config"))
_COMMON = {  # ptmkit field -> HF key, in both towers' configs
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "attention_dropout": "attention_dropout",
    "initializer_range": "initializer_range",
}
_TEXT = {**_COMMON, "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
         "pad_token_id": "pad_token_id", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id"}
_VISION = {**_COMMON, "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels"}


@dataclass
class CLIPAdapter(Adapter):
    model_type: str = "clip"
    shape_keys: tuple = ("text_config", "vision_config", "projection_dim")
    prefix: str = ""
    architectures: dict = field(default_factory=lambda: {"CLIPModel": "base"})
    heads: dict = field(default_factory=dict)
    head_key_prefixes: tuple = ()
    # buffers that older transformers versions saved
    ignore: tuple = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

    def config_from_hf(self, hf: dict) -> CLIPConfig:
        text = hf.get("text_config") or {}
        vision = dict(hf.get("vision_config") or {})
        for key in ("image_size", "patch_size"):
            if vision.get(key) is not None:
                vision[key] = square(vision, key, "clip vision_config")
        kwargs = {"text": CLIPTextConfig(**{o: text[t] for o, t in _TEXT.items() if text.get(t) is not None}),
                  "vision": CLIPVisionConfig(**{o: vision[t] for o, t in _VISION.items() if vision.get(t) is not None})}
        for ours, theirs in (("projection_dim", "projection_dim"), ("logit_scale_init", "logit_scale_init_value"),
                             ("initializer_factor", "initializer_factor")):
            if hf.get(theirs) is not None:
                kwargs[ours] = hf[theirs]
        return CLIPConfig(**kwargs)

    def config_to_hf(self, cfg: CLIPConfig) -> dict:
        text = {t: getattr(cfg.text, o) for o, t in _TEXT.items()}
        vision = {t: getattr(cfg.vision, o) for o, t in _VISION.items()}
        for sub, kind in ((text, "clip_text_model"), (vision, "clip_vision_model")):
            sub.update(model_type=kind, projection_dim=cfg.projection_dim, initializer_factor=cfg.initializer_factor)
        return {"model_type": "clip", "text_config": text, "vision_config": vision, "projection_dim": cfg.projection_dim,
                "logit_scale_init_value": cfg.logit_scale_init, "initializer_factor": cfg.initializer_factor}

    def backbone_from_hf(self, r: Reader, cfg: CLIPConfig) -> dict[str, torch.Tensor]:
        sd = {ours: r.take(theirs) for ours, theirs in _TOP.items()}
        scale = sd.get("logit_scale")
        if scale is not None and float(scale) > math.log(MAX_LOGIT_SCALE) + 1e-4:
            log.warning("clip: logit_scale %.4f exceeds ln 100 = 4.6052, the cap CLIP trains with (Radford et al. "
                        "2021 §2.5); ptmkit caps the logits at 100x the cosine, transformers does not, so their logits "
                        "differ by a constant factor (rankings are the same)", float(scale))
        for ours, theirs, sub in _TOWERS:
            c = getattr(cfg, ours)
            for i in range(c.num_layers):
                hf, mine = f"{theirs}.encoder.layers.{i}.", f"{ours}.layers.{i}."
                for kind in ("weight", "bias"):
                    q, k, v = (r.take(f"{hf}self_attn.{n}_proj.{kind}") for n in ("q", "k", "v"))
                    if q is not None and k is not None and v is not None:
                        sd[f"{mine}attn.qkv.{kind}"] = fuse_qkv(q, k, v, c.num_heads, c.num_heads)
                for o, t in _LAYER.items():
                    sd[mine + o] = r.take(hf + t)
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
        out = {theirs: sd[ours] for ours, theirs in _TOP.items()}
        for ours, theirs, _ in _TOWERS:
            c = getattr(cfg, ours)
            h = c.num_heads
            for i in range(c.num_layers):
                hf, mine = f"{theirs}.encoder.layers.{i}.", f"{ours}.layers.{i}."
                for kind in ("weight", "bias"):
                    for n, t in zip(("q", "k", "v"), split_qkv(sd[f"{mine}attn.qkv.{kind}"], h, h)):
                        out[f"{hf}self_attn.{n}_proj.{kind}"] = t
                for o, t in _LAYER.items():
                    out[hf + t] = sd[mine + o]
        return out
