"""Task tokenisation for fine-tuning: texts, text pairs or pre-split words to token ids, labels aligned
to sub-words, length-bucketed batches and padded tensors.

Dimension legend: N examples, B batch, T padded length, W words of a sentence.
"""

# Encoding runs in the `tokenizers` Rust backend over the whole split at once (batch encoding with
# pairs, or `is_pretokenized=True` for words); Python touches examples, never single tokens. Token
# classification follows BERT §5.3 (Devlin et al. 2019): only the first sub-token of a word carries
# its tag; the other sub-tokens and the specials get -100 (ignored by the loss) and predictions are
# read back at the first sub-tokens. Length bucketing (sort by length inside large random chunks, as
# in fairseq / tensor2tensor) keeps padding small without giving up a random batch order.

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tokenizers
import torch

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer

IGNORE_INDEX = -100  # positions the loss skips (torch's cross_entropy default)
OVERLONG = ("truncate", "error")


@dataclass
class Encoded:
    """One split, tokenised. Per-example arrays are ragged (no padding) until `collate`."""

    input_ids: list[np.ndarray]  # N × (T_i,) uint16 or int32, by chunk (collate widens to int64)
    type_ids: list[np.ndarray]  # N × (T_i,) int8 segment ids (0 = text_a, 1 = text_b)
    lengths: np.ndarray  # (N,) tokens per example, specials included
    labels: np.ndarray | list[np.ndarray] | None  # (N,) class ids / scores, or N × (T_i,) tags
    word_index: list[np.ndarray] | None = None  # token tasks: N × (K_i,) words that kept a token
    word_pos: list[np.ndarray] | None = None  # token tasks: N × (K_i,) position of their 1st piece
    num_words: np.ndarray | None = None  # token tasks: (N,) words of each sentence
    truncated: int = 0  # examples cut to max_length

    def __len__(self) -> int:
        return len(self.input_ids)


