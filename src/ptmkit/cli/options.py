"""Options that many commands and experiment scripts share, written once so their choices and help agree.

`--precision` is the one so far: every command that runs a model offers it, and its "auto" must mean the same
everywhere (nn/autocast.py resolves it: bf16 where the device computes it natively, else fp32)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ptmkit.nn.autocast import MODES

AUTO_HELP = ("auto = bf16 where the device computes it natively (CUDA, a CPU with AVX512-BF16 or AMX), else fp32; "
             "bf16 on other CPUs is emulated and runs many times slower than fp32")


def add_precision_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = "auto",
                         what: str = "autocast precision", choices: Sequence[str] = MODES,
                         extra: str = "") -> argparse.Action:
    """Add `--precision` to `parser`: one of `choices` (a subset of auto/fp32/bf16/fp16), `default` (None: the
    caller fills it, e.g. from a preset); `what` opens the help (what the precision applies to), `extra` ends it."""
    unknown = [c for c in choices if c not in MODES]
    if unknown:  # a programming error: nn/autocast.py resolves only MODES
        raise ValueError(f"precision choices {unknown} are not among {MODES}")
    if default is not None and default not in choices:
        raise ValueError(f"precision default {default!r} is not among its choices {tuple(choices)}")
    text = what + ("; " + AUTO_HELP if "auto" in choices else "") + (f" ({extra})" if extra else "")
    return parser.add_argument("--precision", choices=list(choices), default=default, help=text)
