"""Linformer attention (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity"): keys and values are
projected along the sequence to a fixed length P by learned matrices E, F (P x max_len), so attention costs O(T P).

    out = softmax(scale * Q (E K)^T) (F V)        E K, F V: (P, D)      (paper eq. 7)

A sequence of S < max_len tokens uses the first S columns of E and F (as the reference implementation); padded
keys and values are zeroed before the projection, and a projected slot that no real key reaches (possible with the
pooling initialisation) is masked. Sharing variants (paper §4 "parameter sharing"): "headwise" (one E and one F per
layer for all heads), "key-value" (E = F, one per layer; the default), "none" (E and F per key/value head). The paper's layerwise
sharing (one E for all layers) needs a module shared across layers and is not offered. The projections and the
attention run chunk by chunk through ptmkit.nn.kernels.recompute, so the backward pass keeps no per-token
intermediates (attention dropout masks are regenerated from a seed per chunk). Only defined for
bidirectional attention: a projection along the sequence mixes future tokens into every slot.
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length (= T), D head dim,
P projected length, M max_len.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, key_padding
from ptmkit.nn.kernels.recompute import dropout_keep, summary_attention, wide


@dataclass
class LinformerOptions:
    proj_len: int = 256  # P: projected keys/values per head (the paper's k; 128-256 for sequences of 512-4096)
    max_len: int = 2048  # M: the longest sequence the projections accept (columns of E and F)
    # "key-value" (E = F, one P x max_len matrix per layer; the paper's §4 proposes it to save parameters and
    # evaluates it beside separate E and F): the projections and their gradients grow with max_len, and at 4,096
    # tokens and more two of them (headwise) made the kernel need more memory than fused dense attention (measured,
    # docs/architectures/efficient_attention.md)
    sharing: Literal["headwise", "key-value", "none"] = "key-value"
    # "pooling": row i of E, F averages segment i of M / P positions (Wang et al. §4 list pooling as a projection),
    # so an untrained kernel is already a coarse approximation and P = S = M gives exact dense attention;
    # "gaussian": N(0, 1/P) entries, the random projection of the paper's Theorem 2.
    init: Literal["pooling", "gaussian"] = "pooling"

    def __post_init__(self) -> None:
        if self.proj_len < 1 or self.max_len < 1:
            raise ConfigError(f"attention kernel 'linformer': proj_len and max_len must be >= 1, got "
                              f"proj_len={self.proj_len}, max_len={self.max_len}")
        if self.proj_len > self.max_len:
            raise ConfigError(
                f"attention kernel 'linformer': proj_len {self.proj_len} is longer than max_len {self.max_len}; a "
                "projection to more slots than positions saves nothing: choose proj_len <= max_len (the paper uses "
                "proj_len 128-256)"
            )


class Linformer(AttentionKernel):
    """Low-rank attention with learned sequence projections E (keys) and F (values); encoders only."""

    Options = LinformerOptions
    kind = "approximate"
    causal = False
    name = "linformer"

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.options
        heads = (self.num_kv_heads,) if o.sharing == "none" else ()
        self.proj_k = nn.Parameter(self._init((*heads, o.proj_len, o.max_len)))  # E: (K?, P, M)
        # key-value sharing: F is E (one parameter, so its gradient gets both uses)
        self.proj_v = None if o.sharing == "key-value" else nn.Parameter(self._init((*heads, o.proj_len, o.max_len)))

    def _init(self, shape: tuple[int, ...]) -> torch.Tensor:
        p, m = shape[-2:]
        if self.options.init == "gaussian":
            return torch.randn(shape) / p ** 0.5
        seg = torch.arange(m) * p // m  # (M,) the slot each position is pooled into
        pool = (seg[None, :] == torch.arange(p)[:, None]).float()  # (P, M) one-hot rows of segments
        pool = pool / pool.sum(dim=1, keepdim=True)  # mean over each segment
        return pool.expand(shape).clone()

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, S) or None
        s, o = k.shape[2], self.options
        if s > o.max_len:
            raise ConfigError(f"attention kernel 'linformer': sequence of {s} tokens is longer than max_len "
                              f"{o.max_len}; raise attention_options.max_len (the projections have max_len columns)")
        if o.proj_len > s:
            raise ConfigError(
                f"attention kernel 'linformer': proj_len {o.proj_len} is longer than the sequence ({s} tokens), so the "
                f"projection would not compress it; use sequences of at least proj_len tokens, a smaller proj_len, "
                "or attention_kernel sdpa for short inputs"
            )
        e = self.proj_k[..., :s]  # (K?, P, S) the first S columns
        slots = None
        reach = e.abs().sum(dim=-1) > 0  # (K?, P) slots some position reaches
        if keep is not None:
            eq_r = "ps,bs->bp" if e.dim() == 2 else "kps,bs->bkp"
            reach = torch.einsum(eq_r, e.detach().abs().float(), keep.float()) > 0  # (B, K?, P) slots real keys reach
            reach = reach | ~reach.any(dim=-1, keepdim=True)  # a sequence of padding only: keep rows finite
        if not bool(reach.all()):
            slots = reach.view(reach.shape[0] if keep is not None else 1, -1, 1, o.proj_len)  # (B|1, 1|K, 1, P)
        seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0  # dropout masks are regenerated in backward
        spec = LinformerSpec(slots, scale if scale is not None else q.shape[-1] ** -0.5, dropout_p, seed)
        # the whole parameters go in (sliced per key chunk inside): their gradient is assembled without a copy
        params = (self.proj_k,) if self.proj_v is None else (self.proj_k, self.proj_v)
        # width 4 P: a query chunk's backward holds the scores, the probabilities and their gradients (c x P each)
        return summary_attention(spec, q, k, v, keep, 4 * o.proj_len, params)  # (B, H, T, D)


class LinformerSpec:
    """Linformer as a summary kernel (ptmkit.nn.kernels.recompute): the summary is (E K, F V) per key/value head,
    accumulated over key chunks; each query chunk attends its P slots with a float32 softmax."""

    def __init__(self, slots: torch.Tensor | None, scale: float, dropout_p: float, seed: int):
        self.slots, self.scale, self.dropout_p, self.seed = slots, scale, dropout_p, seed

    def key_part(self, k, v, keep, params):
        e = params[0]  # (K?, P, c): this chunk's columns of E
        f = params[-1]  # F (E itself under key-value sharing)
        if keep is not None:
            k = k * keep[:, None, :, None]  # (B, K, c, D) padded keys/values zeroed before projecting
            v = v * keep[:, None, :, None]
        eq = "ps,bksd->bkpd" if e.dim() == 2 else "kps,bksd->bkpd"
        k, v = wide(k), wide(v)
        return torch.einsum(eq, e.to(k.dtype), k), torch.einsum(eq, f.to(v.dtype), v)  # (B, K, P, D) x2

    def query_part(self, q, lo, summary):
        kp, vp = summary  # (B, K, P, D)
        b, h, c, d = q.shape
        kh = kp.shape[1]
        qg = wide(q).view(b, kh, h // kh, c, d)  # (B, K, g, c, D): query head h reads kv head h // g
        scores = (qg @ kp.unsqueeze(2).transpose(-2, -1)) * self.scale  # (B, K, g, c, P)
        if self.slots is not None:
            scores = scores.masked_fill(~self.slots.unsqueeze(2), float("-inf"))  # (B|1, 1|K, 1, 1, P)
        probs = scores.softmax(dim=-1)
        if self.dropout_p > 0:  # the same mask in the backward recomputation: a generator seeded per chunk
            probs = probs * dropout_keep(probs.shape, self.dropout_p, self.seed + lo, q.device)
        return (probs @ vp.unsqueeze(2)).view(b, h, c, d)  # (B, H, c, D)
