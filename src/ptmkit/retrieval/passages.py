"""Passages: a corpus cut into overlapping token windows, each keeping where it came from.

Retrieval-augmented models index passages, not documents (REALM §3.4 and RAG §2.2 split Wikipedia into 288-token /
100-word chunks): a passage must fit the encoder's input and be short enough for a reader to use. Windows of
`max_tokens` tokens start every `max_tokens - overlap` tokens, so a fact cut by one boundary is whole in the next
window. A passage's text is the exact slice of its document between the character offsets of its first and last
token (the tokenizer's offsets), so nothing is re-tokenised or normalised on the way back to the user.

Documents: the corpus readers of ptmkit.data.corpus. A `.jsonl(.gz)` file gives one document per record (its
`text_field`); a `.txt(.gz)` file gives one document per non-blank line (documents="lines", the default: WikiText,
one-sentence-per-line corpora) or one per file (documents="file": a book). Documents are numbered in corpus order,
from 0; that number is a passage's `doc`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmkit.config import ConfigError
from ptmkit.data.corpus import TXT_MODES, CorpusStats, EmptyCorpusError, iter_documents
from ptmkit.data.tokenizer import Tokenizer, as_backend

@dataclass(frozen=True)
class ChunkConfig:
    """max_tokens: tokens per passage (without the encoder's special tokens); overlap: tokens shared by consecutive
    passages of one document; documents: how a .txt file splits into documents ("lines" or "file"); text_field:
    the text's key in .jsonl records."""

    max_tokens: int = 128
    overlap: int = 32
    documents: str = "lines"
    text_field: str = "text"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"chunking: max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens:
            raise ConfigError(f"chunking: overlap must be in [0, max_tokens) = [0, {self.max_tokens}), got "
                              f"{self.overlap}; a window must move forward")
        if self.documents not in TXT_MODES:  # ptmkit.data.corpus's txt_mode
            raise ConfigError(f"chunking: documents={self.documents!r}; choose one of {list(TXT_MODES)} ('lines': "
                              "each non-blank line of a .txt file is a document, 'file': each file is one)")


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: its id (position in the index), its document, its text, and where the text stands in
    the document (characters [char_start, char_end), tokens [tok_start, tok_end))."""

    id: int
    doc: int
    text: str
    char_start: int
    char_end: int
    tok_start: int
    tok_end: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Passage:
        return cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls)})


def token_windows(n: int, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows over n tokens: every `max_tokens - overlap` tokens, the last one ending at n."""
    out, start, stride = [], 0, max_tokens - overlap
    while True:
        end = min(start + max_tokens, n)
        out.append((start, end))
        if end >= n:
            return out
        start += stride


def chunk_documents(docs: Iterable[str], tokenizer: Tokenizer, cfg: ChunkConfig = ChunkConfig(),
                    batch: int = 256) -> Iterator[Passage]:
    """The passages of `docs` in order (ids from 0). A document with no token (whitespace only) gives none."""
    backend = as_backend(tokenizer)
    pid, doc_id, pending = 0, 0, []

    def flush() -> Iterator[Passage]:
        nonlocal pid, doc_id
        for text, enc in zip(pending, backend.encode_batch(pending, add_special_tokens=False)):
            offsets = enc.offsets
            for s, e in token_windows(len(offsets), cfg.max_tokens, cfg.overlap) if offsets else ():
                c0, c1 = offsets[s][0], offsets[e - 1][1]
                yield Passage(pid, doc_id, text[c0:c1], c0, c1, s, e)
                pid += 1
            doc_id += 1
        pending.clear()

    for doc in docs:
        pending.append(doc)
        if len(pending) >= batch:  # the tokenizer's Rust threads work on a batch at a time
            yield from flush()
    yield from flush()


def read_passages(corpus: str | Path, tokenizer: Tokenizer, cfg: ChunkConfig = ChunkConfig()) -> \
        tuple[list[Passage], CorpusStats]:
    """All passages of a corpus file, directory or glob (.txt/.jsonl, plain or .gz), and the reader's counts (bad
    lines are counted there, never dropped silently). An empty corpus is a ConfigError."""
    stats = CorpusStats()
    try:
        docs = iter_documents(corpus, text_field=cfg.text_field, txt_mode=cfg.documents, stats=stats)
        passages = list(chunk_documents(docs, tokenizer, cfg))
    except EmptyCorpusError as e:
        raise ConfigError(f"{e}\nAn index needs at least one passage: give a corpus with text in it (a .txt file "
                          "with one document a line, or .jsonl records with a 'text' field)") from None
    if not passages:
        raise ConfigError(f"corpus {corpus}: {stats.documents} document(s) but no token in any; an index needs at "
                          "least one passage")
    return passages, stats
