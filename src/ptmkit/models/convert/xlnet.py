"""XLNet checkpoints (transformers' XLNetModel / XLNetLMHeadModel / XLNetFor{Sequence,Token}Classification)
<-> ptmkit XLNetBackbone and its heads.

transformers stores each projection as one (d_model, n_head, d_head) tensor used as `einsum("ibh,hnd->ibnd")`;
ptmkit uses nn.Linear, whose weight is that tensor flattened to (H, N*D) and transposed (the output projection
`o` is used as `einsum("ibnd,hnd->ibh")`, so its Linear weight is the flattened tensor itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, CheckpointError, Reader
from ptmkit.models.xlnet import XLNetConfig

_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "intermediate_size": "d_inner",
    "hidden_act": "ff_activation",
    "attn_type": "attn_type",
    "clamp_len": "clamp_len",
    "layer_norm_eps": "layer_norm_eps",
    "dropout": "dropout",
    "initializer_range": "initializer_range",
    "summary_type": "summary_type",
    "summary_last_dropout": "summary_last_dropout",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
_IN = ("q", "k", "v", "r")  # (H, N, D) tensors applied as x @ W
_PLAIN = {  # ptmkit name inside a layer -> HF name inside transformer.layer.{i}
    "attn.r_w_bias": "rel_attn.r_w_bias",
    "attn.r_r_bias": "rel_attn.r_r_bias",
    "attn.r_s_bias": "rel_attn.r_s_bias",
    "attn.seg_embed": "rel_attn.seg_embed",
    "attn.norm.weight": "rel_attn.layer_norm.weight",
    "attn.norm.bias": "rel_attn.layer_norm.bias",
    "ffn.up.weight": "ff.layer_1.weight",
    "ffn.up.bias": "ff.layer_1.bias",
    "ffn.down.weight": "ff.layer_2.weight",
    "ffn.down.bias": "ff.layer_2.bias",
    "norm.weight": "ff.layer_norm.weight",
    "norm.bias": "ff.layer_norm.bias",
}


@dataclass
class XLNetAdapter(Adapter):
    model_type: str = "xlnet"
    shape_keys: tuple = ('vocab_size', 'd_model', 'n_layer', 'n_head', 'd_inner')
    prefix: str = "transformer."
    architectures: dict = field(default_factory=lambda: {
        "XLNetModel": "base",
        "XLNetLMHeadModel": "permutation-lm",
        "XLNetForSequenceClassification": "sequence-classification",
        "XLNetForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "permutation-lm": {"lm_head.bias": "lm_loss.bias"},  # the weight is the token table (tied)
        "sequence-classification": {
            "dense.weight": "sequence_summary.summary.weight",
            "dense.bias": "sequence_summary.summary.bias",
            "out.weight": "logits_proj.weight",
            "out.bias": "logits_proj.bias",
        },
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("lm_loss.", "sequence_summary.", "logits_proj.", "classifier.", "qa_outputs.",
                                "start_logits.", "end_logits.", "answer_class.")

    def config_from_hf(self, hf: dict) -> XLNetConfig:
        unsupported = {"bi_data": False, "same_length": False, "summary_use_proj": True,
                       "summary_activation": "tanh", "tie_word_embeddings": True}
        for key, want in unsupported.items():
            if hf.get(key) is not None and hf[key] != want:
                raise CheckpointError(f"xlnet: {key}={hf[key]!r} is not supported (only {want!r})")
        if hf.get("summary_proj_to_labels"):
            raise CheckpointError("xlnet: summary_proj_to_labels=true is not supported (the summary projects to d_model)")
        if hf.get("summary_first_dropout"):
            raise CheckpointError("xlnet: summary_first_dropout is not supported")
        d_head = hf.get("d_head")
        if d_head is not None and hf.get("d_model") and hf.get("n_head") and d_head * hf["n_head"] != hf["d_model"]:
            raise CheckpointError(f"xlnet: d_head {d_head} x n_head {hf['n_head']} != d_model {hf['d_model']}")
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        kwargs["mem_len"] = hf.get("mem_len") or 0  # transformers: None = keep all
        kwargs["reuse_len"] = hf.get("reuse_len") or 0
        return XLNetConfig(**kwargs)

    def config_to_hf(self, cfg: XLNetConfig) -> dict:
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        out.update(model_type=self.model_type, d_head=cfg.head_dim, mem_len=cfg.mem_len or None,
                   reuse_len=cfg.reuse_len or None, bi_data=False, same_length=False, summary_use_proj=True,
                   summary_activation="tanh", tie_word_embeddings=True)
        return out

    def backbone_from_hf(self, r: Reader, cfg: XLNetConfig) -> dict[str, torch.Tensor]:
        h, nd = cfg.hidden_size, cfg.num_heads * cfg.head_dim
        sd = {"embeddings.tok.weight": r.take("word_embedding.weight")}
        mask = r.take("mask_emb")
        if mask is not None:
            sd["embeddings.mask"] = mask.reshape(-1)  # (1, 1, H) -> (H,)
        if r.has("lm_loss.weight"):  # a tied copy some checkpoints store: it must equal the token table
            copy, table = r.take("lm_loss.weight"), sd["embeddings.tok.weight"]
            if table is not None and (copy.shape != table.shape or not torch.equal(copy, table)):
                raise CheckpointError("xlnet: lm_loss.weight differs from word_embedding.weight; untied XLNet "
                                      "output layers are not supported")
        for i in range(cfg.num_layers):
            hf = f"layer.{i}."
            for name in _IN:
                t = r.take(f"{hf}rel_attn.{name}")
                if t is not None:
                    sd[f"layers.{i}.attn.{name}.weight"] = t.reshape(h, nd).t()  # (N*D, H)
            o = r.take(f"{hf}rel_attn.o")
            if o is not None:
                sd[f"layers.{i}.attn.o.weight"] = o.reshape(h, nd)  # (H, N*D)
            for ours, theirs in _PLAIN.items():
                sd[f"layers.{i}.{ours}"] = r.take(hf + theirs)
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: XLNetConfig) -> dict[str, torch.Tensor]:
        h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        out = {"word_embedding.weight": sd["embeddings.tok.weight"], "mask_emb": sd["embeddings.mask"].reshape(1, 1, h)}
        for i in range(cfg.num_layers):
            hf = f"layer.{i}."
            for name in _IN:
                out[f"{hf}rel_attn.{name}"] = sd[f"layers.{i}.attn.{name}.weight"].t().reshape(h, n, d)
            out[f"{hf}rel_attn.o"] = sd[f"layers.{i}.attn.o.weight"].reshape(h, n, d)
            for ours, theirs in _PLAIN.items():
                out[hf + theirs] = sd[f"layers.{i}.{ours}"]
        return out
