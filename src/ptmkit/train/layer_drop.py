"""LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with Structured Dropout") and Progressive Layer
Dropping (Zhang & He 2020, "Accelerating Training of Transformer-Based Language Models with Progressive Layer
Dropping"; survey §6.1): during training, skip whole Transformer blocks at random; a skipped block costs nothing.

LayerDrop drops every block with the same probability p (a regulariser that also makes the model prunable to any
depth at inference). PLD drops more as training goes on and deeper in the stack, to save time: block l (1-based) of
a stack of L is dropped with probability

    p_l(t) = (l / L) · (1 - θ(t)),    θ(t) = (1 - θ̄) · exp(-γ t) + θ̄      (keep probability of the top block)

so nothing is dropped at t = 0 and the expected kept fraction of a stack tends to 1 - (1 - θ̄)(L + 1) / (2L).

Mechanics: each block's `forward` is wrapped on the instance (as parallel/activation_checkpoint.py does), so parameter
names, state dicts and checkpoints are unchanged. In training mode a block is skipped with one Bernoulli draw per
block per forward pass (the whole batch skips it together, which is what saves the compute), drawn from the
controller's own generator, re-seeded from (seed, step) by `step(t)`: a seeded run is reproducible, a resumed one
draws what the uninterrupted run drew, and every rank of a distributed run draws the same decisions; in eval mode every block runs. A skipped block returns its first argument, so only blocks that map
their input to an output of the same shape can be skipped (BERT, RoBERTa, ELECTRA, GPT-2, LLaMA, T5, BART blocks; not
XLNet's two-stream layers); anything else is an error at its first training call.

Pre-LN vs Post-LN (Zhang & He §4): PLD was proposed together with a Pre-LN "switchable Transformer" block, motivated by
the instability of Post-LN BERT training. In a Pre-LN block x + f(LN(x)) a skip is just f = 0, an identity on the
residual stream, close to what the block computes when its update f is small. A Post-LN block LN(x + f(x)) has
no identity path through it (its LayerNorms re-scale every output), so a skip changes more. This module drops blocks
of either kind; expect Pre-LN families (GPT-2, LLaMA, T5) to tolerate aggressive settings better, and keep θ̄ high
on BERT.

Distributed use: the decisions depend only on (seed, step, call order), so all ranks skip the same blocks — which
FSDP2's per-block all-gathers and tensor-parallel all-reduces require. DDP still sees the skipped blocks' parameters
unused in a step and is built with find_unused_parameters (ptmkit.parallel.apply).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.stacks import block_stacks
from ptmkit.parallel.activation_checkpoint import INNER_FORWARD

_PROB = "_ptmkit_drop_prob"  # the block's current drop probability, set by LayerDrop.step
_CHECKED = "_ptmkit_drop_checked"  # the block's output was seen to have its input's shape
_GEN = "_ptmkit_drop_generator"  # the controller's generator, shared by its blocks

SCHEDULES = ("none", "constant", "progressive")


@dataclass
class LayerDropConfig:
    schedule: Literal["none", "constant", "progressive"] = "none"  # none | constant (LayerDrop) | progressive (PLD)
    rate: float = 0.2  # constant: every block's drop probability (Fan et al. use 0.1-0.2)
    theta_bar: float = 0.5  # progressive: the keep probability θ(t) decays to (Zhang & He; DeepSpeed's default)
    gamma: float = 0.001  # progressive: θ(t)'s decay rate per optimizer step (DeepSpeed's default)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"layer_drop: schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.rate < 1:
            raise ConfigError(f"layer_drop: rate must be in [0, 1) (Fan et al. use 0.1-0.2), got {self.rate}")
        if not 0 < self.theta_bar <= 1:
            raise ConfigError(f"layer_drop: theta_bar must be in (0, 1] (1 = never drop; DeepSpeed defaults to "
                              f"0.5), got {self.theta_bar}")
        if self.gamma < 0:
            raise ConfigError(f"layer_drop: gamma must be >= 0 (DeepSpeed defaults to 0.001), got {self.gamma}")


class LayerDrop:
    """The drop probabilities of a model's wrapped blocks. Call `step(t)` with the 0-based optimizer step before
    each step's forward passes (PLD's probabilities change with t; for a constant rate it changes nothing)."""

    def __init__(self, stacks: list[nn.ModuleList], cfg: LayerDropConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.generator = torch.Generator()
        # (block, l, L): 1-based position in its own stack, and that stack's depth (an encoder-decoder's encoder and
        # decoder count separately)
        self.blocks = [(block, i + 1, len(stack)) for stack in stacks for i, block in enumerate(stack)]
        self.t = 0
        self.step(0)

    def theta(self, t: int) -> float:
        """PLD's keep probability of the top block at step t: (1 - θ̄)·exp(-γt) + θ̄."""
        return (1 - self.cfg.theta_bar) * math.exp(-self.cfg.gamma * t) + self.cfg.theta_bar

    def drop_probability(self, layer: int, depth: int, t: int) -> float:
        if self.cfg.schedule == "constant":
            return self.cfg.rate
        if self.cfg.schedule == "progressive":
            return layer / depth * (1 - self.theta(t))
        return 0.0

    def step(self, t: int) -> None:
        self.t = t
        self.generator.manual_seed(self.seed * 1_000_003 + t)  # a function of (seed, step): resumable, rank-agnostic
        for block, layer, depth in self.blocks:
            setattr(block, _PROB, self.drop_probability(layer, depth, t))
            setattr(block, _GEN, self.generator)

    @property
    def probabilities(self) -> list[float]:
        """Current drop probability of each wrapped block, in model order."""
        return [getattr(block, _PROB) for block, _, _ in self.blocks]

    def expected_kept_fraction(self) -> float:
        """Expected fraction of the wrapped blocks that run in a training forward pass now (1.0 with none)."""
        probs = self.probabilities
        return 1.0 - sum(probs) / len(probs) if probs else 1.0


