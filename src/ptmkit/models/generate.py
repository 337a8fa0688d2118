"""Autoregressive decoding for causal LMs: greedy, temperature, top-k, top-p (Holtzman et al. 2020), stop tokens.

With a KV cache each step feeds only the new token; without one the whole prefix is re-run
(kept as the reference the cached path is tested against). Dimension legend: B batch, T length, V vocabulary.
"""

from __future__ import annotations

from typing import Iterable

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest set with probability >= top_p to -inf."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first is always kept)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits, temperature, top_k, top_p, generator, finished, fill) -> torch.Tensor:
    """Pick each row's next token (argmax, or a filtered sample); finished rows get `fill`. logits (B, V)."""
    logits = logits.float()
    if temperature == 0:
        nxt = logits.argmax(-1)
    else:
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(finished, torch.full_like(nxt, fill), nxt)  # (B,)


def _check(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,  # (B, T) prompts, left-padded when their lengths differ
    attention_mask: torch.Tensor | None = None,  # (B, T)
    max_new_tokens: int = 32,
    temperature: float = 0.0,  # 0 = greedy
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Iterable[int] = (),
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return (B, T + n) token ids; after a stop token a row is filled with pad_token_id (or the stop token)."""
    _check(temperature, top_k, top_p, max_new_tokens)
    model.eval()
    b, t = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    fill = pad_token_id if pad_token_id is not None else (int(stops[0]) if len(stops) else 0)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    extra = model.backbone.virtual_positions()  # a soft prompt's or a prefix's positions come first
    if max_pos is not None and getattr(model.backbone.embeddings, "pos", None) is not None and \
            extra + t + max_new_tokens > max_pos:
        raise ValueError(f"prompt ({t}) + max_new_tokens ({max_new_tokens})" + (f" + {extra} virtual positions"
                         if extra else "") + f" exceeds the model's {max_pos} positions")

    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = model.backbone.new_cache(b, t + max_new_tokens, dtype, device)
    tokens, mask = input_ids, attention_mask
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    step_input = input_ids
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_input, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]
        else:
            logits = model(tokens, attention_mask=mask, logits_to_keep=1).logits[:, -1]  # (B, V)
        nxt = next_token(logits, temperature, top_k, top_p, generator, finished, fill)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
        step_input = nxt[:, None]
        if len(stops):
            finished |= torch.isin(nxt, stops)
            if bool(finished.all()):
                break
    return tokens
