"""The one message channel: the `ptmkit` logger. Library code reports progress and notices through it (never
print); `warnings.warn` is kept for one case only, a user's data at fault (bad lines, truncated examples), so those
can be filtered or escalated to errors with Python's warning filters.

The CLI calls `setup()` once so messages reach stderr as `[ptmkit] ...`; a library user configures logging as
they like (nothing is printed unless a handler is attached or the level allows it).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("ptmkit")


def get(name: str) -> logging.Logger:
    """The logger of a ptmkit module (a child of `ptmkit`, so one handler serves all)."""
    return logging.getLogger(name if name.startswith("ptmkit") else f"ptmkit.{name}")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the message (tests and notebooks swap it), never to a stream
    captured once and closed since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(level: int = logging.INFO) -> None:
    """Send ptmkit's messages to stderr as `[ptmkit] message` (idempotent)."""
    if any(getattr(h, "_ptmkit", False) for h in logger.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("[ptmkit] %(message)s"))
    handler._ptmkit = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
