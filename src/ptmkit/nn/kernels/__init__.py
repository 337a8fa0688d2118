"""The attention kernel registry (survey §4.2 / §6.2: efficient attention): one dict, name -> kernel class.

Every entry is an AttentionKernel (ptmkit.nn.kernels.base) built from the layer's AttentionConfig; its
settings come from AttentionConfig.kernel_options (a model config's `attention_options`).
Contract tests iterate over this dict, so a new kernel is tested the moment it is added here.
"""

from __future__ import annotations

from ptmkit.nn.kernels.base import AttentionKernel, NoOptions, expand_kv, key_padding
from ptmkit.nn.kernels.bigbird import BigBird
from ptmkit.nn.kernels.block_sparse import BlockSparse
from ptmkit.nn.kernels.dense import SDPA, Eager, eager_kernel, sdpa_kernel
from ptmkit.nn.kernels.linear import LinearAttention
from ptmkit.nn.kernels.linformer import Linformer
from ptmkit.nn.kernels.longformer import Longformer
from ptmkit.nn.kernels.lsh import LSHAttention
from ptmkit.nn.kernels.performer import Performer
from ptmkit.nn.kernels.sliding_window import SlidingWindow

ATTENTION: dict[str, type[AttentionKernel]] = {
    "sdpa": SDPA,
    "eager": Eager,
    # approximations (kind "approximate"): low rank, random features, kernel features, hashing
    "linformer": Linformer,
    "performer": Performer,
    "linear": LinearAttention,
    "lsh": LSHAttention,
    # exact sparse patterns (kind "pattern"): blocked, O(T·window)
    "sliding_window": SlidingWindow,
    "block_sparse": BlockSparse,
    "bigbird": BigBird,
    "longformer": Longformer,
}


def causal_kernels() -> list[str]:
    """Names of the kernels defined for causal (decoder) attention."""
    return sorted(name for name, kernel in ATTENTION.items() if kernel.causal)


__all__ = ["ATTENTION", "AttentionKernel", "NoOptions", "causal_kernels", "eager_kernel", "expand_kv",
           "key_padding", "sdpa_kernel"]
