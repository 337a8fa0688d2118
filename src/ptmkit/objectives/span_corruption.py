"""T5 span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", §3.1.4 and §3.3.4). Survey (Han et al. 2021) §3-§4: encoder-decoder denoising objectives.

Each row's real tokens are split exactly as T5's `random_spans_noise_mask` does: n tokens give
num_noise = min(max(round(n * noise_density), 1), n - 1) noise tokens in num_spans = max(round(num_noise /
mean_noise_span_length), 1) spans; the noise and the non-noise tokens are each cut into num_spans non-empty segments
uniformly at random and interleaved (non-noise first, so a row ends with noise, as in T5). Every span becomes one
sentinel in the encoder input, the i-th span of a row getting <extra_id_i> (T5's sentinels count down from the top
of its vocabulary; here they are read from the tokenizer by name). The decoder target is <extra_id_0> span_0
<extra_id_1> span_1 ... EOS, and the encoder input ends with EOS too.

Rows are padded to fixed lengths computed from the config and the input length (`output_lengths`), so a batch of
seq_len rows always gives the same shapes; padded input rows (attention_mask) are corrupted over their real tokens
only. Packed rows are treated as one stream of text, as T5 concatenates documents before splitting.

Dimension legend: B batch, T input length, K spans per row, S encoder length, L target length.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.seq2seq import compact, emit, random_segmentation, real_tokens, seq2seq_loss

SENTINEL = "<extra_id_{}>"


@dataclass
class SpanCorruptionConfig:
    noise_density: float = 0.15  # fraction of the tokens that are noise (T5 §3.3.4)
    mean_noise_span_length: float = 3.0  # mean span length, in tokens
    sentinel_ids: list[int] = field(default_factory=list)  # <extra_id_0>, <extra_id_1>, ...; filled from the tokenizer
    eos_token_id: int = -1  # appended to inputs and targets; filled from the tokenizer
    pad_token_id: int = -1  # pads the encoder inputs; filled from the tokenizer

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"span_corruption: noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ConfigError(f"span_corruption: mean_noise_span_length must be >= 1 token, got "
                              f"{self.mean_noise_span_length}")
        if len(set(self.sentinel_ids)) != len(self.sentinel_ids):
            raise ConfigError("span_corruption: sentinel_ids must be distinct")

    def check_ready(self) -> None:
        if not self.sentinel_ids:
            raise ConfigError("span_corruption: no sentinel tokens: the tokenizer needs <extra_id_0>, <extra_id_1>, "
                              "... (train it with them as special tokens) or set sentinel_ids")
        if self.eos_token_id < 0 or self.pad_token_id < 0:
            raise ConfigError("span_corruption: eos_token_id and pad_token_id must be set (the tokenizer needs "
                              "eos/sep and pad tokens)")


def noise_counts(length: torch.Tensor, noise_density: float, mean_noise_span_length: float):
    """T5's token and span counts for rows of `length` tokens: (num_noise, num_spans), both long (B,).
    torch.round rounds half to even, as np.round does in T5's code. Rows of < 2 tokens get no noise."""
    n = length.double()
    noise = torch.minimum(torch.round(n * noise_density).clamp(min=1), n - 1).clamp(min=0)
    spans = torch.round(noise / mean_noise_span_length).clamp(min=1)
    spans = torch.minimum(spans, n - noise)  # each span follows a non-empty non-noise segment
    spans = torch.where(noise > 0, spans, torch.zeros_like(spans))
    return noise.long(), spans.long()


@functools.lru_cache(maxsize=64)
def output_lengths(seq_len: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int, int]:
    """(encoder length, target length, sentinels needed) for rows of at most seq_len tokens: the maxima over
    every row length n <= seq_len of n - noise + spans + 1 (EOS), noise + spans + 1, and spans."""
    n = torch.arange(seq_len + 1)
    noise, spans = noise_counts(n, noise_density, mean_noise_span_length)
    return int((n - noise + spans + 1).max()), int((noise + spans + 1).max()), int(spans.max())


def random_spans_noise_mask(length: torch.Tensor, max_len: int, noise_density: float, mean_noise_span_length: float,
                            generator: torch.Generator) -> torch.Tensor:
    """(B, max_len) bool, True on noise: T5's `random_spans_noise_mask` for a batch of row lengths (B,)."""
    B = length.shape[0]
    noise, spans = noise_counts(length, noise_density, mean_noise_span_length)
    K = max(int(spans.max()) if B else 0, 1)
    noise_len = random_segmentation(noise, spans, max_len, K, generator)  # (B, K)
    keep_len = random_segmentation(length - noise, spans, max_len, K, generator)  # (B, K)
    interleaved = torch.stack([keep_len, noise_len], 2).reshape(B, 2 * K)  # non-noise first, as in T5
    starts = torch.cumsum(interleaved, 1)[:, :-1]  # (B, 2K-1) where each segment after the first begins
    indicator = torch.zeros(B, max_len + 1, dtype=torch.long).scatter_(1, starts.clamp(max=max_len), 1)
    span_num = torch.cumsum(indicator[:, :max_len], 1)  # (B, max_len) segment index of each position
    return (span_num % 2 == 1) & (torch.arange(max_len) < length[:, None])


