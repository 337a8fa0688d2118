"""The tokenizer families ptmkit trains, one class each: its model, normaliser, pre-tokeniser, decoder, trainer,
special tokens and the post-processor that makes encode() add them. ``TOKENIZER_KINDS`` is the registry.

- ``bpe``: GPT-2/RoBERTa byte-level BPE (Radford et al. 2019; Liu et al. 2019), specials
  ``<s> <pad> </s> <unk> <mask>``, encode() gives ``<s> A </s>`` (pair ``<s> A </s></s> B </s>``).
- ``wordpiece``: BERT WordPiece (Devlin et al. 2019; BertNormalizer + BertPreTokenizer), specials
  ``[PAD] [UNK] [CLS] [SEP] [MASK]``, encode() gives ``[CLS] A [SEP]`` (pair ``[CLS] A [SEP] B [SEP]``).
- ``unigram``: SentencePiece-style Unigram LM (Kudo 2018; Metaspace ``▁``), specials
  ``<pad> <unk> <s> </s> <mask>``, encode() gives ``<s> A </s>`` (pair ``<s> A </s> B </s>``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ptmkit.config import ConfigError


class TokenizerKind:
    """One tokenizer family. ``specials`` maps role -> token in id order (a token may fill several roles:
    RoBERTa's <s> is bos and cls); ``lowercase`` is the family's default casing."""

    name: ClassVar[str]
    specials: ClassVar[dict[str, str]]
    lowercase: ClassVar[bool] = False
    needs_unk: ClassVar[bool] = True  # the model maps unknown pieces to an unk token

    def model(self, roles: Mapping[str, str]) -> models.Model:
        raise NotImplementedError

    def normalizer(self, lowercase: bool) -> normalizers.Normalizer | None:
        return normalizers.Lowercase() if lowercase else None

    def pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        raise NotImplementedError

    def decoder(self) -> decoders.Decoder:
        raise NotImplementedError

    def trainer(self, vocab_size: int, min_frequency: int, specials: list[str], roles: Mapping[str, str],
                show_progress: bool) -> trainers.Trainer:
        raise NotImplementedError

    def train(self, tok: tokenizers.Tokenizer, batches: Iterator[list[str]], vocab_size: int, min_frequency: int,
              specials: list[str], roles: Mapping[str, str], show_progress: bool) -> tokenizers.Tokenizer:
        """Train `tok` (this family's untrained tokenizer, from build) on batches of texts."""
        tok.train_from_iterator(batches, trainer=self.trainer(vocab_size, min_frequency, specials, roles,
                                                              show_progress))
        return tok

    def check(self, vocab_size: int, roles: Mapping[str, str], specials: list[str]) -> None:
        """Refuse settings this family cannot train with."""
        if self.needs_unk and "unk" not in roles:
            raise ConfigError(f"a {self.name} tokenizer needs an unk token; keep the 'unk' role in special_tokens")

    def build(self, roles: Mapping[str, str], lowercase: bool) -> tokenizers.Tokenizer:
        """An untrained tokenizers.Tokenizer of this family."""
        tok = tokenizers.Tokenizer(self.model(roles))
        norm = self.normalizer(lowercase)
        if norm is not None:
            tok.normalizer = norm
        tok.pre_tokenizer = self.pre_tokenizer()
        tok.decoder = self.decoder()
        return tok

    def post_processor(self, roles: Mapping[str, str], backend: tokenizers.Tokenizer) -> Any:
        """What makes encode() add this family's specials: ``cls A sep`` (pair ``cls A sep B sep``); None if the
        roles lack them."""
        cls_tok, sep_tok = _cls_sep(roles)
        if not cls_tok or not sep_tok:
            return None
        cls_id, sep_id = backend.token_to_id(cls_tok), backend.token_to_id(sep_tok)
        ids = [(cls_tok, cls_id), (sep_tok, sep_id)] if cls_tok != sep_tok else [(cls_tok, cls_id)]
        return processors.TemplateProcessing(
            single=f"{cls_tok} $A:0 {sep_tok}:0",
            pair=f"{cls_tok} $A:0 {sep_tok}:0 $B:1 {sep_tok}:1",
            special_tokens=ids,
        )


def _cls_sep(roles: Mapping[str, str]) -> tuple[str | None, str | None]:
    return roles.get("cls") or roles.get("bos"), roles.get("sep") or roles.get("eos")


class BPE(TokenizerKind):
    """GPT-2 / RoBERTa byte-level BPE: every byte is a symbol, so nothing is ever unknown."""

    name = "bpe"
    specials = {"bos": "<s>", "cls": "<s>", "pad": "<pad>", "eos": "</s>", "sep": "</s>", "unk": "<unk>",
                "mask": "<mask>"}
    needs_unk = False

    def model(self, roles):
        return models.BPE()

    def pre_tokenizer(self):
        return pre_tokenizers.ByteLevel(add_prefix_space=False)

    def decoder(self):
        return decoders.ByteLevel()

    def trainer(self, vocab_size, min_frequency, specials, roles, show_progress):
        return trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
        )

    def check(self, vocab_size, roles, specials):
        super().check(vocab_size, roles, specials)
        if vocab_size < 256 + len(specials):
            raise ConfigError(
                f"vocab_size={vocab_size} is too small for byte-level BPE: it needs the 256 byte symbols plus "
                f"{len(specials)} special tokens; use vocab_size >= {256 + len(specials)}"
            )

    def post_processor(self, roles, backend):
        cls_tok, sep_tok = _cls_sep(roles)
        if not cls_tok or not sep_tok:
            return processors.ByteLevel(trim_offsets=False)
        return processors.RobertaProcessing((sep_tok, backend.token_to_id(sep_tok)),
                                            (cls_tok, backend.token_to_id(cls_tok)),
                                            trim_offsets=True, add_prefix_space=False)


class WordPiece(TokenizerKind):
    """BERT WordPiece: BertNormalizer (cleaning, CJK spacing, optional lowercasing) + BertPreTokenizer, ## pieces."""

    name = "wordpiece"
    specials = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    lowercase = True

    def model(self, roles):
        return models.WordPiece(unk_token=roles["unk"], continuing_subword_prefix="##")

    def normalizer(self, lowercase, *, strip_accents: bool | None = None, chinese_chars: bool = True):
        return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                          strip_accents=strip_accents, lowercase=lowercase)

    def pre_tokenizer(self):
        return pre_tokenizers.BertPreTokenizer()

    def decoder(self):
        return decoders.WordPiece(prefix="##")

    def trainer(self, vocab_size, min_frequency, specials, roles, show_progress):
        # BPE merges over words whose first character carries the word-start mark (see train)
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                   show_progress=show_progress)

    def train(self, tok, batches, vocab_size, min_frequency, specials, roles, show_progress):
        """WordPiece's vocabulary is learned by BPE merges, as HF's WordPieceTrainer does, but deterministically.
        That trainer (a BPE trainer with the "##" continuation prefix) creates its "##" pieces in hash-map order,
        which decides ties between equally frequent merges: two trainings on the same text in two processes gave
        different vocabularies (huggingface/tokenizers#1794; measured with 0.23.3: 184 of 2,000 SST-2 dev pieces
        differed), so a pre-training run could not be repeated. The BPE trainer without a prefix is deterministic:
        it learns here over words whose first character carries a word-start mark (▁, as SentencePiece), and the
        pieces are renamed for WordPiece — "▁ab" (word-initial) -> "ab", "ab" (continuation) -> "##ab"."""
        bpe = tokenizers.Tokenizer(models.BPE(unk_token=roles["unk"]))
        # the corpus's own ▁ (text split by SentencePiece) stands in for itself while ▁ marks word starts
        own = normalizers.Replace(WORD_START, STAND_IN)
        bpe.normalizer = own if tok.normalizer is None else normalizers.Sequence([tok.normalizer, own])
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [tok.pre_tokenizer, pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=False)])
        bpe.train_from_iterator(batches, trainer=self.trainer(vocab_size, min_frequency, specials, roles,
                                                              show_progress))
        vocab = wordpiece_vocab(bpe.get_vocab(), specials, vocab_size)
        tok.model = models.WordPiece(vocab=vocab, unk_token=roles["unk"], continuing_subword_prefix="##")
        tok.add_special_tokens(specials)  # matched whole in text, never split (as the trainer's special_tokens are)
        return tok


