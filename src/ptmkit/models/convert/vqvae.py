"""VQ-VAE model directories (models/vqvae.py). transformers has no VQ-VAE (diffusers' VQModel is another layout), so
the directory keeps ptmkit's own tensor names, codebook buffers included, under model_type "ptmkit-vqvae": ptmkit
saves and loads it through the same engine as every family (shape checks against config.json); transformers refuses
it by its model_type rather than loading something else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, Reader
from ptmkit.models.vqvae import VQVAE, VQVAEConfig


def backbone_names(cfg: VQVAEConfig) -> list[str]:
    """The model's tensor names for this config (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        return list(VQVAE(cfg).state_dict())


@dataclass
class VQVAEAdapter(Adapter):
    model_type: str = "ptmkit-vqvae"
    prefix: str = "vqvae."
    architectures: dict = field(default_factory=lambda: {"VQVAEModel": "base"})
    heads: dict = field(default_factory=dict)
    shape_keys: tuple = ("image_size", "num_channels", "hidden_size", "num_downsamples", "num_residual_blocks",
                         "residual_hidden_size", "codebook_size", "embedding_dim")

    def config_from_hf(self, hf: dict):
        fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
        return VQVAEConfig(**{k: v for k, v in hf.items() if k in fields})

    def config_to_hf(self, cfg) -> dict:
        return {**dataclasses.asdict(cfg), "model_type": self.model_type}

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        sd = {n: r.take(n) for n in backbone_names(cfg)}
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        return dict(sd)
