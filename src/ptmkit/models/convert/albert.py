"""ALBERT checkpoints (transformers' AlbertModel/AlbertFor* names) <-> ptmkit AlbertEncoder and its heads.

transformers stores cross-layer sharing as `num_hidden_groups` groups of `inner_group_num` layers
(encoder.albert_layer_groups.{g}.albert_layers.{j}); layer i runs group i // (num_hidden_layers / num_hidden_groups).
ptmkit holds one block per layer where the blocks of a group are the same module, so import writes a group's tensors
under each of its layers' names and export reads them from the group's first layer. Hugging Face's format can express
only whole-layer sharing (share="all" with any number of groups; share="none" is num_hidden_groups = num_layers);
share="attention"/"ffn" cannot be exported (AlbertEncoder.unshare() first, which keeps the function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.albert import AlbertConfig
from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, fuse_qkv, split_qkv

# ptmkit name inside layers.{i} -> HF name inside encoder.albert_layer_groups.{g}.albert_layers.0
_LAYER = {
    "attn.out.weight": "attention.dense.weight",
    "attn.out.bias": "attention.dense.bias",
    "norm1.weight": "attention.LayerNorm.weight",
    "norm1.bias": "attention.LayerNorm.bias",
    "ffn.up.weight": "ffn.weight",
    "ffn.up.bias": "ffn.bias",
    "ffn.down.weight": "ffn_output.weight",
    "ffn.down.bias": "ffn_output.bias",
    "norm2.weight": "full_layer_layer_norm.weight",
    "norm2.bias": "full_layer_layer_norm.bias",
}
_EMB = {
    "embeddings.tok.weight": "embeddings.word_embeddings.weight",
    "embeddings.pos.weight": "embeddings.position_embeddings.weight",
    "embeddings.segment.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    # ALBERT §3.1: the E → H projection of the factorised embedding
    "embeddings_project.weight": "encoder.embedding_hidden_mapping_in.weight",
    "embeddings_project.bias": "encoder.embedding_hidden_mapping_in.bias",
}
_CONFIG_KEYS = {  # ptmkit field -> HF config key
    "vocab_size": "vocab_size",
    "embedding_size": "embedding_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "num_hidden_groups": "num_hidden_groups",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "classifier_dropout": "classifier_dropout_prob",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}
_MLM = {
    "head.dense.weight": "predictions.dense.weight",
    "head.dense.bias": "predictions.dense.bias",
    "head.norm.weight": "predictions.LayerNorm.weight",
    "head.norm.bias": "predictions.LayerNorm.bias",
    "head.bias": "predictions.bias",
}


def _group(i: int) -> str:
    return f"encoder.albert_layer_groups.{i}.albert_layers.0."


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # TF-converted checkpoints may call LayerNorm parameters gamma/beta.
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in state.items()}


@dataclass
class AlbertAdapter(Adapter):
    model_type: str = "albert"
    shape_keys: tuple = ('vocab_size', 'embedding_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings')
    prefix: str = "albert."
    architectures: dict = field(default_factory=lambda: {
        "AlbertModel": "base",
        "AlbertForPreTraining": "masked-lm-sop",
        "AlbertForMaskedLM": "masked-lm",
        "AlbertForSequenceClassification": "sequence-classification",
        "AlbertForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "masked-lm": dict(_MLM),
        "masked-lm-sop": {
            **_MLM,
            "pair_head.pool.weight": "{p}pooler.weight",
            "pair_head.pool.bias": "{p}pooler.bias",
            "pair_head.out.weight": "sop_classifier.classifier.weight",
            "pair_head.out.bias": "sop_classifier.classifier.bias",
        },
        "sequence-classification": {
            "dense.weight": "{p}pooler.weight",
            "dense.bias": "{p}pooler.bias",
            "out.weight": "classifier.weight",
            "out.bias": "classifier.bias",
        },
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("predictions.", "sop_classifier.", "classifier.", "{p}pooler.", "qa_outputs.")
    # predictions.decoder.* are the tied word embeddings and predictions.bias, listed by older saves.
    ignore: tuple = ("embeddings.position_ids", "embeddings.token_type_ids", "predictions.decoder.*")

    def config_from_hf(self, hf: dict) -> AlbertConfig:
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise CheckpointError(f"albert: position_embedding_type {pos!r} is not supported (only 'absolute')")
        inner = hf.get("inner_group_num", 1)
        if inner != 1:
            raise CheckpointError(
                f"albert: inner_group_num={inner} (several different layers inside each shared group, run "
                f"num_hidden_layers x inner_group_num times) is not supported; ptmkit reads inner_group_num=1, which "
                "every released ALBERT checkpoint uses"
            )
        if hf.get("tie_word_embeddings", True) is False:
            raise CheckpointError(
                "albert: tie_word_embeddings=false (an MLM decoder with its own matrix) is not supported; ptmkit's "
                "ALBERT MLM head always ties its decoder to the E-wide word embeddings"
            )
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        layers, groups = kwargs.get("num_layers", 12), kwargs.get("num_hidden_groups", 1)
        if layers % groups:
            raise CheckpointError(
                f"albert: num_hidden_groups {groups} does not divide num_hidden_layers {layers}; transformers would "
                "give its groups unequal numbers of layers, which ptmkit does not reproduce"
            )
        return AlbertConfig(share="all", **kwargs)

    def config_to_hf(self, cfg: AlbertConfig) -> dict:
        self._check_exportable(cfg)
        out = {theirs: getattr(cfg, ours) for ours, theirs in _CONFIG_KEYS.items()}
        # share="none" is num_hidden_groups = num_layers: every layer its own group
        out["num_hidden_groups"] = self._hf_groups(cfg)
        out.update(model_type=self.model_type, inner_group_num=1, tie_word_embeddings=True)
        return out

    @staticmethod
    def _hf_groups(cfg: AlbertConfig) -> int:
        return cfg.num_hidden_groups if cfg.share == "all" else cfg.num_layers

    @staticmethod
    def _check_exportable(cfg: AlbertConfig) -> None:
        if cfg.share in ("attention", "ffn"):
            raise CheckpointError(
                f"albert: share={cfg.share!r} cannot be represented in Hugging Face's ALBERT format, which shares only "
                "whole layers (num_hidden_groups); call model.backbone.unshare() (or AlbertEncoder.unshare()) to "
                "give each layer its own copy of the shared weights — the outputs stay the same — then save, or "
                "train with share 'all' or 'none'"
            )

    def backbone_from_hf(self, r: Reader, cfg: AlbertConfig) -> dict[str, torch.Tensor]:
        r.state = _legacy_names(r.state)
        sd = {ours: r.take(theirs) for ours, theirs in _EMB.items()}
        if cfg.type_vocab_size == 0:
            sd.pop("embeddings.segment.weight")
        h = cfg.num_heads
        for g in range(self._hf_groups(cfg)):
            hf = _group(g)
            group = {}
            q, k, v = (r.take(f"{hf}attention.{n}.weight") for n in ("query", "key", "value"))
            qb, kb, vb = (r.take(f"{hf}attention.{n}.bias") for n in ("query", "key", "value"))
            if q is not None and k is not None and v is not None:
                group["attn.qkv.weight"] = fuse_qkv(q, k, v, h, h)
            if qb is not None and kb is not None and vb is not None:
                group["attn.qkv.bias"] = fuse_qkv(qb, kb, vb, h, h)
            for ours, theirs in _LAYER.items():
                group[ours] = r.take(hf + theirs)
            # the group's weights under every layer that runs it (they are one module; each name loads it again)
            for i in range(g * cfg.layers_per_group, (g + 1) * cfg.layers_per_group):
                sd.update({f"layers.{i}.{name}": t for name, t in group.items()})
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: AlbertConfig) -> dict[str, torch.Tensor]:
        self._check_exportable(cfg)
        out = {theirs: sd[ours] for ours, theirs in _EMB.items() if ours in sd}
        groups = self._hf_groups(cfg)
        h = cfg.num_heads
        for g in range(groups):
            first = f"layers.{g * (cfg.num_layers // groups)}."  # every layer of the group holds the same tensors
            hf = _group(g)
            for name, t in zip(("query", "key", "value"), split_qkv(sd[first + "attn.qkv.weight"], h, h)):
                out[f"{hf}attention.{name}.weight"] = t
            for name, t in zip(("query", "key", "value"), split_qkv(sd[first + "attn.qkv.bias"], h, h)):
                out[f"{hf}attention.{name}.bias"] = t
            for ours, theirs in _LAYER.items():
                out[hf + theirs] = sd[first + ours]
        return out