def apply_layer_drop(model: nn.Module, cfg: LayerDropConfig, seed: int = 0) -> LayerDrop:
    """Wrap every block of every `layers` stack of `model` (schedule none: none) and return the controller.

    Apply it to the single-device model before parallelisation, in either order with activation checkpointing."""
    if cfg.schedule == "none":
        return LayerDrop([], cfg, seed)
    stacks = [stack for _, stack in block_stacks(model)]
    if not stacks:
        raise ConfigError(f"layer_drop: {type(model).__name__} has no `layers` block stack to drop blocks from; "
                          "set layer_drop.schedule: none")
    for stack in stacks:
        for block in stack:
            if hasattr(block, _PROB):
                raise ConfigError(f"layer_drop: {type(block).__name__} already has layer drop applied; apply it once")
            # keep whatever forward was installed before (activation checkpointing) and call it beneath the decision
            setattr(block, INNER_FORWARD, block.__dict__.get("forward"))
            block.forward = types.MethodType(_layer_drop_forward, block)  # bound: deepcopy rebinds it to the copy
            setattr(block, _CHECKED, False)
    return LayerDrop(stacks, cfg, seed)


def _layer_drop_forward(self: nn.Module, *args, **kwargs):
    inner = getattr(self, INNER_FORWARD) or type(self).forward.__get__(self)
    if not self.training:  # evaluation and generation use the whole model
        return inner(*args, **kwargs)
    if not args or not isinstance(args[0], torch.Tensor):
        raise ConfigError(f"layer_drop: {type(self).__name__} was called without a tensor as its first positional "
                          "argument, so there is no input to return when the block is skipped")
    x = args[0]
    p = getattr(self, _PROB)
    skip = p > 0 and bool(torch.rand((), generator=getattr(self, _GEN)) < p)  # one draw for the whole batch
    if skip and getattr(self, _CHECKED):
        return x
    if skip:  # first call: run the block once, without autograd, only to check that skipping is valid
        with torch.no_grad():
            _check_same_shape(self, x, inner(*args, **kwargs))
        return x
    out = inner(*args, **kwargs)
    _check_same_shape(self, x, out)
    return out


def _check_same_shape(block: nn.Module, x: torch.Tensor, out) -> None:
    if getattr(block, _CHECKED):
        return
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"layer_drop: {type(block).__name__} maps an input of shape {tuple(x.shape)} to {got}; a "
                          "skipped block returns its input, so layer drop needs blocks whose output is one tensor "
                          "shaped like their first input (XLNet's two-stream layers are not); set "
                          "layer_drop.schedule: none for this model")
    setattr(block, _CHECKED, True)
