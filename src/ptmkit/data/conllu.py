"""CoNLL-U treebanks (Universal Dependencies): sentences of words with their UPOS tag, head and relation, from any
plain or gzipped .conllu file. Multi-word token lines (1-2) and empty nodes (8.1) are skipped, as the syntactic words
carry the annotation; a malformed line is an error naming file and line (or, with skip_bad_lines, counted and left
out with its sentence)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ptmkit.data import textio


@dataclass
class Sentence:
    words: list[str] = field(default_factory=list)
    upos: list[str] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)  # 1-based head of each word, 0 = root
    deprels: list[str] = field(default_factory=list)  # universal relation (the subtype after ':' dropped)


def read_conllu(path: str | Path, skip_bad_lines: bool = False) -> list[Sentence]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a CoNLL-U file (.conllu, plain or .gz)")
    out: list[Sentence] = []
    current, bad, current_bad = Sentence(), 0, False
    for i, raw in enumerate(textio.lines(path), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if current.words and not current_bad:
                out.append(current)
            current, current_bad = Sentence(), False
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            msg = f"{path}:{i}: a CoNLL-U word line has 10 tab-separated columns, this one has {len(cols)}"
            if not skip_bad_lines:
                raise ValueError(msg + " (skip_bad_lines=True leaves such sentences out and counts them)")
            bad, current_bad = bad + 1, True
            continue
        if "-" in cols[0] or "." in cols[0]:
            continue  # a multi-word token's surface line, or an empty node
        try:
            head = int(cols[6])
        except ValueError:
            head = -1  # "_" in files without syntax: kept, never used as a head
        current.words.append(cols[1])
        current.upos.append(cols[3])
        current.heads.append(head)
        current.deprels.append(cols[7].split(":")[0])
    if current.words and not current_bad:
        out.append(current)
    if bad:
        warnings.warn(f"{path}: left out {bad} malformed line(s) and their sentences", stacklevel=2)
    if not out:
        raise ValueError(f"{path}: no sentences (is it a CoNLL-U file?)")
    return out
