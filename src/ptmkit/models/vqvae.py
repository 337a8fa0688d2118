"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a convolutional encoder maps an
image to a grid of vectors, each replaced by its nearest code of a learned codebook (nn/vector_quantize.py), and a
convolutional decoder maps the codes back to pixels. The codes are the discrete image tokens of text-to-image models
(DALL·E, Ramesh et al. 2021, trains a discrete VAE for the same job; CogView, Ding et al. 2021, a VQ-VAE).

Architecture as in §4.1 of the paper: `num_downsamples` strided 4x4 convolutions (stride 2), then residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv), then a 1x1 projection to the code width; the decoder mirrors it with transposed
4x4 convolutions. An S x S image becomes a (S / 2^num_downsamples)^2 grid of codes.

The config records the pixel normalisation the model was trained on (pixel_mean/pixel_std), so decoded codes become
pixels without a separate file. No Hugging Face form: saved under model_type "ptmkit-vqvae" (models/convert/vqvae.py).

Dimension legend: B batch, C channels, S image side, G grid side, D code width, K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone
from ptmkit.nn.vector_quantize import EMAVectorQuantizer, Quantized


@dataclass
class VQVAEConfig:
    image_size: int = 64
    num_channels: int = 3
    hidden_size: int = 128  # channels of the convolutions next to the code grid (halved per stage towards pixels)
    num_downsamples: int = 3  # stride-2 stages: grid side = image_size / 2^num_downsamples (64 px -> 8 x 8 codes)
    num_residual_blocks: int = 2
    residual_hidden_size: int = 32  # the 3x3 conv's width inside a residual block (sonnet's num_residual_hiddens)
    codebook_size: int = 512  # K
    embedding_dim: int = 64  # D
    ema_decay: float = 0.99  # codebook EMA (Appendix A.1: 0.99)
    ema_epsilon: float = 1e-5  # Laplace smoothing of the code counts
    dead_threshold: float = 1.0  # restart codes used by fewer vectors per batch than this (EMA); 0 = never
    pixel_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # input = (pixel / 255 - mean) / std
    pixel_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    initializer_range: float = 0.02  # unused by the convolutions (PyTorch's default init); kept for the interface

    def __post_init__(self) -> None:
        check_positive("VQVAEConfig", image_size=self.image_size, num_channels=self.num_channels,
                       hidden_size=self.hidden_size, num_downsamples=self.num_downsamples,
                       residual_hidden_size=self.residual_hidden_size, codebook_size=self.codebook_size,
                       embedding_dim=self.embedding_dim)
        if self.num_residual_blocks < 0:
            raise ConfigError(f"VQVAEConfig: num_residual_blocks must be >= 0, got {self.num_residual_blocks}")
        if self.image_size % 2 ** self.num_downsamples:
            raise ConfigError(f"VQVAEConfig: image_size {self.image_size} is not divisible by 2^num_downsamples = "
                              f"{2 ** self.num_downsamples}; choose a side that halves {self.num_downsamples} times")
        if self.hidden_size % 2 ** (self.num_downsamples - 1):
            raise ConfigError(f"VQVAEConfig: hidden_size {self.hidden_size} must be divisible by "
                              f"{2 ** (self.num_downsamples - 1)} (it halves at each stage towards the pixels)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"VQVAEConfig: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.dead_threshold < 0:
            raise ConfigError(f"VQVAEConfig: dead_threshold must be >= 0 (0 = never restart), got {self.dead_threshold}")
        if len(self.pixel_mean) != self.num_channels or len(self.pixel_std) != self.num_channels \
                or min(self.pixel_std) <= 0:
            raise ConfigError(f"VQVAEConfig: pixel_mean and pixel_std need {self.num_channels} values, std > 0")

    @property
    def grid_size(self) -> int:
        return self.image_size // 2 ** self.num_downsamples

    def widths(self) -> list[int]:
        """Channels after each downsampling stage, from the pixels inwards: e.g. [32, 64, 128]."""
        return [self.hidden_size // 2 ** (self.num_downsamples - 1 - i) for i in range(self.num_downsamples)]


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (§4.1)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv1 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv3(torch.relu(x))))


class Encoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        widths = c.widths()
        self.down = nn.ModuleList(nn.Conv2d(cin, cout, 4, stride=2, padding=1)
                                  for cin, cout in zip([c.num_channels] + widths[:-1], widths))
        self.mix = nn.Conv2d(widths[-1], widths[-1], 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden_size, c.residual_hidden_size)
                                    for _ in range(c.num_residual_blocks))
        self.proj = nn.Conv2d(c.hidden_size, c.embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) -> (B, D, G, G)
        for conv in self.down:
            x = torch.relu(conv(x))
        x = self.mix(x)
        for block in self.blocks:
            x = block(x)
        return self.proj(torch.relu(x))


class Decoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        widths = c.widths()[::-1]  # from the grid outwards: e.g. [128, 64, 32]
        self.proj = nn.Conv2d(c.embedding_dim, c.hidden_size, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden_size, c.residual_hidden_size)
                                    for _ in range(c.num_residual_blocks))
        self.up = nn.ModuleList(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
                                for cin, cout in zip(widths, widths[1:] + [c.num_channels]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, G, G) -> (B, C, S, S)
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        x = torch.relu(x)
        for i, conv in enumerate(self.up):
            x = conv(x)
            if i < len(self.up) - 1:
                x = torch.relu(x)
        return x


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, C, S, S) in the normalised pixel space of the input
    codes: torch.Tensor  # (B, G, G) int64
    commitment: torch.Tensor  # () ||z_e - sg(e)||^2, mean per element
    perplexity: torch.Tensor  # () codebook usage of this batch (K = every code equally often)
    restarts: int = 0  # dead codes restarted by this (training) call


class VQVAE(Backbone):
    family = "vqvae"
    causal = False
    takes_soft_prompt = False  # reads pixels

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.quantizer = EMAVectorQuantizer(c.codebook_size, c.embedding_dim, c.ema_decay, c.ema_epsilon,
                                            c.dead_threshold)
        self.decoder = Decoder(c)

    @property
    def vocab_size(self) -> int:
        raise AttributeError("a VQ-VAE reads pixels: its image-token vocabulary is config.codebook_size")

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def input_embeddings(self) -> nn.Module:
        return self.encoder.down[0]

    def quantize(self, pixel_values: torch.Tensor) -> tuple[Quantized, tuple[int, int, int]]:
        z = self.encoder(pixel_values)  # (B, D, G, G)
        b, d, g, _ = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(b * g * g, d)  # (B*G*G, D), rows in row-major grid order
        return self.quantizer(flat), (b, g, d)

    def forward(self, pixel_values: torch.Tensor) -> VQVAEOutput:
        q, (b, g, d) = self.quantize(pixel_values)
        grid = q.quantized.reshape(b, g, g, d).permute(0, 3, 1, 2)  # (B, D, G, G)
        return VQVAEOutput(self.decoder(grid), q.codes.reshape(b, g, g), q.commitment, q.perplexity, q.restarts)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) normalised pixels -> (B, G, G) codes (the nearest code; no codebook update)."""
        z = self.encoder(pixel_values)  # (B, D, G, G)
        b, d, g, _ = z.shape
        with torch.autocast(z.device.type, enabled=False):
            codes = self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d).float())
        return codes.reshape(b, g, g)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, G, G) codes -> (B, C, S, S) normalised pixels."""
        e = self.quantizer.lookup(codes)  # (B, G, G, D)
        return self.decoder(e.permute(0, 3, 1, 2).to(self.decoder.proj.weight.dtype))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, C) uint8 -> (B, C, S, S) float in the model's input space."""
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        return (x - self._stat("pixel_mean", x)) / self._stat("pixel_std", x)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) normalised -> (B, S, S, C) uint8, clipped to [0, 255]."""
        x = x.float() * self._stat("pixel_std", x) + self._stat("pixel_mean", x)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def _stat(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(getattr(self.config, name), dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


VQVAE_HEADS = {"image-reconstruction": lambda backbone: backbone}  # the autoencoder is its own head
