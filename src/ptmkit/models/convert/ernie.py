"""THU-ERNIE model directories (models/ernie.py). transformers has no such model (its "ernie" is Baidu's), so the
directory keeps ptmkit's own tensor names under model_type "ptmkit-ernie-thu": ptmkit saves and loads it through the
same engine as every family (shape checks, head tables, fresh heads for fine-tuning); transformers refuses it by its
model_type rather than loading something else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, Reader
from ptmkit.models.ernie import ErnieConfig, ErnieEncoder

_HEADS = {
    "knowledge-masked-lm": {n: n for n in ("head.dense.weight", "head.dense.bias", "head.norm.weight",
                                           "head.norm.bias", "head.bias")},
    "sequence-classification": {n: n for n in ("dense.weight", "dense.bias", "out.weight", "out.bias")},
    "token-classification": {n: n for n in ("out.weight", "out.bias")},
}


def backbone_names(cfg: ErnieConfig) -> list[str]:
    """The backbone's tensor names for this config (built on the meta device: no memory, no weights read)."""
    with torch.device("meta"):
        return list(ErnieEncoder(dataclasses.replace(cfg, entity_embeddings=None)).state_dict())


@dataclass
class ErnieAdapter(Adapter):
    model_type: str = "ptmkit-ernie-thu"
    prefix: str = "ernie."
    architectures: dict = field(default_factory=lambda: {
        "ErnieThuModel": "base",
        "ErnieThuForMaskedLM": "knowledge-masked-lm",
        "ErnieThuForSequenceClassification": "sequence-classification",
        "ErnieThuForTokenClassification": "token-classification",
    })
    heads: dict = field(default_factory=lambda: {task: dict(t) for task, t in _HEADS.items()})
    head_key_prefixes: tuple = ("head.", "dense.", "out.")
    shape_keys: tuple = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                         "max_position_embeddings", "num_knowledge_layers", "num_entities", "entity_size")

    def config_from_hf(self, hf: dict):
        fields = {f.name for f in dataclasses.fields(ErnieConfig)} - {"entity_embeddings"}
        return ErnieConfig(**{k: v for k, v in hf.items() if k in fields})

    def config_to_hf(self, cfg) -> dict:
        out = dataclasses.asdict(cfg)
        out.pop("entity_embeddings")  # the weights hold the table; the TransE file is only where it started
        out["model_type"] = self.model_type
        return out

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        sd = {n: r.take(n) for n in backbone_names(cfg)}
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        return dict(sd)
