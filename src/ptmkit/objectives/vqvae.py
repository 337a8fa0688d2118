"""VQ-VAE training (van den Oord et al. 2017, eq. 3): reconstruction error + beta * commitment, with the codebook
moved by EMA inside the model (nn/vector_quantize.py), so eq. 3's middle (codebook) term has no gradient to carry.
The reconstruction term is the mean squared error in the model's normalised pixel space (a Gaussian decoder with
fixed variance, as in the paper). Images come from the image pipeline (data/images), which also augments them;
`corrupt()` has nothing to add.

Metrics: the loss terms, the codebook perplexity (how many codes the batch uses, effectively), dead codes restarted,
and PSNR in 8-bit pixel terms (the error mapped back to [0, 1] pixels with the model's pixel_std).

Dimension legend: B batch, C channels, S side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch


@dataclass
class VQVAELossConfig:
    commitment_cost: float = 0.25  # beta of eq. 3 (§4.1: 0.25; results were robust from 0.1 to 2.0)

    def __post_init__(self) -> None:
        if not (isinstance(self.commitment_cost, (int, float)) and self.commitment_cost >= 0):
            raise ConfigError(f"vqvae: commitment_cost must be a number >= 0, got {self.commitment_cost!r}")


def pixel_mse(reconstruction: torch.Tensor, target: torch.Tensor, pixel_std) -> torch.Tensor:
    """(B,) mean squared error per image in [0, 1] pixel units: the normalised error times std^2 per channel."""
    std = torch.tensor(pixel_std, dtype=torch.float32, device=target.device).view(1, -1, 1, 1)
    return ((reconstruction.float() - target.float()) * std).pow(2).mean(dim=(1, 2, 3))


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error in [0, 1] pixel units (peak 1)."""
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class VQVAEObjective:
    task = "image-reconstruction"
    inputs = ("pixel_values",)  # images only (data/images): a VQ-VAE reads no captions

    def __init__(self, cfg: VQVAELossConfig | None = None):
        self.cfg = cfg or VQVAELossConfig()

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return dict(batch)  # the image pipeline augments

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["pixel_values"]  # (B, C, S, S)
        out = model(x)
        reconstruction = F.mse_loss(out.reconstruction.float(), x.float())
        loss = reconstruction + self.cfg.commitment_cost * out.commitment
        with torch.no_grad():
            mse = pixel_mse(out.reconstruction, x, model.config.pixel_std).mean().item()
        return loss, {"loss": loss.item(), "reconstruction": reconstruction.item(),
                      "commitment": out.commitment.item(), "pixel_mse": mse, "psnr": psnr(mse),
                      "codebook_perplexity": out.perplexity.item(), "restarted_codes": float(out.restarts)}
