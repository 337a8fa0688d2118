"""The block stacks of a model: every `layers` ModuleList (encoder, decoder, and the stacks of auxiliary networks
such as ELECTRA's generator). Activation checkpointing, FSDP2 units, tensor parallelism, layer-wise lr decay,
LayerDrop and progressive stacking all find a model's blocks this way, without naming its family."""

from __future__ import annotations

from torch import nn


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(name, stack) for every `layers` ModuleList (encoder, decoder, and the stacks of auxiliary networks such as
    ELECTRA's generator), in model order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers"]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of every layer stack, in model order."""
    return [block for _, stack in block_stacks(model) for block in stack]