def unigram_canonical(vocab: list[tuple[str, float]], specials: set[str]) -> list[tuple[str, float]]:
    """A trained Unigram vocabulary in an order (and with scores) that do not depend on the trainer's hash maps: the
    specials first, as trained; then every piece by score, rounded to 8 decimals, ties by text. Two things are
    evened out first. The characters the trainer keeps though they scored too low get the lowest score m plus 1e-4 per
    character, in hash-map order: every single character on that grid (m, m + 1e-4, ..., up to its first empty
    level) is taken in text order and given the same scores in turn (a real character scored exactly on the grid
    joins them: a deterministic swap). And scores within 1e-7 of each other (ties, up to the float noise between
    processes, measured at up to 4e-11) share their group's highest score."""
    head = [v for v in vocab if v[0] in specials]
    rest = [v for v in vocab if v[0] not in specials]
    if not rest:
        return head
    m = min(s for _, s in rest)
    levels: dict[int, list[tuple[str, float]]] = {}
    for piece, score in rest:
        k = round((score - m) / 1e-4)
        if len(piece) == 1 and abs(score - m - k * 1e-4) < 1e-7:
            levels.setdefault(k, []).append((piece, score))
    n = 0
    while n in levels:  # the kept characters fill levels 0, 1, 2, ... without a gap
        n += 1
    grid = [v for k in range(n) for v in levels[k]]
    on_grid = {p for p, _ in grid}
    kept = list(zip(sorted(on_grid), sorted((s for _, s in grid), reverse=True)))
    groups: list[list[tuple[str, float]]] = []
    for piece, score in sorted((v for v in rest if v[0] not in on_grid), key=lambda v: -v[1]):
        if groups and groups[-1][0][1] - score <= 1e-7:
            groups[-1].append((piece, score))
        else:
            groups.append([(piece, score)])
    body = [(p, round(g[0][1], 8)) for g in groups for p, _ in g] + [(p, round(s, 8)) for p, s in kept]
    return head + sorted(body, key=lambda v: (-v[1], v[0]))


