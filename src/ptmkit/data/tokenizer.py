"""Tokenizers on HF `tokenizers`: train byte-level BPE / WordPiece / Unigram, load GPT-2 and BERT files,
and save in the Hugging Face layout so `transformers.AutoTokenizer` reads the same ids back.

The families (their models, normalisers, pre-tokenisers, trainers and special tokens) are classes in
data/tokenizer_kinds.py, one per kind; this module trains them, loads tokenizer files and wraps the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import models

from ptmkit import atomic
from ptmkit.config import ConfigError, check_positive
from ptmkit.data.corpus import iter_documents
from ptmkit.data.tokenizer_kinds import TOKENIZER_KINDS, TokenizerKind, tokenizer_kind

KINDS = tuple(TOKENIZER_KINDS)
ROLES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")

# role -> token, listed in id order (dict order), and the default casing, of each kind
DEFAULT_SPECIALS: dict[str, dict[str, str]] = {name: dict(k.specials) for name, k in TOKENIZER_KINDS.items()}
DEFAULT_LOWERCASE = {name: k.lowercase for name, k in TOKENIZER_KINDS.items()}

GPT2_EOT = "<|endoftext|>"
# Conventional spellings used to recover roles from a bare tokenizer.json (no tokenizer_config.json).
_CONVENTIONAL = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<|startoftext|>", "<|begin_of_text|>", "<bos>"),
    "eos": ("</s>", "<|end_of_text|>", "<eos>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("<mask>", "[MASK]", "<|mask|>"),
}
_HF_VERY_LARGE = int(1e30)  # transformers' "no limit" model_max_length


class VocabMismatchError(ValueError):
    """A tokenizer produces ids that a model's embedding table cannot index."""


# ----------------------------------------------------------------------------------------------
# training


