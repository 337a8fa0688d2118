"""ELECTRA checkpoints (transformers' ElectraModel/ElectraFor* names) <-> ptmkit ElectraEncoder and its heads.

The Transformer layers are named exactly as BERT's, so the BERT adapter converts them; ELECTRA adds the E → H
`embeddings_project` and its own head names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import CheckpointError, Reader
from ptmkit.models.convert.bert import _CONFIG_KEYS, BertAdapter
from ptmkit.models.electra import ElectraConfig

_PROJECT = {f"embeddings_project.{n}": f"embeddings_project.{n}" for n in ("weight", "bias")}  # same names both sides


@dataclass
class ElectraAdapter(BertAdapter):
    model_type: str = "electra"
    prefix: str = "electra."
    config_class: type = ElectraConfig
    architectures: dict = field(default_factory=lambda: {
        "ElectraModel": "base",
        "ElectraForPreTraining": "replaced-token-detection",
        "ElectraForMaskedLM": "masked-lm",
        "ElectraForSequenceClassification": "sequence-classification",
        "ElectraForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "replaced-token-detection": {
            "head.dense.weight": "discriminator_predictions.dense.weight",
            "head.dense.bias": "discriminator_predictions.dense.bias",
            "head.prediction.weight": "discriminator_predictions.dense_prediction.weight",
            "head.prediction.bias": "discriminator_predictions.dense_prediction.bias",
        },
        "masked-lm": {
            "head.dense.weight": "generator_predictions.dense.weight",
            "head.dense.bias": "generator_predictions.dense.bias",
            "head.norm.weight": "generator_predictions.LayerNorm.weight",
            "head.norm.bias": "generator_predictions.LayerNorm.bias",
            "head.bias": "generator_lm_head.bias",
        },
        "sequence-classification": {
            "dense.weight": "classifier.dense.weight",
            "dense.bias": "classifier.dense.bias",
            "out.weight": "classifier.out_proj.weight",
            "out.bias": "classifier.out_proj.bias",
        },
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("discriminator_predictions.", "generator_predictions.", "generator_lm_head.",
                                "classifier.", "qa_outputs.")
    # generator_lm_head.weight is the word-embedding matrix (tied); older saves list the copy.
    ignore: tuple = ("embeddings.position_ids", "embeddings.token_type_ids", "generator_lm_head.weight")

    def config_from_hf(self, hf: dict):
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise CheckpointError(f"electra: position_embedding_type {pos!r} is not supported (only 'absolute')")
        if hf.get("tie_word_embeddings", True) is False:
            raise CheckpointError(
                "electra: tie_word_embeddings=false (a generator head with its own output matrix) is not supported; "
                "ptmkit's ELECTRA generator always ties its decoder to the word embeddings"
            )
        kwargs = {ours: hf[theirs] for ours, theirs in _CONFIG_KEYS.items() if hf.get(theirs) is not None}
        if hf.get("embedding_size") is not None:
            kwargs["embedding_size"] = hf["embedding_size"]
        return ElectraConfig(**kwargs)

    def config_to_hf(self, cfg) -> dict:
        out = super().config_to_hf(cfg)
        out.update(embedding_size=cfg.embedding_size, tie_word_embeddings=True)
        return out

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        sd = super().backbone_from_hf(r, cfg)
        if cfg.embedding_size != cfg.hidden_size:
            for ours, theirs in _PROJECT.items():
                t = r.take(theirs)
                if t is not None:
                    sd[ours] = t
        return sd

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        out = super().backbone_to_hf(sd, cfg)
        out.update({theirs: sd[ours] for ours, theirs in _PROJECT.items() if ours in sd})
        return out
