"""torchao, imported first and quietly. On a CPU-only torch, torchao logs a "Failed to load" warning for each of its
CUDA-only extensions (mxfp8, cutlass) and torch warns about an enum registration of torchao's; neither concerns the
CPU kernels ptmkit uses, and they would print on every quantisation command. With CUDA present nothing is silenced:
a failed extension load there is worth seeing."""

from __future__ import annotations

import logging

import torch

_NOISY = ("torchao", "torch.utils._pytree")

if torch.cuda.is_available():
    import torchao  # noqa: F401
else:
    _loggers = [logging.getLogger(name) for name in _NOISY]
    _levels = [lg.level for lg in _loggers]
    for lg in _loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        for lg, level in zip(_loggers, _levels):
            lg.setLevel(level)
