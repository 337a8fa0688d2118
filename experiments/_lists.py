"""Comma-separated list options of the experiment scripts as argparse types: a bad item is a usage error that
names the option and what it accepts, not a traceback."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        return [int(x) for x in _items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 0,1,2), got {text!r}") from None


def floats(text: str) -> list[float]:
    """'1e-4,3e-4' -> [0.0001, 0.0003]; '' -> []."""
    try:
        return [float(x) for x in _items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (e.g. 1e-4,3e-4), got {text!r}") from None


def names(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """A type accepting a comma list drawn from `allowed`, in the order given."""
    allowed = list(allowed)

    def parse(text: str) -> list[str]:
        got = _items(text)
        bad = [x for x in got if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {allowed}")
        return got

    return parse
