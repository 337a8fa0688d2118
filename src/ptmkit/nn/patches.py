"""Images as token sequences (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", §3.1): cut the image into
P x P patches, project each linearly to the model width (one strided convolution does both), prepend a learned
class token and add learned absolute positions, one per patch and one for the class token.

`PatchEmbedding` is the patchify step alone: vision-language models that feed patch tokens to a text encoder
(single-stream VisualBERT-style models, two-stream co-attention models) take its (B, N, H) output as their image
tokens. `ImageEmbeddings` adds the class token and the positions, as ViT and CLIP's vision tower do.

Dimension legend: B batch, C channels, S image side, P patch side, N = (S / P)^2 patches, H hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive


def check_patch_grid(where: str, image_size: int, patch_size: int) -> int:
    """Patches per side; an image side that patches do not tile is an error naming the sizes that would."""
    check_positive(where, image_size=image_size, patch_size=patch_size)
    if image_size % patch_size:
        fits = [p for p in range(1, image_size + 1) if image_size % p == 0 and p <= 2 * patch_size][-3:]
        raise ConfigError(
            f"{where}: image_size {image_size} is not divisible by patch_size {patch_size}, so the patches would not "
            f"tile the image; use a patch size that divides it (e.g. {fits}) or an image size that is a multiple of "
            f"{patch_size} (e.g. {image_size // patch_size * patch_size or patch_size})"
        )
    return image_size // patch_size


class PatchEmbedding(nn.Module):
    """(B, C, S, S) pixels -> (B, N, H) patch tokens, row-major over the patch grid (ViT §3.1 eq. 1, x_p E)."""

    def __init__(self, image_size: int, patch_size: int, channels: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.grid = check_patch_grid("PatchEmbedding", image_size, patch_size)
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        # A convolution with kernel = stride = P is the per-patch linear map E of ViT eq. 1, applied to all patches.
        self.proj = nn.Conv2d(channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=bias)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixel_values.shape
        if c != self.channels or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"pixel_values are {c} x {h} x {w} but the model takes {self.channels} x {self.image_size} x "
                f"{self.image_size}; resize the images to image_size {self.image_size} (the data pipeline's "
                "images.image_size must equal the vision config's image_size)"
            )
        x = self.proj(pixel_values.to(self.proj.weight.dtype))  # (B, H, S/P, S/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, H)


class ImageEmbeddings(nn.Module):
    """[class; patch tokens] + learned positions, then dropout: (B, C, S, S) -> (B, 1 + N, H) (ViT eq. 1)."""

    # Like biases, the class token and the position table are left out of weight decay (ptmkit.train.optim reads
    # this; open_clip exempts every parameter of fewer than two dimensions, and the class token is one).
    bias_names = ("cls",)

    def __init__(self, image_size: int, patch_size: int, channels: int, hidden_size: int, patch_bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.patches = PatchEmbedding(image_size, patch_size, channels, hidden_size, bias=patch_bias)
        self.cls = nn.Parameter(torch.zeros(hidden_size))  # (H,) x_class of ViT eq. 1
        self.pos = nn.Parameter(torch.zeros(self.patches.num_patches + 1, hidden_size))  # (1 + N, H) E_pos
        self.drop = nn.Dropout(dropout)

    def init_weights(self, std: float, cls_std: float | None = None) -> None:
        nn.init.normal_(self.patches.proj.weight, std=std)
        if self.patches.proj.bias is not None:
            nn.init.zeros_(self.patches.proj.bias)
        nn.init.normal_(self.cls, std=std if cls_std is None else cls_std)
        nn.init.normal_(self.pos, std=std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patches(pixel_values)  # (B, N, H)
        cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, H)
        x = torch.cat([cls, x], dim=1) + self.pos.to(x.dtype)  # (B, 1 + N, H)
        return self.drop(x)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, N, P * P * C): each patch's raw pixels, in PatchEmbedding's row-major patch order (the
    per-patch "region features" of vision-language objectives: masked feature regression targets, codebook inputs)."""
    b, c, h, w = pixel_values.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"images of {h} x {w} pixels are not tiled by {patch_size}-pixel patches; use an image size "
                         f"that is a multiple of the patch size")
    x = pixel_values.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)  # (B, C, g, P, g, P)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch_size) * (w // patch_size), -1)  # (B, N, P*P*C)
