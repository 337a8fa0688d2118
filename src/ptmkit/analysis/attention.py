"""Attention analysis (survey §7.1, "attention analysis"): attention probabilities recorded from any family whose
blocks use ptmkit's self-attention, and the head statistics of Clark et al. 2019 ("What Does BERT Look At?" §3):
entropy, mean distance, and the attention each head pays to [CLS], [SEP], punctuation, the token itself and its
neighbours.

Recording attaches hooks only inside `with record_attention(model) as att:`; outside, the model runs its usual code
path (SDPA, which never materialises the probabilities). Inside, each layer's kernel inputs are kept and the
probabilities are computed from them on demand, softmax over exactly the logits the kernel used (position biases and
masks included), so a row sums to 1 over the keys its query may see.

Dimension legend: B batch, L layers, H heads, T queries, S keys.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.record import Recording, record, self_attentions
from ptmkit.models.registry import backbone_of

DENSE_KERNELS = ("sdpa", "eager")


class record_attention:
    """`with record_attention(model) as att: model(...)`; then att.probs(layer) (B, H, T, S) and att.layers. An
    encoder-decoder's self-attention layers come encoder first, then decoder (cross-attention is not recorded)."""

    def __init__(self, model: nn.Module):
        if not self_attentions(model):
            raise ConfigError(f"attention recording: {backbone_of(model).family} has no stack of ptmkit self-attention "
                              "blocks (XLNet and Transformer-XL use their own relative attention); record an encoder, "
                              "a decoder or an encoder-decoder (BERT, GPT-2, LLaMA, T5, BART, ...)")
        kernel = getattr(backbone_of(model).config, "attention_kernel", "sdpa")
        if kernel not in DENSE_KERNELS:
            raise ConfigError(f"attention recording: the {kernel!r} kernel does not attend with q k^T probabilities "
                              f"(it approximates or restricts them); record the model with a dense kernel "
                              f"({', '.join(DENSE_KERNELS)})")
        self._ctx = record(model, attention=True)
        self.recording: Recording | None = None

    def __enter__(self) -> "record_attention":
        self.recording = self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def layers(self) -> int:
        return len(self.recording.kernels)

    def probs(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s attention probabilities of the last forward pass: (B, H, T, S)."""
        kernels = self.recording.kernels if self.recording is not None else []
        if not kernels:
            raise ConfigError("attention recording: nothing recorded; run the model inside the `with` block")
        if not -len(kernels) <= layer < len(kernels):
            raise ConfigError(f"attention recording: layer {layer} is out of range (the model has {len(kernels)})")
        return kernels[layer].probs()

    def all_probs(self) -> torch.Tensor:
        """Every layer's probabilities stacked: (L, B, H, T, S)."""
        return torch.stack([self.probs(i) for i in range(self.layers)])


@dataclass
class TokenClasses:
    """Which token ids are [CLS] (the sequence start), [SEP] (the separators / end) and punctuation."""

    cls: set[int]
    sep: set[int]
    punct: set[int]

    @classmethod
    def from_tokenizer(cls, tok) -> "TokenClasses":
        punct = set()
        for t in string.punctuation:
            i = tok.token_to_id(t)
            if i is not None:
                punct.add(i)
            j = tok.token_to_id("Ġ" + t)  # byte-level BPE's "space + punctuation" tokens
            if j is not None:
                punct.add(j)
        return cls({i for i in (tok.cls_id,) if i is not None}, {i for i in (tok.sep_id,) if i is not None}, punct)


def _member(ids: torch.Tensor, which: Iterable[int]) -> torch.Tensor:
    which = torch.tensor(sorted(which), dtype=ids.dtype, device=ids.device)
    return torch.isin(ids, which) if which.numel() else torch.zeros_like(ids, dtype=torch.bool)


@torch.no_grad()
def head_statistics(probs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
                    classes: TokenClasses) -> dict[str, torch.Tensor]:
    """Clark et al. 2019 §3 per head of one layer, averaged over the real query tokens of the batch: each (H,).
    probs (B, H, T, T) of self-attention; ids (B, T); mask (B, T) 1 = token (None = all)."""
    b, h, t, s = probs.shape
    if t != s:
        raise ConfigError("head statistics need self-attention over the same tokens (T = S), e.g. no KV cache")
    real = torch.ones(b, t, dtype=torch.bool, device=probs.device) if mask is None else mask.bool()
    weight = real[:, None, :].float()  # (B, 1, T) queries counted
    n = weight.sum() or torch.tensor(1.0)

    def mean_over_queries(x):  # x (B, H, T) -> (H,)
        return (x * weight).sum((0, 2)) / n

    p = probs.float()
    pos = torch.arange(t, device=p.device)
    dist = (pos[None, :] - pos[:, None]).abs().float()  # (T, S)
    to = {name: _member(ids, which)[:, None, None, :].float() for name, which in
          (("cls", classes.cls), ("sep", classes.sep), ("punct", classes.punct))}  # (B, 1, 1, S)
    stats = {
        "entropy": mean_over_queries(-(p * p.clamp_min(1e-12).log()).sum(-1)),  # nats
        "mean_distance": mean_over_queries((p * dist).sum(-1)),
        "self": mean_over_queries(p.diagonal(dim1=-2, dim2=-1)),
        "previous": mean_over_queries(torch.nn.functional.pad(p.diagonal(offset=-1, dim1=-2, dim2=-1), (1, 0))),
        "next": mean_over_queries(torch.nn.functional.pad(p.diagonal(offset=1, dim1=-2, dim2=-1), (0, 1))),
    }
    stats.update({f"to_{name}": mean_over_queries((p * m).sum(-1)) for name, m in to.items()})
    return stats