def prepare_backend(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """A copy of the tokenizer's backend with padding and truncation off (we pad per batch and
    truncate deliberately). A saved tokenizer.json may fix both, e.g. sentence-transformers' 128."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def _check_length(max_length: int, overlong: str) -> None:
    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 (room for the special tokens), got {max_length}")
    if overlong not in OVERLONG:
        raise ConfigError(f"overlong must be one of {list(OVERLONG)}, got {overlong!r}")


# Memory: a `tokenizers` Encoding keeps ~250 bytes per token (token strings, offsets, masks, word ids), so one
# encode_batch over a whole split held ~4.5 GB for SST-2's 67k rows at 256 tokens, and the freed memory mostly
# stays in the process (glibc keeps it), under the whole training run: fine-tuning peaked at 2x transformers'
# Trainer (benchmarks/finetune_memory.py). So a split is encoded ENCODE_CHUNK examples at a time and each chunk is
# reduced to compact arrays (ids as uint16 where the chunk's ids fit, else int32; segment ids as int8: 3 bytes a
# token where datasets' Arrow tables keep 8) before the next one is encoded; the batch call still runs in parallel
# inside a chunk, so the speed is unchanged.
ENCODE_CHUNK = 1024


def _encode_checked(backend, inputs: list, max_length: int, overlong: str, source: str,
                    pretokenized: bool, fast: bool, keep: Callable[[list], None]) -> int:
    """Encode ENCODE_CHUNK examples at a time, untruncated; then refuse or re-encode (truncated) the overlong
    examples; hand each chunk's encodings, in order, to `keep`. Returns how many examples were truncated."""
    enc_fn = backend.encode_batch_fast if fast and hasattr(backend, "encode_batch_fast") else backend.encode_batch
    lengths = np.zeros(len(inputs), dtype=np.int64)  # (N,) untruncated, for the messages
    truncated = 0
    for start in range(0, len(inputs), ENCODE_CHUNK):
        part = inputs[start:start + ENCODE_CHUNK]
        enc = enc_fn(part, is_pretokenized=pretokenized)
        lengths[start:start + len(enc)] = [len(e) for e in enc]
        over = np.flatnonzero(lengths[start:start + len(enc)] > max_length)
        if len(over) and overlong == "error":
            for rest in range(start + ENCODE_CHUNK, len(inputs), ENCODE_CHUNK):  # the message counts the split
                lengths[rest:rest + ENCODE_CHUNK] = [len(e) for e in enc_fn(inputs[rest:rest + ENCODE_CHUNK],
                                                                             is_pretokenized=pretokenized)]
            i, n_over = start + int(over[0]), int((lengths > max_length).sum())
            raise ValueError(
                f"{source}: example {i} is {lengths[i]} tokens long, over max_length={max_length} "
                f"({n_over} of {len(inputs)} examples are; the longest has {lengths.max()} tokens). "
                "Raise max_length or pass overlong='truncate' (--overlong truncate)"
            )
        if len(over):
            # Only the overlong examples are encoded again, with the backend's own truncation:
            # longest-first for pairs (trims the longer text first), trailing words for pre-split words.
            backend.enable_truncation(max_length, strategy="longest_first")
            try:
                redo = enc_fn([part[i] for i in over], is_pretokenized=pretokenized)
            finally:
                backend.no_truncation()
            for i, e in zip(over.tolist(), redo, strict=True):
                enc[i] = e
            truncated += len(over)
        keep(enc)
        del enc, part
    if truncated:
        warnings.warn(
            f"{source}: truncated {truncated} of {len(inputs)} examples longer than max_length={max_length} "
            f"tokens (the longest has {lengths.max()})",
            stacklevel=3,
        )
    return truncated


def _ids(enc) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token and segment ids of a chunk as compact arrays: ids as uint16 when every id of the chunk fits (vocabularies
    up to 65,536), else int32; segment ids (0/1) as int8. Collate widens them to int64."""
    wide = any(max(e.ids, default=0) > np.iinfo(np.uint16).max for e in enc)
    dtype = np.int32 if wide else np.uint16
    return [np.asarray(e.ids, dtype=dtype) for e in enc], [np.asarray(e.type_ids, dtype=np.int8) for e in enc]


def encode_texts(
    backend: tokenizers.Tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    labels: Sequence[int | float | None] | None,
    max_length: int,
    overlong: str = "truncate",
    source: str = "data",
    regression: bool = False,
) -> Encoded:
    """Texts (or pairs) → ids with the model's specials (``[CLS] A [SEP] B [SEP]`` for BERT).

    ``labels``: class ids (or scores with ``regression=True``); None or any None label = unlabelled.
    """
    _check_length(max_length, overlong)
    inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b, strict=True))
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []

    def keep(enc: list) -> None:
        ids, types = _ids(enc)
        input_ids.extend(ids)
        type_ids.extend(types)

    truncated = _encode_checked(backend, inputs, max_length, overlong, source, False, True, keep)
    y = None
    if labels is not None and len(labels) and all(v is not None for v in labels):
        y = np.asarray(labels, dtype=np.float32 if regression else np.int64)  # (N,)
    return Encoded(
        input_ids=input_ids,
        type_ids=type_ids,
        lengths=np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids)),
        labels=y,
        truncated=truncated,
    )


def encode_words(
    backend: tokenizers.Tokenizer,
    sentences: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int]] | None,
    max_length: int,
    overlong: str = "truncate",
    source: str = "data",
) -> Encoded:
    """Pre-split words → sub-word ids; the first sub-token of each word gets its tag, others -100.

    Words that produce no token (e.g. a lone zero-width space) or fall past a truncation get no
    position: `word_predictions` fills them with tag 0 ("O" in CoNLL tag lists)."""
    _check_length(max_length, overlong)
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []
    word_index, word_pos, labels = [], [], []

    def keep(enc: list) -> None:
        ids, types = _ids(enc)
        for e in enc:
            i = len(word_index)  # the example's index in the split
            w = np.array(e.word_ids, dtype=np.float64)  # (T_i,) word of each token; None -> nan (specials)
            prev = np.concatenate([[np.nan], w[:-1]])
            first = ~np.isnan(w) & (w != prev)  # a token whose word differs from the previous token's
            pos = np.flatnonzero(first)  # (K_i,)
            widx = w[pos].astype(np.int64)
            word_index.append(widx)
            word_pos.append(pos)
            if tags is not None:
                y = np.full(len(w), IGNORE_INDEX, dtype=np.int64)
                y[pos] = np.asarray(tags[i], dtype=np.int64)[widx]
                labels.append(y)
        input_ids.extend(ids)
        type_ids.extend(types)

    # encode_batch (not _fast): word_ids are needed to find each word's first piece
    truncated = _encode_checked(backend, [list(s) for s in sentences], max_length, overlong, source, True, False,
                                keep)
    return Encoded(
        input_ids=input_ids,
        type_ids=type_ids,
        lengths=np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids)),
        labels=labels if tags is not None else None,
        word_index=word_index,
        word_pos=word_pos,
        num_words=np.array([len(s) for s in sentences], dtype=np.int64),
        truncated=truncated,
    )


def word_predictions(enc: Encoded, token_preds: Sequence[np.ndarray], fill: int = 0) -> list[np.ndarray]:
    """Per-token predicted tag ids (N × (≥T_i,)) → one tag id per word, read at each first piece."""
    out = []
    for i, p in enumerate(token_preds):
        words = np.full(int(enc.num_words[i]), fill, dtype=np.int64)  # (W,)
        words[enc.word_index[i]] = np.asarray(p)[enc.word_pos[i]]
        out.append(words)
    return out


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   chunk_batches: int = 50) -> list[np.ndarray]:
    """Random batches of similar length: shuffle, sort by length inside chunks of
    ``chunk_batches`` batches, cut into batches, shuffle the batch order. ``chunk_batches=0`` gives
    plain shuffled batches. Every example appears exactly once."""
    order = rng.permutation(len(lengths))
    if chunk_batches <= 0:
        return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    chunk = batch_size * chunk_batches
    batches: list[np.ndarray] = []
    for s in range(0, len(order), chunk):
        c = order[s:s + chunk]
        c = c[np.argsort(lengths[c], kind="stable")]
        batches.extend(c[j:j + batch_size] for j in range(0, len(c), batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches for evaluation, longest first (peak memory shows up at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


def collate(enc: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) tensors for the examples ``idx``; ``labels`` when the split has them."""
    lengths = enc.lengths[idx]
    b, t = len(idx), int(lengths.max())
    ids = np.full((b, t), pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros((b, t), dtype=np.int64)
    mask = np.arange(t)[None, :] < lengths[:, None]  # (B, T) True on real tokens
    token_labels = isinstance(enc.labels, list)
    tags = np.full((b, t), IGNORE_INDEX, dtype=np.int64) if token_labels else None
    for r, i in enumerate(idx.tolist()):
        n = int(lengths[r])
        ids[r, :n] = enc.input_ids[i]
        types[r, :n] = enc.type_ids[i]
        if token_labels:
            tags[r, :n] = enc.labels[i]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        "token_type_ids": torch.from_numpy(types),
    }
    if token_labels:
        batch["labels"] = torch.from_numpy(tags)
    elif enc.labels is not None:
        batch["labels"] = torch.from_numpy(enc.labels[idx])
    return batch
