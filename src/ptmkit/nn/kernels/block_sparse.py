"""Block-sparse attention, the "fixed" pattern of the Sparse Transformer: a block of its own plus summary columns.

Child et al. 2019, "Generating Long Sequences with Sparse Transformers" §4.2 (fixed attention pattern): with block
length l and c summary columns, query i sees A1 = {j : ⌊j/l⌋ = ⌊i/l⌋} (its own block) and A2 = {j : j mod l >=
l - c} (the last c positions of every block, which summarise it); the paper's autoregressive form adds j <= i, the
bidirectional form (as used for encoders) keeps every block's summary. Defined on whole blocks: the sequence must
be a multiple of `block`. Cost per head O(T · (l + c·T/l)): sub-quadratic by the factor l/c, and O(T^1.5) when l
grows like sqrt(c·T) as in the paper.
Dimension legend: B batch, H query heads, K key/value heads, T sequence length, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.blocked import BlockedPatternKernel, Pieces


@dataclass
class BlockSparseOptions:
    block: int = 128  # l: block length (the sequence length must be a multiple of it)
    summary: int = 8  # c: last positions of each block that every query may see (the paper uses 8-32 of 128)

    def __post_init__(self) -> None:
        if not self.block >= 2:
            raise ConfigError(f"block_sparse: block must be >= 2 tokens, got {self.block}")
        if not 1 <= self.summary < self.block:
            raise ConfigError(
                f"block_sparse: summary must be in [1, block) = [1, {self.block}), got {self.summary} "
                "(summary columns are the last positions of each block; block would make attention dense)"
            )


def check_blocks(name: str, block: int, t: int) -> int:
    """Number of whole blocks in t tokens; a ConfigError when t is not a multiple of block."""
    if t % block:
        raise ConfigError(
            f"attention kernel {name!r} is defined on whole blocks: the sequence length {t} is not a multiple of "
            f"the block size {block}; pad batches to a multiple of {block} (e.g. pad_to_multiple_of) or change block"
        )
    return t // block


class BlockSparse(BlockedPatternKernel):
    """Own block (computed as a block-diagonal span) + the summary columns of all blocks (shared keys)."""

    Options = BlockSparseOptions
    name = "block_sparse"
    causal = True

    def allows(self, qpos, kpos, t, causal):
        l, c = self.options.block, self.options.summary
        ok = (qpos // l == kpos // l) | (kpos % l >= l - c)
        return ok & (kpos <= qpos) if causal else ok

    def pieces(self, t, causal):
        l, c = self.options.block, self.options.summary
        nb = check_blocks(self.name, l, t)
        if nb < 2:
            raise ConfigError(
                f"attention kernel {self.name!r}: a sequence of {t} tokens is a single block of {l}, i.e. dense "
                f"attention; use a block below {t // 2 + 1} or attention_kernel sdpa"
            )
        summary = (torch.arange(nb)[:, None] * l + torch.arange(l - c, l)).reshape(-1)  # (nb·c,)
        return Pieces(l, span=(0, l), shared=summary)
