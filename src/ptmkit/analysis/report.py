"""Experiment reports: the results block of a docs page, rewritten in place by the script that measured it."""

from __future__ import annotations

from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results_block(path: str | Path, block: str, title: str, name: str = "") -> None:
    """Replace what stands between the page's results markers with `block` (prose around them is kept); a missing
    page is created with `title`, a page without markers gets them appended. `name` selects one of several blocks
    on a page (markers `<!-- results:NAME:begin -->` ... `<!-- results:NAME:end -->`); "" is the page's only block."""
    path = Path(path)
    begin, end = (BEGIN, END) if not name else (f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->")
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    pre, rest = text.split(begin, 1)
    path.write_text(pre + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1])