WORD_START = "\u2581"
STAND_IN = "\U000f0000"  # a private-use character: the corpus's own ▁ while training


def wordpiece_vocab(bpe_vocab: Mapping[str, int], specials: list[str], vocab_size: int) -> dict[str, int]:
    """WordPiece pieces from a BPE vocabulary learned over word-start-marked words: the specials, then every
    character both word-initial and as a continuation (so any word of seen characters has a segmentation, as in
    BERT's vocabularies), then the merged pieces in the order they were learned, renamed (▁x -> x, x -> ##x);
    vocab_size pieces (the last merges give way to the characters), more only where the specials and the
    characters alone need more."""
    ordered = sorted(bpe_vocab, key=bpe_vocab.__getitem__)
    special = set(specials)
    learned = [t for t in ordered if t not in special and t != WORD_START]
    chars = sorted({t.removeprefix(WORD_START) for t in learned if len(t.removeprefix(WORD_START)) == 1})
    pieces = list(dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars),
                                 *(t[1:] if t.startswith(WORD_START) else f"##{t}" for t in learned)]))
    pieces = [p if p in special else p.replace(STAND_IN, WORD_START) for p in pieces]
    return {p: i for i, p in enumerate(pieces[:max(vocab_size, len(specials) + 2 * len(chars))])}


class Unigram(TokenizerKind):
    """SentencePiece-style Unigram LM over Metaspace (▁) words, with SentencePiece's nmt_nfkc normalisation."""

    name = "unigram"
    specials = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "cls": "<s>", "eos": "</s>", "sep": "</s>",
                "mask": "<mask>"}

    def model(self, roles):
        return models.Unigram()

    def normalizer(self, lowercase):
        # SentencePiece's nmt_nfkc + collapsing runs of spaces (as in T5 / XLM-R tokenizer.json).
        norms = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        if lowercase:
            norms.append(normalizers.Lowercase())
        return normalizers.Sequence(norms)

    def pre_tokenizer(self):
        return pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")

    def decoder(self):
        return decoders.Metaspace(replacement="▁", prepend_scheme="always")

    def trainer(self, vocab_size, min_frequency, specials, roles, show_progress):
        # Unigram prunes by likelihood; min_frequency does not apply.
        return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=roles["unk"],
                                       show_progress=show_progress)

    def train(self, tok, batches, vocab_size, min_frequency, specials, roles, show_progress):
        """HF's UnigramTrainer learns the same pieces in every process, but numbers them differently: pieces of equal
        score keep hash-map order (seeded per process), the characters it must keep are scored in that order, and
        the scores themselves differ in the 10th decimal. Measured with tokenizers 0.23.3 on SST-2 dev at 300, 800
        and 2,000 pieces: the same piece sets, 19 ids out of 800 moved between two processes (and on SST-2 train at
        16,000, two characters swapped ids). The trained vocabulary
        is put in a canonical order here (unigram_canonical), so a training run can be repeated exactly; a loaded
        vocabulary (T5's, XLM-R's) is never reordered."""
        tok = super().train(tok, batches, vocab_size, min_frequency, specials, roles, show_progress)
        state = json.loads(tok.to_str())["model"]
        vocab = unigram_canonical([tuple(v) for v in state["vocab"]], set(specials))
        tok.model = models.Unigram(vocab, unk_id=[p for p, _ in vocab].index(roles["unk"]),
                                   byte_fallback=state.get("byte_fallback", False))
        return tok


TOKENIZER_KINDS: dict[str, TokenizerKind] = {k.name: k for k in (BPE(), WordPiece(), Unigram())}


def tokenizer_kind(name: str) -> TokenizerKind:
    kind = TOKENIZER_KINDS.get(name)
    if kind is None:
        raise ConfigError(f"tokenizer kind {name!r} is not one of {list(TOKENIZER_KINDS)}")
    return kind
