"""Light image augmentation on a batch of cached images, and normalisation.

Random resized crop (Szegedy et al. 2015, as in torchvision's RandomResizedCrop): each image shows a random window
of `scale` of its area and `ratio` aspect, resized back to S x S; optionally mirrored. CLIP itself trained with "a
random square crop from resized images" as its only augmentation (Radford et al. 2021 §2.5). Every image's window
is one affine map, so the whole batch is one `affine_grid` + `grid_sample` call, cheap next to a training step.

Flips are off by default: a mirrored emoji can mean something else (left/right arrows, a person facing the other
way, letters, digits and keycaps, flags with an emblem off-centre), and captions that say "left" or "right" become
wrong. Turn them on (images.flip) for photographs whose captions do not depend on handedness.

All randomness comes from the generator passed in (seeded per step), so a resumed run sees the same pixels.

Dimension legend: B batch, C channels, S side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# OpenAI CLIP's preprocessing (the mean and std of its training images, per RGB channel)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def to_float(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, S, S, C) uint8 -> (B, C, S, S) float32 in [0, 1], then (x - mean) / std per channel."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, S, S)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float], flip: float,
                        generator: torch.Generator) -> torch.Tensor:
    """(B, C, S, S) -> (B, C, S, S): per image a window of area fraction in `scale` and aspect (w/h) in `ratio`
    (log-uniform), at a uniform position inside the image, bilinearly resized to S x S; mirrored with probability
    `flip`. scale (1, 1) and flip 0 return `x` unchanged."""
    b = x.shape[0]
    if scale[0] >= 1.0 and flip <= 0.0:
        return x
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)  # (B,)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # (B,) window width as a fraction of the side
    h = (area / r).sqrt().clamp(max=1.0)
    # window centre in affine_grid's [-1, 1] coordinates: anywhere that keeps the window inside the image
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    mirror = torch.where(torch.rand(b, generator=generator) < flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * mirror  # output x in [-1, 1] samples input x in [cx - w, cx + w], reversed when mirrored
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
