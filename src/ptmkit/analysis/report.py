"""Experiment reports: the results block of a docs page, rewritten in place by the script that measured it."""

from __future__ import annotations

from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results_block(path: str | Path, block: str, title: str) -> None:
    """Replace what stands between the page's results markers with `block` (prose around them is kept); a missing
    page is created with `title`, a page without markers gets them appended."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"# {title}\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    pre, rest = text.split(BEGIN, 1)
    path.write_text(pre + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1])
