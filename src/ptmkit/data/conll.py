"""CoNLL-2003 named entities (Tjong Kim Sang & De Meulder 2003): ``token POS chunk NER`` lines, a blank line
between sentences; tags read as IOB1 or IOB2 and re-spelled losslessly between them (conlleval rules)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ptmkit.config import ConfigError
from ptmkit.data.examples import TokenTaskData
from ptmkit.data.textio import lines

CONLL_METRICS = ("entity_f1", "entity_precision", "entity_recall")
_IOB_TAG = re.compile(r"^([BI])-(\S+)$")


def _recode(tags: list[str], scheme: str) -> list[str]:
    """Re-spell one sentence's tags in IOB1 or IOB2 without changing its entities (conlleval rules:
    B- always opens an entity; I- opens one after O or after another type)."""
    out, prev = [], None
    for t in tags:
        if t == "O":
            out.append(t)
            prev = None
            continue
        typ = t[2:]
        opens = t[0] == "B" or prev != typ
        if scheme == "iob2":
            out.append(("B-" if opens else "I-") + typ)
        else:  # IOB1: B- only where an entity directly follows one of the same type
            out.append(("B-" if opens and prev == typ else "I-") + typ)
        prev = typ
    return out


def _is_iob1(tags: list[str]) -> bool:
    """True when some entity opens with I- (which IOB2 forbids)."""
    prev = None
    for t in tags:
        if t == "O":
            prev = None
            continue
        if t[0] == "I" and prev != t[2:]:
            return True
        prev = t[2:]
    return False


def read_conll(
    path: str | Path,
    tag_scheme: str = "auto",
    tag_names: Sequence[str] | None = None,
    *,
    tags_from: str | None = None,
) -> TokenTaskData:
    """Read CoNLL-2003 NER: ``token POS chunk NER`` per line, blank lines between sentences.

    ``-DOCSTART-`` lines are skipped; the token is the first column and the tag the last, so the
    German 5-column files read too. ``tag_scheme`` is the scheme of the returned tags: "auto" keeps
    the file's own (detected: "iob1" if some entity opens with I-, else "iob2"); "iob1" / "iob2"
    re-spell the tags losslessly. ``tag_names`` defaults to "O" followed by B-/I- of every entity
    type in the file, sorted (so splits with the same types share ids); pass the training split's
    ``tag_names`` to read dev/test with the same ids, and name that split in ``tags_from`` (e.g.
    "the training split data/train.txt") so a tag it lacks is reported as such.
    """
    if tag_scheme not in ("auto", "iob1", "iob2"):
        raise ConfigError(f"tag_scheme must be 'auto', 'iob1' or 'iob2', got {tag_scheme!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the path of a CoNLL-2003 file (e.g. train.txt)"
        )

    sentences: list[list[str]] = []
    raw_tags: list[list[str]] = []
    first_lines: list[int] = []  # line of each sentence's first token (tokens are consecutive)
    tokens: list[str] = []
    tags: list[str] = []
    ncols, ncols_line = None, 0

    def flush(lineno: int) -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append(tokens)
            raw_tags.append(tags)
            first_lines.append(lineno - len(tokens))
            tokens, tags = [], []

    lineno = 0
    for lineno, line in enumerate(lines(path), start=1):
        parts = line.split()
        if not parts:
            flush(lineno)
            continue
        if parts[0] == "-DOCSTART-":  # document boundary, not a sentence
            flush(lineno)
            continue
        if len(parts) < 2:
            raise ValueError(
                f"{path}:{lineno}: expected `token POS chunk NER` columns, got {line.strip()!r}; "
                "separate the columns with spaces and sentences with a blank line"
            )
        if ncols is None:
            ncols, ncols_line = len(parts), lineno
        elif len(parts) != ncols:
            raise ValueError(
                f"{path}:{lineno}: {len(parts)} columns but line {ncols_line} has {ncols} "
                f"({line.strip()!r}); every token line needs the same columns (token ... NER)"
            )
        tag = parts[-1]
        if tag != "O" and not _IOB_TAG.match(tag):
            raise ValueError(
                f"{path}:{lineno}: NER tag {tag!r} (last column) is not IOB; expected 'O', "
                "'B-TYPE' or 'I-TYPE' (convert IOBES/BILOU files to IOB2 first)"
            )
        tokens.append(parts[0])
        tags.append(tag)
    flush(lineno + 1)

    if tag_scheme == "auto":
        scheme = "iob1" if any(_is_iob1(t) for t in raw_tags) else "iob2"
        out_tags = raw_tags
    else:
        scheme = tag_scheme
        out_tags = [_recode(t, scheme) for t in raw_tags]

    if tag_names is None:
        types = sorted({t[2:] for sent in out_tags for t in sent if t != "O"})
        names = ["O"] + sorted(f"{p}-{typ}" for typ in types for p in "BI")
    else:
        names = list(tag_names)
        if len(set(names)) != len(names):
            raise ConfigError(f"tag_names has duplicates: {names}")
    index = {n: i for i, n in enumerate(names)}
    ids: list[list[int]] = []
    for s, sent in enumerate(out_tags):
        row = []
        for j, t in enumerate(sent):
            k = index.get(t)
            if k is None:
                where = f"{path}:{first_lines[s] + j}"
                if tags_from is not None:
                    raise ValueError(
                        f"{where}: tag {t!r} does not occur in {tags_from}, whose tags are {names} (a tag "
                        "the model never trained on can be neither learned nor scored); correct the tag, "
                        "add training sentences with it, or remove this sentence"
                    )
                raise ValueError(
                    f"{where}: tag {t!r} is not in tag_names {names}; read "
                    "with the tag_names of a split that has it, or leave tag_names=None"
                )
            row.append(k)
        ids.append(row)
    return TokenTaskData(sentences=sentences, tags=ids, tag_names=names, tag_scheme=scheme)
