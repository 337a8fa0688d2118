"""Shared parts of the encoder-decoder pre-training objectives (T5 span corruption, BART denoising, MASS; survey
§3-§4): the teacher-forced sequence-to-sequence loss, random segmentation, and the vectorised "emit" that rebuilds
variable-length rows (tokens dropped, sentinels/[MASK]s inserted) as a padded batch.

Dimension legend: B batch, T input length, L output length, K segments per row, V vocabulary, N scored tokens.
"""

from __future__ import annotations

import torch

from ptmkit.models.encdec import shift_right
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import mean_cross_entropy


def real_tokens(batch: Batch) -> torch.Tensor:
    """(B, T) bool: positions holding tokens (attention_mask), all when there is no mask."""
    ids = batch["input_ids"]
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return torch.ones_like(ids, dtype=torch.bool)


def compact(ids: torch.Tensor, valid: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid tokens to the front, in order (a stable sort); the rest becomes `pad`."""
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # (B, T)
    ids, valid = ids.gather(1, order), valid.gather(1, order)
    return ids.masked_fill(~valid, pad), valid


def random_segmentation(num_items: torch.Tensor, num_segments: torch.Tensor, max_items: int, max_segments: int,
                        generator: torch.Generator) -> torch.Tensor:
    """T5's `_random_segmentation`, one row per batch entry: split num_items[b] items into num_segments[b] non-empty
    segments, uniformly at random (num_segments - 1 cut points among the num_items - 1 gaps). Returns the segment
    lengths (B, max_segments), zero past num_segments[b]. A row with 0 segments puts its items in segment 0."""
    B, M = num_items.shape[0], max(max_items, 1)
    gap = torch.arange(M - 1).expand(B, M - 1)  # (B, M-1) gap j lies after item j
    keys = torch.rand(B, M - 1, generator=generator)
    keys = torch.where(gap < (num_items[:, None] - 1), keys, torch.full_like(keys, 2.0))  # padding gaps last
    rank = keys.argsort(1).argsort(1)  # (B, M-1) a uniform random order of the real gaps
    cut = rank < (num_segments[:, None] - 1)  # (B, M-1): a uniform subset of num_segments - 1 gaps
    first = torch.cat([torch.zeros(B, 1, dtype=torch.long), cut.long()], 1)  # (B, M) item starts a segment
    seg = torch.cumsum(first, 1).clamp(max=max(max_segments, 1) - 1)  # (B, M)
    item = torch.arange(M).expand(B, M) < num_items[:, None]
    out = torch.zeros(B, max(max_segments, 1), dtype=torch.long).scatter_add_(1, seg, item.long())
    return out[:, :max_segments]


def emit(values: torch.Tensor, keep: torch.Tensor, pre_count: torch.Tensor, pre_value: torch.Tensor, fill: int,
         pad: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebuild rows: each position t emits `pre_count[t]` inserted tokens, then `values[t]` if `keep[t]`.

    The first inserted token of t is `pre_value[t]`, any further ones are `fill` (callers insert several tokens
    only when they are all [MASK]). Returns (ids (B, L), valid (B, L)) padded with `pad`; L = `length` or the
    longest row. Vectorised: an exclusive cumsum gives every position's output offset, two scatters write."""
    B, T = values.shape
    n_out = pre_count + keep.long()  # (B, T) tokens emitted by each position
    end = torch.cumsum(n_out, 1)
    offset = end - n_out  # (B, T) first output slot of each position
    total = end[:, -1] if T else torch.zeros(B, dtype=torch.long)  # (B,)
    L = int(total.max()) if length is None and B else (length or 0)
    if B and int(total.max()) > L:
        raise ValueError(f"emit: a row needs {int(total.max())} positions but the output has {L}")
    out = torch.full((B, L + 1), fill, dtype=values.dtype)  # one spare column takes the writes of empty slots
    spare = torch.full_like(offset, L)
    out.scatter_(1, torch.where(pre_count > 0, offset, spare), pre_value)
    out.scatter_(1, torch.where(keep, offset + pre_count, spare), values)
    out = out[:, :L]
    valid = torch.arange(L).expand(B, L) < total[:, None]
    return out.masked_fill(~valid, pad), valid


def seq2seq_loss(model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher-forced cross-entropy on the decoder targets (labels, -100 = not scored). Decoder inputs are the
    batch's own (MASS builds them) or the labels shifted right behind the model's decoder start token."""
    labels = batch["labels"]  # (B, L)
    dec_in = batch.get("decoder_input_ids")
    if dec_in is None:
        cfg = backbone_of(model).config
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None:
            raise ValueError(f"{type(cfg).__name__} has no decoder_start_token_id (mBART: the language code); "
                             "set it in the model config to pre-train with a seq2seq objective")
        dec_in = shift_right(labels, start, cfg.pad_token_id)
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), decoder_input_ids=dec_in,
                decoder_attention_mask=batch.get("decoder_attention_mask"))
    where = labels != -100  # (B, L)
    target = labels[where]  # (N,)
    loss, acc = mean_cross_entropy(out.logits[where], target)
    return loss, {"loss": loss.item(), "accuracy": acc.item(), "predicted_tokens": float(target.numel())}
