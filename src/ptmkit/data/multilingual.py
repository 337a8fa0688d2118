"""Aligned multilingual text (Multi30k en/de/fr) for cross-lingual pre-training (XLM, Conneau & Lample 2019):
readers that yield sentences / translation pairs with language ids, and a small tokenised corpus that builds
MMLM rows (one sentence, one language) and TLM rows ([src ; tgt], positions reset at the target, XLM §3.3)
with vectorised collation.

Dimension legend: B batch, T padded row length, N sentences per language, L languages.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ptmkit.data import textio
from ptmkit.data.paths import data_root

MULTI30K_LANGS = ("en", "de", "fr")


def multi30k_dir(root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else data_root() / "parallel" / "multi30k"


def read_aligned(split: str, langs: Sequence[str] = MULTI30K_LANGS, root: str | Path | None = None,
                 limit: int | None = None) -> dict[str, list[str]]:
    """{lang: lines} for `<root>/<split>.<lang>.gz`; line i of every language is one aligned sentence.

    Errors name the missing file and the line-count mismatch (Multi30k's test_2016_flickr has en/de only).
    A line that is empty in any language drops that aligned row from every language; the count is reported.
    """
    d = multi30k_dir(root)
    out: dict[str, list[str]] = {}
    for lang in langs:
        path = d / f"{split}.{lang}.gz"
        if not path.exists():
            have = sorted(p.name for p in d.glob(f"{split}.*.gz"))
            raise FileNotFoundError(f"{path} does not exist; split {split!r} has {have}")
        out[lang] = [line.rstrip("\r\n") for line in textio.lines(path)]  # bad UTF-8 / gzip: error at file:line
    counts = {d / f"{split}.{lang}.gz": len(v) for lang, v in out.items()}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{p} has {n}" for p, n in counts.items())
        raise ValueError(f"split {split!r}: languages are not aligned: {listed} lines; line i of every language "
                         "must be the same sentence, so fix or re-download the shorter file(s)")
    keep = [i for i in range(len(out[langs[0]])) if all(out[l][i].strip() for l in langs)]
    dropped = len(out[langs[0]]) - len(keep)
    if dropped:
        warnings.warn(f"{d}: split {split!r}: dropped {dropped} aligned rows with an empty line in some language",
                      stacklevel=2)
        out = {l: [v[i] for i in keep] for l, v in out.items()}
    if limit is not None:
        out = {l: v[:limit] for l, v in out.items()}
    return out


def sentences_with_language(aligned: dict[str, list[str]]) -> Iterator[tuple[int, str]]:
    """(language id, sentence) for every sentence of every language; ids follow the dict's order."""
    for lang_id, lines in enumerate(aligned.values()):
        for s in lines:
            yield lang_id, s


def pairs_with_languages(aligned: dict[str, list[str]]) -> Iterator[tuple[int, int, str, str]]:
    """(src language id, tgt language id, src, tgt) for every aligned row and ordered language pair."""
    langs = list(aligned.values())
    for i in range(len(langs[0])):
        for a in range(len(langs)):
            for b in range(len(langs)):
                if a != b:
                    yield a, b, langs[a][i], langs[b][i]


def gather_rows(flat: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, t: int, offset: torch.Tensor,
                pad_id: int) -> torch.Tensor:
    """(B, t) tokens: row b holds flat[starts[b] : starts[b] + lengths[b]] beginning at column offset[b], pad
    elsewhere. One gather, no per-token Python."""
    j = torch.arange(t)[None] - offset[:, None]  # (B, t): index inside the sentence
    inside = (j >= 0) & (j < lengths[:, None])
    idx = (starts[:, None] + j).clamp(0, flat.numel() - 1)
    return torch.where(inside, flat[idx], torch.full_like(idx, pad_id))


def concat_pairs(flat: torch.Tensor, src: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 tgt: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows [src ; tgt] (or [src] alone when tgt is None) from sentences stored in `flat`.

    src / tgt: (starts (B,), lengths (B,), language ids (B,)). XLM §3.3 (TLM): positions restart at 0 at the
    start of the target sentence and every token carries its sentence's language id, so the model can attend
    to the translation to predict a masked word. Padding has position 0 and language 0 (never attended).
    """
    s_start, s_len, s_lang = src
    if tgt is None:
        t_start, t_len, t_lang = torch.zeros_like(s_start), torch.zeros_like(s_len), torch.zeros_like(s_lang)
    else:
        t_start, t_len, t_lang = tgt
    total = s_len + t_len  # (B,)
    t = int(total.max())
    j = torch.arange(t)[None]  # (1, T)
    in_src = j < s_len[:, None]  # (B, T)
    in_tgt = (j >= s_len[:, None]) & (j < total[:, None])
    a = gather_rows(flat, s_start, s_len, t, torch.zeros_like(s_len), pad_id)
    b = gather_rows(flat, t_start, t_len, t, s_len, pad_id)
    ids = torch.where(in_src, a, b)
    positions = torch.where(in_src, j, torch.where(in_tgt, j - s_len[:, None], torch.zeros_like(j)))
    lang = torch.where(in_src, s_lang[:, None], torch.where(in_tgt, t_lang[:, None], torch.zeros_like(j)))
    return {"input_ids": ids, "attention_mask": (in_src | in_tgt).long(), "position_ids": positions,
            "lang_ids": lang}


class ParallelCorpus:
    """Aligned sentences of L languages, tokenised once into one flat id tensor (each sentence stored as
    [CLS] tokens [SEP], truncated to `max_len`), with batch builders for MMLM and TLM.

    Languages are sampled uniformly: XLM samples language l with q_l ∝ p_l^0.7 (§3.1), which is uniform when the
    corpora have equal size, as aligned corpora do.
    """

    def __init__(self, aligned: dict[str, list[str]], tokenizer, max_len: int = 64):
        if tokenizer.cls_id is None or tokenizer.sep_id is None or tokenizer.pad_id is None:
            raise ValueError("ParallelCorpus needs a tokenizer with [CLS]/[SEP]/[PAD] (or bos/eos/pad) tokens")
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        self.langs = list(aligned)
        self.pad_id = tokenizer.pad_id
        self.max_len = max_len
        self.n = len(next(iter(aligned.values())))
        pieces, lengths = [], []
        cls, sep = tokenizer.cls_id, tokenizer.sep_id
        for lines in aligned.values():
            for ids in tokenizer.encode_batch(lines, add_special_tokens=False):
                row = [cls, *ids[: max_len - 2], sep]
                pieces.append(torch.tensor(row, dtype=torch.long))
                lengths.append(len(row))
        self.flat = torch.cat(pieces)  # all tokens, language-major: sentence k of language l is row l * n + k
        self.lengths = torch.tensor(lengths, dtype=torch.long)  # (L * N,)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths  # (L * N,)

    @property
    def num_languages(self) -> int:
        return len(self.langs)

    def _sent(self, lang: torch.Tensor, idx: torch.Tensor):
        row = lang * self.n + idx
        return self.starts[row], self.lengths[row], lang

    def sentences(self, lang: int | torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """MMLM rows: sentence idx[b] of language lang (an int or (B,) ids), alone, with its language id."""
        lang = torch.as_tensor(lang, dtype=torch.long).expand_as(idx)
        return concat_pairs(self.flat, self._sent(lang, idx), None, self.pad_id)

    def pairs(self, src_lang: torch.Tensor, tgt_lang: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """TLM rows: [sentence idx in src_lang ; its translation in tgt_lang]."""
        return concat_pairs(self.flat, self._sent(src_lang, idx), self._sent(tgt_lang, idx), self.pad_id)

    def mmlm_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lang = torch.randint(0, self.num_languages, (batch_size,), generator=generator)
        idx = torch.randint(0, self.n, (batch_size,), generator=generator)
        return self.sentences(lang, idx)

    def tlm_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.num_languages < 2:
            raise ValueError("TLM needs at least two languages")
        src = torch.randint(0, self.num_languages, (batch_size,), generator=generator)
        shift = torch.randint(1, self.num_languages, (batch_size,), generator=generator)
        tgt = (src + shift) % self.num_languages  # a different language, uniformly
        idx = torch.randint(0, self.n, (batch_size,), generator=generator)
        return self.pairs(src, tgt, idx)
