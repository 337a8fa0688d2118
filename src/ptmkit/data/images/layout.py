"""The token layout of a text-to-image Transformer (DALL·E, Ramesh et al. 2021 §2.2; CogView, Ding et al. 2021 §2.1):
one causal sequence [text tokens ; begin-of-image ; image tokens], the image tokens being VQ-VAE codes in row-major
grid order.

Ids: the text tokenizer's ids first (0 .. text_vocab - 1), then one begin-of-image id (text_vocab), then the K codes
(text_vocab + 1 + code). The text is right-padded with the tokenizer's padding token to a fixed text_len, and the
padding stays in the sequence as ordinary (never predicted) tokens, as DALL·E pads its 256 text positions: every
image token then sits at the same absolute position in every sequence, so learned positions (GPT-2) and rotary ones
(LLaMA) both know where in the grid a token is, and generation needs no attention mask.

Dimension legend: B batch, L text_len, N image tokens (grid^2).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ptmkit.config import ConfigError, check_positive


@dataclass(frozen=True)
class ImageTokenLayout:
    text_vocab: int  # ids of the text tokenizer
    text_len: int  # L: text positions (padded)
    codebook_size: int  # K: the image tokenizer's codes
    grid_size: int  # G: the image is a G x G grid of codes

    def __post_init__(self) -> None:
        check_positive("image-token layout", text_vocab=self.text_vocab, text_len=self.text_len,
                       codebook_size=self.codebook_size, grid_size=self.grid_size)

    @property
    def boi(self) -> int:
        return self.text_vocab  # begin-of-image

    @property
    def offset(self) -> int:
        return self.text_vocab + 1  # id of code 0

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + 1 + self.codebook_size

    @property
    def image_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def seq_len(self) -> int:
        return self.text_len + 1 + self.image_tokens

    def prompt(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) padded text ids -> (B, L + 1): the text and the begin-of-image token, what generation continues."""
        if text.shape[1] != self.text_len:
            raise ValueError(f"text has {text.shape[1]} positions; this layout pads text to {self.text_len}")
        if text.numel() and int(text.max()) >= self.text_vocab:
            raise ValueError(f"text id {int(text.max())} is outside the text vocabulary of {self.text_vocab} ids")
        return torch.cat([text, torch.full_like(text[:, :1], self.boi)], dim=1)

    def sequence(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) padded text ids and (B, N) codes (or (B, G, G)) -> (B, L + 1 + N) ids."""
        codes = codes.reshape(codes.shape[0], -1)
        if codes.shape[1] != self.image_tokens:
            raise ValueError(f"{codes.shape[1]} image codes per row; this layout has a {self.grid_size} x "
                             f"{self.grid_size} grid ({self.image_tokens} codes)")
        return torch.cat([self.prompt(text), codes.long() + self.offset], dim=1)

    def to_json(self, **extra) -> str:
        return json.dumps({**asdict(self), **extra}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTokenLayout":
        missing = [k for k in ("text_vocab", "text_len", "codebook_size", "grid_size") if k not in d]
        if missing:
            raise ConfigError(f"image-token layout: missing {missing}")
        return cls(d["text_vocab"], d["text_len"], d["codebook_size"], d["grid_size"])
