"""Feature-based transfer: the pre-trained model stays frozen and only a head on its features is trained.

The survey's first way of using a PTM (word2vec, ELMo): Peters et al. 2018, "Deep contextualized word
representations" (ELMo §3.2), take a task-specific softmax-weighted mix of every layer's states, scaled by gamma,
as the features; without the mix the features are the last layer's. The head is a linear map (a probe) or an MLP
(dense, tanh, dense: BERT's classifier head). It replaces the task model's own head (which is frozen and unused),
so the base model's weights are never touched and the head travels in the adapter.

For sequence classification (one vector per sequence: the first token, the masked mean, or for decoders the last
real token) and token classification (every position). Not identity at initialisation; not mergeable.

Dimension legend: B batch, T length, H hidden size, L layers (+1 for the embeddings), C classes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError
from ptmkit.models.pooling import pool
from ptmkit.nn.stacks import block_stacks

ATTR = "feature_head"  # on the task model
TASKS = ("sequence-classification", "token-classification")


@dataclass
class FeatureConfig:
    head: str = "linear"  # linear (a probe) | mlp (dense, tanh, dense)
    mix: bool = False  # ELMo's scalar mix of every layer instead of the last layer alone
    pooling: str = "auto"  # sequence tasks: auto (the model's own: cls for encoders, last token for decoders) | cls | mean | last
    dropout: float = 0.1  # on the pooled features, before the head

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"feature: head must be linear or mlp, got {self.head!r}")
        if self.pooling not in ("auto", "cls", "mean", "last"):
            raise ConfigError(f"feature: pooling must be auto, cls, mean or last, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"feature: dropout must be in [0, 1), got {self.dropout}")


class ScalarMix(nn.Module):
    """gamma * sum_j softmax(w)_j h_j over the embeddings and every layer's output (ELMo eq. 1)."""

    def __init__(self, n: int, like: torch.Tensor):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n, dtype=like.dtype, device=like.device))  # uniform at start
        self.gamma = nn.Parameter(torch.ones((), dtype=like.dtype, device=like.device))

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights.softmax(0)
        return self.gamma * sum(wi * h for wi, h in zip(w, states))  # (B, T, H)


def _last_token(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return h[:, -1]
    idx = (mask.bool() * torch.arange(h.shape[1], device=h.device)).argmax(-1)  # (B,) last real token
    return h[torch.arange(h.shape[0], device=h.device), idx]  # (B, H)


class FeatureHead(base.Delta):
    """Runs around the task model: asks for every layer's states when mixing, then replaces the logits."""

    hook = "around"  # before() asks for every layer's states, after() replaces the logits

    def __init__(self, model: nn.Module, cfg: FeatureConfig, n_states: int):
        super().__init__()
        bb = model.backbone
        hidden, like = bb.config.hidden_size, next(model.parameters())
        opts = dict(dtype=like.dtype, device=like.device)
        self.task = model.task
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if bb.causal else
                                                                  getattr(model, "pooling", "cls"))
        self.mix = ScalarMix(n_states, like) if cfg.mix else None
        self.drop = nn.Dropout(cfg.dropout)
        self.dense = nn.Linear(hidden, hidden, **opts) if cfg.head == "mlp" else None
        self.out = nn.Linear(hidden, model.num_labels, **opts)
        for m in (self.dense, self.out):
            if m is not None:
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.signature = inspect.signature(model.forward)
        object.__setattr__(self, "mask", None)  # this call's padding mask (transient, not a buffer)
        self.asked = False  # whether the caller asked for hidden states itself

    def before(self, module, args, kwargs):
        if not self.enabled:
            return None
        bound = self.signature.bind(*args, **kwargs)
        object.__setattr__(self, "mask", bound.arguments.get("attention_mask"))
        if self.mix is None:
            return None
        a = bound.arguments
        self.asked = bool(a.get("output_hidden_states") or a.get("kwargs", {}).get("output_hidden_states"))
        if "output_hidden_states" in self.signature.parameters:
            a["output_hidden_states"] = True
        else:
            a.setdefault("kwargs", {})["output_hidden_states"] = True
        return bound.args, bound.kwargs

    def features(self, out) -> torch.Tensor:
        if self.mix is not None:
            if out.hidden_states is None or len(out.hidden_states) != self.mix.weights.numel():
                raise ConfigError("feature: the model returned no per-layer states to mix")
            h = self.mix(list(out.hidden_states))  # (B, T, H)
        else:
            h = out.last_hidden_state  # (B, T, H)
        if self.task == "token-classification":
            return h
        if self.pooling == "last":
            return _last_token(h, self.mask)
        return pool(h, self.mask, self.pooling)  # (B, H)

    def after(self, module, args, kwargs, out):
        if not self.enabled:
            return None
        x = self.drop(self.features(out))
        if self.dense is not None:
            x = self.drop(torch.tanh(self.dense(x)))
        out.logits = self.out(x)  # (B, C) or (B, T, C)
        if self.mix is not None and not self.asked:
            out.hidden_states = None
        return out


def apply(model: nn.Module, cfg: FeatureConfig) -> nn.Module:
    task = getattr(model, "task", None)
    if task not in TASKS:
        raise ConfigError(f"feature: feature-based transfer trains a classifier on frozen features; this is a {task} "
                          f"model (load it for one of {TASKS})")
    stacks = block_stacks(model.backbone)
    if cfg.mix and len(stacks) != 1:
        raise ConfigError(f"feature: the scalar mix needs one stack of layers; {type(model.backbone).__name__} has "
                          f"{len(stacks)}")
    base.register(model, "feature", cfg)
    n_states = len(stacks[0][1]) + 1 if stacks else 1  # the embeddings, then each layer
    base.attach(base.Site("", model), ATTR, FeatureHead(model, cfg, n_states))
    return model
