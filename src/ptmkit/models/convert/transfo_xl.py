"""Transformer-XL model directories: ptmkit's own tensor names under model_type "ptmkit-transfo-xl".

transformers v5 no longer ships Transformer-XL (and its last TransfoXL classes used an adaptive softmax that
ptmkit's family leaves out), so there is no checkpoint layout to match. The directory keeps the usual layout
(config.json + model.safetensors, backbone tensors under `transformer.`) so save_model / load_model round-trip it,
and the model_type is distinct from transformers' old "transfo-xl" so no library mistakes it for that model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ptmkit.config import from_dict
from ptmkit.models.convert.base import Adapter, Reader
from ptmkit.models.transfo_xl import TransfoXLBackbone, TransfoXLConfig


@dataclass
class TransfoXLAdapter(Adapter):
    model_type: str = "ptmkit-transfo-xl"
    shape_keys: tuple = ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size')
    prefix: str = "transformer."
    architectures: dict = field(default_factory=lambda: {
        "TransfoXLModel": "base",
        "TransfoXLLMHeadModel": "causal-lm",
        "TransfoXLForSequenceClassification": "sequence-classification",
        "TransfoXLForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {
        "causal-lm": {"lm_head.weight": "lm_head.weight"},  # tied: dropped by the loader unless untied
        "sequence-classification": {"score.weight": "score.weight"},
        "token-classification": {"out.weight": "classifier.weight", "out.bias": "classifier.bias"},
    })
    head_key_prefixes: tuple = ("lm_head.", "score.", "classifier.")

    def config_from_hf(self, hf: dict[str, Any]) -> TransfoXLConfig:
        names = {f.name for f in dataclasses.fields(TransfoXLConfig)}
        return from_dict(TransfoXLConfig, {k: v for k, v in hf.items() if k in names}, where="config.json")

    def config_to_hf(self, cfg: TransfoXLConfig) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(cfg)}

    @staticmethod
    def _names(cfg: TransfoXLConfig) -> list[str]:
        with torch.device("meta"):  # the tensor names of this configuration, without allocating them
            return list(TransfoXLBackbone(cfg).state_dict())

    def backbone_from_hf(self, r: Reader, cfg: TransfoXLConfig) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._names(cfg):
            t = r.take(name)
            if t is not None:
                out[name] = t
        return out

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg: TransfoXLConfig) -> dict[str, torch.Tensor]:
        return dict(sd)