class SpanCorruption:
    task = "seq2seq-lm"

    def __init__(self, cfg: SpanCorruptionConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._sentinels = torch.tensor(cfg.sentinel_ids, dtype=torch.long)

    @classmethod
    def from_tokenizer(cls, cfg: SpanCorruptionConfig, tokenizer) -> SpanCorruption:
        if not cfg.sentinel_ids:
            ids = []
            while (i := tokenizer.token_to_id(SENTINEL.format(len(ids)))) is not None:
                ids.append(i)
            if not ids:
                _, _, need = output_lengths(512, cfg.noise_density, cfg.mean_noise_span_length)
                raise ConfigError(
                    "span_corruption: the tokenizer has no sentinel tokens <extra_id_0>, <extra_id_1>, ...; train it "
                    "with them as extra special tokens: one per noise span, e.g. "
                    f"{need} for 512-token rows at noise_density {cfg.noise_density}")
            cfg = dataclasses.replace(cfg, sentinel_ids=ids)
        eos = cfg.eos_token_id if cfg.eos_token_id >= 0 else tokenizer.eos_id
        pad = cfg.pad_token_id if cfg.pad_token_id >= 0 else tokenizer.pad_id
        if eos is None or pad is None:
            raise ConfigError("span_corruption: the tokenizer needs an eos (or sep) token and a pad token")
        return cls(dataclasses.replace(cfg, eos_token_id=eos, pad_token_id=pad))

    def lengths(self, seq_len: int) -> tuple[int, int, int]:
        """(encoder length, target length, sentinels needed) for rows of seq_len tokens."""
        return output_lengths(seq_len, self.cfg.noise_density, self.cfg.mean_noise_span_length)

    def check_seq_len(self, seq_len: int) -> None:
        _, _, need = self.lengths(seq_len)
        if need > len(self.cfg.sentinel_ids):
            raise ConfigError(
                f"span_corruption: rows of {seq_len} tokens can have {need} noise spans, but only "
                f"{len(self.cfg.sentinel_ids)} sentinel tokens are available; add <extra_id_0> ... "
                f"<extra_id_{need - 1}> to the tokenizer ({need} sentinels) or shorten the sequences")

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        T = batch["input_ids"].shape[1]
        self.check_seq_len(T)
        S, L, _ = self.lengths(T)
        ids, valid = compact(batch["input_ids"], real_tokens(batch), c.pad_token_id)  # (B, T) real tokens first
        n = valid.sum(1)  # (B,)
        noise = random_spans_noise_mask(n, T, c.noise_density, c.mean_noise_span_length, generator)  # (B, T)
        prev = torch.cat([torch.zeros_like(noise[:, :1]), noise[:, :-1]], 1)
        span_start = noise & ~prev  # (B, T) first token of each span
        span_idx = (torch.cumsum(span_start.long(), 1) - 1).clamp(min=0)  # (B, T) which span of the row
        sentinel = self._sentinels[span_idx.clamp(max=len(self._sentinels) - 1)]  # (B, T)
        zero = torch.zeros_like(ids)
        # encoder: non-noise tokens, one sentinel per span
        enc, enc_valid = emit(torch.where(span_start, sentinel, ids), valid & (~noise | span_start), zero, zero,
                              c.pad_token_id, c.pad_token_id, S - 1)
        # decoder targets: each span's sentinel, then its tokens
        tgt, tgt_valid = emit(ids, noise, span_start.long(), sentinel, c.pad_token_id, c.pad_token_id, L - 1)
        enc, enc_valid = _append(enc, enc_valid, c.eos_token_id, c.pad_token_id)
        tgt, tgt_valid = _append(tgt, tgt_valid, c.eos_token_id, c.pad_token_id)
        return {"input_ids": enc, "attention_mask": enc_valid.long(), "labels": tgt.masked_fill(~tgt_valid, -100)}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return seq2seq_loss(model, batch)


def _append(ids: torch.Tensor, valid: torch.Tensor, token: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `token` after each row's last valid position, growing the rows by one column."""
    B, L = ids.shape
    ids = torch.cat([ids, torch.full((B, 1), pad, dtype=ids.dtype)], 1)
    valid = torch.cat([valid, torch.zeros(B, 1, dtype=torch.bool)], 1)
    at = valid.sum(1, keepdim=True)  # (B, 1)
    return ids.scatter(1, at, token), valid.scatter(1, at, True)


def reconstruct(inputs: list[int], targets: list[int], sentinel_ids: list[int], eos: int) -> list[int]:
    """Undo span corruption for one row (for tests and inspection): each sentinel of the inputs is replaced by the
    target tokens that follow the same sentinel; trailing EOS tokens are dropped."""
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t == eos:
            break
        if t in sentinels:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs:
        if t == eos:
            break
        out.extend(spans.get(t, []) if t in sentinels else [t])
    return out
