"""A stand-in encoder-decoder for hand-computed seq2seq losses: fixed logits, records what it was fed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch


class StubSeq2Seq:
    def __init__(self, vocab: int, decoder_start_token_id: int = 7, pad_token_id: int = 0, seed: int = 0):
        self.config = SimpleNamespace(decoder_start_token_id=decoder_start_token_id, pad_token_id=pad_token_id)
        self.vocab, self.seed, self.calls = vocab, seed, []

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        self.calls.append(dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids))
        b, t = decoder_input_ids.shape
        g = torch.Generator().manual_seed(self.seed)
        return SimpleNamespace(logits=torch.randn(b, t, self.vocab, generator=g))  # (B, T, V)


def hand_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over scored positions of -log softmax(logits)[label], with plain Python floats."""
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = [float(x) for x in logits[b, t]]
            m = max(row)
            total += m + math.log(sum(math.exp(x - m) for x in row)) - row[y]
            n += 1
    return total / n