def _stable_scores(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Round Unigram log-probabilities to 10 decimals so JSON save/load round-trips exactly.

    The Rust JSON reader is not correctly rounded for long decimals (a 17-digit score comes back
    1 ulp off), so fingerprints would drift on every save/load. Short decimals parse exactly.
    A 1e-10 change of a log-probability cannot change which segmentation wins in practice.
    """
    if not isinstance(tok.model, models.Unigram):
        return tok
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for entry in vocab:
        entry[1] = round(float(entry[1]), 10)
    return tokenizers.Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _resolve_specials(kind: TokenizerKind, special_tokens: Any) -> tuple[dict[str, str], list[str]]:
    """Return (role -> token, ordered unique special tokens) for `kind` and the user's override.

    ``special_tokens`` may be None (defaults), a mapping role -> token (None removes the role),
    or a list of *additional* special tokens appended after the role tokens.
    """
    roles = dict(kind.specials)
    extra: list[str] = []
    if isinstance(special_tokens, Mapping):
        for role, tok in special_tokens.items():
            if role not in ROLES:
                raise ConfigError(f"special_tokens: unknown role {role!r}; roles are {list(ROLES)}")
            if tok is None:
                roles.pop(role, None)
            elif not isinstance(tok, str) or not tok:
                raise ConfigError(f"special_tokens[{role!r}] must be a non-empty string, got {tok!r}")
            else:
                roles[role] = tok
    elif special_tokens is not None:
        if isinstance(special_tokens, str):
            raise ConfigError("special_tokens must be a list of tokens or a role -> token mapping, not a string")
        extra = [str(t) for t in special_tokens]
    ordered = list(dict.fromkeys([*roles.values(), *extra]))
    return roles, ordered


def _texts_from(source: Any, text_field: str, txt_mode: str) -> Iterator[str]:
    """Documents from a corpus spec (str/PathLike), or from an iterable of texts and/or Paths."""
    if isinstance(source, (str, os.PathLike)):
        yield from iter_documents(source, text_field=text_field, txt_mode=txt_mode)
        return
    for i, item in enumerate(source):
        if isinstance(item, os.PathLike):
            yield from iter_documents(item, text_field=text_field, txt_mode=txt_mode)
        elif isinstance(item, str):
            # A list of path *strings* would silently train on the file names: refuse it.
            if i < 3 and len(item) < 1024 and "\n" not in item and os.path.isfile(item):
                raise ValueError(
                    f"training text #{i} {item!r} is a file path; pass a corpus spec string, or "
                    "pathlib.Path objects, to read files (plain strings in a list are texts)"
                )
            yield item
        else:
            raise TypeError(f"training input item #{i} is a {type(item).__name__}; expected str text or a Path")


def _batched(texts: Iterable[str], n: int, counter: list[int]) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == n:
            counter[0] += len(batch)
            yield batch
            batch = []
    if batch:
        counter[0] += len(batch)
        yield batch


def _train(
    source: Any,
    kind: str,
    vocab_size: int,
    special_tokens: Any,
    min_frequency: int,
    lowercase: bool | None,
    text_field: str,
    txt_mode: str,
    show_progress: bool,
) -> tuple[tokenizers.Tokenizer, dict[str, str]]:
    spec = tokenizer_kind(kind)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ConfigError(f"vocab_size must be an integer, got {vocab_size!r}")
    check_positive("train_tokenizer", vocab_size=vocab_size)
    if min_frequency < 0:
        raise ConfigError(f"min_frequency must be >= 0, got {min_frequency}")
    roles, specials = _resolve_specials(spec, special_tokens)
    spec.check(vocab_size, roles, specials)
    tok = spec.build(roles, spec.lowercase if lowercase is None else bool(lowercase))
    seen = [0]
    tok = spec.train(tok, _batched(_texts_from(source, text_field, txt_mode), 1000, seen), vocab_size, min_frequency,
                     specials, roles, show_progress)
    if seen[0] == 0:
        raise ValueError("train_tokenizer: the training input holds no text (an empty iterable was given)")
    for t in specials:
        if tok.token_to_id(t) is None:  # should not happen; guards against trainer behaviour changes
            raise RuntimeError(f"special token {t!r} missing from the trained {kind} vocabulary")
    post = spec.post_processor(roles, tok)
    if post is not None:
        tok.post_processor = post
    return _stable_scores(tok), roles


def train_tokenizer(
    files_or_texts: Any,
    kind: str,
    vocab_size: int,
    special_tokens: Any = None,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    *,
    text_field: str = "text",
    txt_mode: str = "file",
    show_progress: bool = False,
) -> tokenizers.Tokenizer:
    """Train a `kind` tokenizer ("bpe" | "wordpiece" | "unigram") and return a tokenizers.Tokenizer.

    ``files_or_texts``: a corpus spec (str/PathLike: file, directory or glob, read with
    `iter_documents(text_field=, txt_mode=)`), or an iterable of texts (str) and/or pathlib.Paths.
    ``special_tokens``: None for the family defaults, a role -> token mapping to override roles,
    or a list of extra special tokens. ``lowercase`` defaults to True for wordpiece, else False.
    ``min_frequency`` applies to BPE and WordPiece merges. Use `Tokenizer.train` to get the wrapper.
    """
    tok, _ = _train(files_or_texts, kind, vocab_size, special_tokens, min_frequency, lowercase, text_field, txt_mode, show_progress)
    return tok


# ----------------------------------------------------------------------------------------------
# loading helpers


def _token_content(value: Any) -> str | None:
    """A special token from a HF config: a plain string or an AddedToken dict {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _hf_configs(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Roles and the raw tokenizer_config.json from a HF tokenizer directory (either file optional)."""
    roles: dict[str, str] = {}
    config: dict[str, Any] = {}
    cfg_path = directory / "tokenizer_config.json"
    if cfg_path.is_file():
        config = _read_json(cfg_path)
    map_path = directory / "special_tokens_map.json"
    smap = _read_json(map_path) if map_path.is_file() else {}
    for source in (config, smap):  # special_tokens_map.json wins where both name a role
        for role in ROLES:
            tok = _token_content(source.get(f"{role}_token"))
            if tok is not None:
                roles[role] = tok
    return roles, config


def _gpt2_backend(vocab: Path, merges: Path) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, configured like HF's GPT-2 tokenizer.json."""
    bpe = TOKENIZER_KINDS["bpe"]
    tok = tokenizers.Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = bpe.pre_tokenizer()
    tok.post_processor = bpe.post_processor({}, tok)  # GPT-2 adds no specials: bytes only
    tok.decoder = bpe.decoder()
    if tok.token_to_id(GPT2_EOT) is not None:
        tok.add_special_tokens([GPT2_EOT])
    return tok


def _bert_backend(vocab: Path, roles: Mapping[str, str], config: Mapping[str, Any]) -> tokenizers.Tokenizer:
    """BERT WordPiece from vocab.txt; casing and Chinese/accents handling from tokenizer_config.json."""
    wordpiece = TOKENIZER_KINDS["wordpiece"]
    unk = roles.get("unk", "[UNK]")
    tok = tokenizers.Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=unk))
    tok.normalizer = wordpiece.normalizer(
        bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents"),
        chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
    )
    tok.pre_tokenizer = wordpiece.pre_tokenizer()
    tok.decoder = wordpiece.decoder()
    present = [t for t in dict.fromkeys(roles.values()) if tok.token_to_id(t) is not None]
    tok.add_special_tokens(present)
    post = wordpiece.post_processor(roles, tok)
    if post is not None:
        tok.post_processor = post
    return tok


# ----------------------------------------------------------------------------------------------
# the wrapper


class Tokenizer:
    """A tokenizers.Tokenizer plus named special-token roles; saves/loads the HF directory layout.

    Role ids are None when the tokenizer has no such token. ``bos_id``/``cls_id`` name one slot
    (each falls back to the other), as do ``eos_id``/``sep_id``: BERT's [CLS] is its sequence start,
    GPT-2's <|endoftext|> its document separator. Padding and truncation configured in the
    backend are switched off (its truncation length becomes ``model_max_length``).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: Mapping[str, str | None] | None = None,
        model_max_length: int | None = None,
    ) -> None:
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        # Whole, unpadded sequences only: a tokenizer.json that pads/truncates (e.g. sentence-
        # transformers' pad-to-128) would otherwise silently cut documents and fill shards with
        # [PAD]. Lengths are decided later by packing and collation; the limit is kept as metadata.
        if backend.truncation is not None:
            if model_max_length is None:
                model_max_length = int(backend.truncation["max_length"])
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        self.backend = backend
        self.model_max_length = model_max_length
        if special_tokens is None:
            roles = self._infer_roles(backend)
        else:
            roles = {}
            for role, tok in special_tokens.items():
                if role not in ROLES:
                    raise ConfigError(f"unknown special-token role {role!r}; roles are {list(ROLES)}")
                if tok is None:
                    continue
                if backend.token_to_id(tok) is None:
                    raise ValueError(f"special token {role}={tok!r} is not in the tokenizer's vocabulary")
                roles[role] = tok
        self._roles = roles
        self._ids = {r: backend.token_to_id(t) for r, t in roles.items()}
        self._fingerprint: str | None = None

    @staticmethod
    def _infer_roles(backend: tokenizers.Tokenizer) -> dict[str, str]:
        added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        roles: dict[str, str] = {}
        for role, names in _CONVENTIONAL.items():
            for name in names:
                if name in added:
                    roles[role] = name
                    break
        if GPT2_EOT in added:  # GPT-2 family: one token is bos, eos and unk
            for role in ("bos", "eos", "unk"):
                roles.setdefault(role, GPT2_EOT)
        return roles

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        files_or_texts: Any,
        kind: str,
        vocab_size: int,
        special_tokens: Any = None,
        min_frequency: int = 2,
        lowercase: bool | None = None,
        *,
        text_field: str = "text",
        txt_mode: str = "file",
        show_progress: bool = False,
        model_max_length: int | None = None,
    ) -> Tokenizer:
        """Like `train_tokenizer`, but returns the wrapper with the roles that were trained."""
        tok, roles = _train(files_or_texts, kind, vocab_size, special_tokens, min_frequency, lowercase, text_field, txt_mode, show_progress)
        return cls(tok, roles, model_max_length=model_max_length)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a tokenizer.json file or a directory holding (in order of preference):
        tokenizer.json (+ optional tokenizer_config.json / special_tokens_map.json), GPT-2
        vocab.json + merges.txt (byte-level BPE, <|endoftext|> = bos/eos/unk), or BERT vocab.txt
        (WordPiece; lowercasing from tokenizer_config.json ``do_lower_case``, default True).
        """
        p = Path(path).expanduser()
        if p.is_file():
            if p.suffix != ".json":
                raise ValueError(f"{p}: expected a tokenizer.json file or a tokenizer directory")
            directory, tj = p.parent, p
        elif p.is_dir():
            directory, tj = p, p / "tokenizer.json"
        else:
            raise FileNotFoundError(f"tokenizer path {p} does not exist")
        roles, config = _hf_configs(directory)
        mml = config.get("model_max_length")
        mml = int(mml) if isinstance(mml, int) and 0 < mml < _HF_VERY_LARGE else None
        if tj.is_file():
            try:
                backend = _stable_scores(tokenizers.Tokenizer.from_file(str(tj)))
            except Exception as e:  # the Rust error says what is wrong inside the file
                raise ValueError(f"{tj}: not a valid tokenizers JSON file ({e})") from None
            inferred = cls._infer_roles(backend)
            merged = {**inferred, **roles} if roles else inferred
            return cls(backend, {r: t for r, t in merged.items() if backend.token_to_id(t) is not None}, mml)
        vocab_json, merges, vocab_txt = directory / "vocab.json", directory / "merges.txt", directory / "vocab.txt"
        if vocab_json.is_file() or merges.is_file():
            if not (vocab_json.is_file() and merges.is_file()):
                missing = merges if vocab_json.is_file() else vocab_json
                raise FileNotFoundError(f"{directory}: GPT-2 BPE needs vocab.json and merges.txt; {missing.name} is missing")
            backend = _gpt2_backend(vocab_json, merges)
            base = {r: GPT2_EOT for r in ("bos", "eos", "unk")} if backend.token_to_id(GPT2_EOT) is not None else {}
            merged = {**base, **roles}
            return cls(backend, {r: t for r, t in merged.items() if backend.token_to_id(t) is not None}, mml)
        if vocab_txt.is_file():
            merged = {**DEFAULT_SPECIALS["wordpiece"], **roles}
            backend = _bert_backend(vocab_txt, merged, config)
            return cls(backend, {r: t for r, t in merged.items() if backend.token_to_id(t) is not None}, mml)
        raise FileNotFoundError(
            f"no tokenizer found in {directory}: looked for tokenizer.json, vocab.json + merges.txt "
            "(GPT-2 BPE) and vocab.txt (BERT WordPiece)"
        )

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); offsets are not computed."""
        texts = texts if isinstance(texts, list) else list(texts)
        enc = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in enc(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.backend.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    # -- vocabulary and roles -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (ids run 0 .. vocab_size - 1)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[str, str]:
        """role -> token for the roles this tokenizer declares (no fallbacks)."""
        return dict(self._roles)

    pad_id = property(lambda self: self._ids.get("pad"))
    unk_id = property(lambda self: self._ids.get("unk"))
    mask_id = property(lambda self: self._ids.get("mask"))
    bos_id = property(lambda self: self._first("bos", "cls"))
    cls_id = property(lambda self: self._first("cls", "bos"))
    eos_id = property(lambda self: self._first("eos", "sep"))
    sep_id = property(lambda self: self._first("sep", "eos"))

    def _first(self, *roles: str) -> int | None:
        for r in roles:
            if self._ids.get(r) is not None:
                return self._ids[r]
        return None

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({i for i in self._ids.values() if i is not None})

    def fingerprint(self) -> str:
        """sha256 of the canonical (key-sorted) JSON serialisation: equal iff the tokenizers agree."""
        if self._fingerprint is None:
            canon = json.dumps(json.loads(self.backend.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._fingerprint = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        return self._fingerprint

    # -- saving ---------------------------------------------------------------------------------

    def hf_config(self) -> dict[str, Any]:
        """tokenizer_config.json contents that transformers.AutoTokenizer understands."""
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length or _HF_VERY_LARGE,
        }
        cfg.update({f"{r}_token": t for r, t in self._roles.items()})
        return cfg

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
        d = Path(directory)
        files = {
            "tokenizer.json": self.backend.to_str(pretty=True),
            "tokenizer_config.json": json.dumps(self.hf_config(), indent=2, ensure_ascii=False),
            "special_tokens_map.json": json.dumps({f"{r}_token": t for r, t in self._roles.items()}, indent=2, ensure_ascii=False),
        }
        for name, text in files.items():  # each file whole or not at all (a model directory may hold other files)
            atomic.write_text(d / name, text + "\n")
        return d

    def __repr__(self) -> str:
        model = type(self.backend.model).__name__
        roles = ", ".join(f"{r}={t}" for r, t in self._roles.items())
        return f"Tokenizer({model}, vocab_size={self.vocab_size}, {roles})"


def as_backend(tokenizer: Tokenizer | tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    return tokenizer.backend if isinstance(tokenizer, Tokenizer) else tokenizer


def check_vocab(tokenizer: Tokenizer | tokenizers.Tokenizer | int, model_vocab_size: int) -> None:
    """Raise VocabMismatchError if the tokenizer can emit ids >= the model's embedding rows.

    A model vocabulary larger than the tokenizer's is fine (GPT-2 pads 50,257 to 50,304).
    """
    if isinstance(tokenizer, int):
        n = tokenizer
    else:
        n = as_backend(tokenizer).get_vocab_size(with_added_tokens=True)
    if n > model_vocab_size:
        raise VocabMismatchError(
            f"the tokenizer has {n} ids (0..{n - 1}) but the model's vocabulary has only {model_vocab_size} "
            f"rows, so ids >= {model_vocab_size} would index out of range. Use the tokenizer the model was "
            f"trained with, or build/resize the model with vocab_size >= {n}."
        )
