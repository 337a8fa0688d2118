"""Sampling an image's codes from a text-to-image Transformer (DALL·E, Ramesh et al. 2021 §2.3; CogView): after the
prompt [text ; begin-of-image], draw the grid's codes one at a time in row-major order. Only image tokens can be drawn
in image positions: each step's logits are restricted to the K code ids before temperature / top-k / top-p
(models/generate.py's `next_token`), so a sample is always a valid grid, whatever mass the model puts elsewhere.

With a KV cache each step feeds only the new token; without one the whole prefix is re-run (the reference the cached
path is tested against). Dimension legend: B batch, P prompt length, N image tokens, K codebook size.
"""

from __future__ import annotations

import torch

from ptmkit.data.images.layout import ImageTokenLayout
from ptmkit.models.generate import _check, next_token


@torch.no_grad()
def sample_image_codes(model, prompt: torch.Tensor, layout: ImageTokenLayout, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                       use_cache: bool = True) -> torch.Tensor:
    """(B, P) prompts (layout.prompt) -> (B, G, G) codes in 0..K-1."""
    _check(temperature, top_k, top_p, layout.image_tokens)
    model.eval()
    b, p = prompt.shape
    n, lo, hi = layout.image_tokens, layout.offset, layout.offset + layout.codebook_size
    if model.config.vocab_size != layout.vocab_size:
        raise ValueError(f"the generator's vocabulary has {model.config.vocab_size} ids but its layout needs "
                         f"{layout.vocab_size} (text {layout.text_vocab} + begin-of-image + {layout.codebook_size} "
                         "codes): the model directory and its text_to_image.json do not belong together")
    cache = model.backbone.new_cache(b, p + n, next(model.parameters()).dtype, prompt.device) if use_cache else None
    tokens, step_input = prompt, prompt
    never = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    codes = []
    for _ in range(n):
        if use_cache:
            logits = model(step_input, cache=cache, logits_to_keep=1).logits[:, -1]  # (B, V)
        else:
            logits = model(tokens, logits_to_keep=1).logits[:, -1]
        code = next_token(logits[:, lo:hi], temperature, top_k, top_p, generator, never, 0)  # (B,) in 0..K-1
        codes.append(code)
        step_input = (code + lo)[:, None]
        tokens = torch.cat([tokens, step_input], dim=1)
    return torch.stack(codes, 1).view(b, layout.grid_size, layout.grid_size)
