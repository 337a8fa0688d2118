"""Activation (gradient) checkpointing: keep only each checkpointed block's input during the forward pass and
recompute the block's activations in the backward pass (Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost"; survey §6.1). Trades one extra forward of the checkpointed blocks for their activation memory.

Non-reentrant `torch.utils.checkpoint` (the form that works with FSDP2, keyword arguments and blocks whose inputs do
not require grad); the RNG state is saved and restored, so dropout in the recomputation draws the same masks and the
gradients equal those without checkpointing. The block's own `forward` is wrapped on the instance, so parameter
names, state dicts and checkpoints are unchanged, and FSDP2 / tensor-parallel hooks (which live on `__call__`)
stay outside the recomputed region.
"""

from __future__ import annotations

import types

from torch import nn
from torch.utils.checkpoint import checkpoint

from ptmkit.config import ConfigError
from ptmkit.nn.stacks import block_stacks, transformer_blocks

_MARK = "_ptmkit_checkpointed"
# An outer per-block wrapper (LayerDrop, train/layer_drop.py) keeps the forward it calls in this attribute;
# checkpointing installs itself there, beneath the outer wrapper, whichever was applied first.
INNER_FORWARD = "_ptmkit_inner_forward"


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> int:
    """Checkpoint blocks 0, k, 2k, ... of each stack (every=1: all blocks); returns how many were wrapped.

    Checkpointing every k-th block keeps the activations of the others: memory falls by about 1/k of the full
    saving, and so does the recompute time (selective checkpointing)."""
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"activation checkpointing: every must be an integer >= 1 (1 = every block), got {every!r}")
    wrapped = 0
    for _, stack in block_stacks(model):
        for i, block in enumerate(stack):
            if i % every == 0 and not getattr(block, _MARK, False):
                _wrap(block)
                wrapped += 1
    if wrapped == 0 and not any(getattr(b, _MARK, False) for b in transformer_blocks(model)):
        raise ConfigError(f"activation checkpointing: {type(model).__name__} has no `layers` block stack to checkpoint")
    return wrapped


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward.__get__(self)  # the class's forward (FSDP2 subclasses keep it)
    if not self.training:  # evaluation and generation: nothing is kept for backward anyway
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _wrap(block: nn.Module) -> None:
    # A bound method rather than a closure: copy.deepcopy rebinds it to the copy (a closure would keep calling the
    # original block).
    wrapped = types.MethodType(_checkpointed_forward, block)
    if INNER_FORWARD in block.__dict__:  # under LayerDrop: its skip decision stays outside the recomputed region
        setattr(block, INNER_FORWARD, wrapped)
    else:
        block.forward = wrapped
    setattr(block, _MARK, True)


def is_checkpointed(block: nn.Module) -> bool:
    return bool(getattr(block, _MARK, False))
