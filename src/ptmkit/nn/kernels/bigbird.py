"""BigBird attention: a window of blocks, global blocks and random blocks (the ITC form, bidirectional).

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" §2 and App. D (blocked implementation): with
block size b, query block i sees key blocks i-w..i+w (window), the first and last `num_global_blocks` blocks
(global: they also see every key and are seen by every query — "internal transformer construction", ITC), and
`num_random_blocks` key blocks drawn at random per query block outside its window and the global blocks. The
random draw is a function of (seed, number of blocks), made once and cached, so `pattern()` reproduces exactly
what forward computes; `seed_layers(model)`, which ptmkit.models.build_model calls, gives each layer its own draw
(BigBird draws per layer). Defined on
whole blocks (the sequence must be a multiple of block). Cost per head O(T · b · (2w + 1 + 2g + r)).
Bidirectional only: global blocks at the end of the sequence would let early queries see the future.
Dimension legend: B batch, H query heads, K key/value heads, T sequence length, D head dim, nb blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.block_sparse import check_blocks
from ptmkit.nn.kernels.blocked import BlockedPatternKernel, Pieces


@dataclass
class BigBirdOptions:
    block: int = 64  # b: block size in tokens (BigBird uses 64)
    window_blocks: int = 1  # w: neighbouring blocks on each side (BigBird: 3 window blocks = own ± 1)
    num_global_blocks: int = 1  # g: global blocks at each end (first g and last g blocks)
    num_random_blocks: int = 3  # r: random key blocks per query block (BigBird uses 3)
    seed: int = 0  # seed of the random blocks (layer i of a built model uses seed + i: seed_layers)

    def __post_init__(self) -> None:
        bad = []
        if not self.block >= 1:
            bad.append(f"block must be >= 1, got {self.block}")
        if not self.window_blocks >= 0:
            bad.append(f"window_blocks must be >= 0, got {self.window_blocks}")
        if not self.num_global_blocks >= 0:
            bad.append(f"num_global_blocks must be >= 0, got {self.num_global_blocks}")
        if not self.num_random_blocks >= 0:
            bad.append(f"num_random_blocks must be >= 0, got {self.num_random_blocks}")
        if bad:
            raise ConfigError("bigbird: " + "; ".join(bad))


class BigBird(BlockedPatternKernel):
    """Window blocks (a span), random blocks (gathered per query block), global key blocks (shared), global
    query blocks (dense rows)."""

    Options = BigBirdOptions
    name = "bigbird"
    causal = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.seed = self.options.seed
        self._random: dict[int, torch.Tensor] = {}  # nb -> (nb, nb) bool: random key blocks of each query block

    def reseed(self, seed: int) -> None:
        """Use another random draw (per layer); forgets the cached patterns."""
        self.seed = seed
        self._random.clear()
        self._layouts.clear()

    def is_global(self, blk: torch.Tensor, nb: int) -> torch.Tensor:
        g = self.options.num_global_blocks
        return (blk < g) | (blk >= nb - g)

    def random_blocks(self, nb: int) -> torch.Tensor:
        """(nb, nb) bool: R[i, j] = query block i attends to key block j as one of its random blocks."""
        r = self._random.get(nb)
        if r is not None:
            return r
        w, nr = self.options.window_blocks, self.options.num_random_blocks
        blk = torch.arange(nb)
        row_global, col_global = self.is_global(blk, nb)[:, None], self.is_global(blk, nb)[None, :]
        candidate = ~col_global & ((blk[:, None] - blk[None, :]).abs() > w)  # (nb, nb): outside window and globals
        available = int(candidate[~row_global[:, 0]].sum(1).min()) if bool((~row_global).any()) else 0
        if nr > available:
            raise ConfigError(
                f"attention kernel 'bigbird': num_random_blocks {nr} is more than the {available} key blocks some "
                f"query block has outside its window (±{w}) and the {2 * self.options.num_global_blocks} global "
                f"blocks at {nb} blocks of {self.options.block}; lower num_random_blocks or window_blocks, or use "
                "longer sequences"
            )
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + nb)
        u = torch.rand(nb, nb, generator=gen).masked_fill(~candidate, 2.0)  # (nb, nb): non-candidates last
        pick = u.topk(nr, dim=1, largest=False).indices  # (nb, r): r distinct random candidates per row
        r = torch.zeros(nb, nb, dtype=torch.bool).scatter_(1, pick, True) & candidate & ~row_global
        self._random[nb] = r
        return r

    def allows(self, qpos, kpos, t, causal):
        b, w = self.options.block, self.options.window_blocks
        nb = t // b
        qb, kb = qpos // b, kpos // b
        rand = self.random_blocks(nb).to(qpos.device)[qb, kb]
        return self.is_global(qb, nb) | self.is_global(kb, nb) | ((qb - kb).abs() <= w) | rand

    def pieces(self, t, causal):
        b, w, g, nr = (self.options.block, self.options.window_blocks, self.options.num_global_blocks,
                       self.options.num_random_blocks)
        nb = check_blocks(self.name, b, t)
        if 2 * g >= nb:
            raise ConfigError(
                f"attention kernel 'bigbird': {g} global blocks at each end cover all {nb} blocks of {b} tokens "
                f"({t} tokens), i.e. dense attention; lower num_global_blocks below {(nb + 1) // 2} or use sdpa"
            )
        if 2 * w + 1 >= nb:
            raise ConfigError(
                f"attention kernel 'bigbird': a window of ±{w} blocks spans all {nb} blocks of {b} tokens ({t} "
                f"tokens); lower window_blocks below {(nb - 1) // 2} or use sdpa"
            )
        blk = torch.arange(nb)
        gathered = None
        if nr:
            pick = self.random_blocks(nb).float().topk(nr, dim=1).indices  # (nb, r); global rows: arbitrary
            gathered = (pick[:, :, None] * b + torch.arange(b)).reshape(nb, nr * b)  # (nb, r·b) key positions
        global_blocks = blk[self.is_global(blk, nb)]  # (2g,)
        shared = (global_blocks[:, None] * b + torch.arange(b)).reshape(-1) if g else None  # (2g·b,)
        return Pieces(b, span=(-w * b, (2 * w + 1) * b), gathered=gathered, shared=shared,
                      global_rows=shared)


def seed_layers(model: nn.Module) -> int:
    """Give the i-th BigBird kernel of `model` (module order) the seed options.seed + i; returns how many.

    Deterministic from the architecture alone, so a model rebuilt and reloaded from its directory draws the same
    random blocks in every layer.
    """
    kernels = [m for m in model.modules() if isinstance(m, BigBird)]
    for i, kernel in enumerate(kernels):
        kernel.reseed(kernel.options.seed + i)
    return len(kernels)
