"""What one forward pass of a model did, caught by hooks: the call (arguments), its output with every layer's hidden
states, and the inputs of each self-attention kernel (queries, keys, values after rotary, mask, scale).

Distillation needs the student's intermediate states from the very forward pass its task loss runs (a second pass
would double the cost and draw other dropout), and the teacher must see exactly the same call (the same masked
positions scored, the same padding); attention analysis needs the attention probabilities of any family. Hooks give
all of it without a recording-only code path in any model: outside the context nothing is attached, so the model
runs exactly as it always does (and SDPA never materialises the probabilities).

Dimension legend: B batch, H query heads, K key/value heads, T queries, S keys, D head size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptmkit.models.registry import backbone_of
from ptmkit.nn.attention import SelfAttention


@dataclass
class KernelCall:
    """One self-attention kernel call: q (B, H, T, D), k and v (B, K, S, D), mask (bool: True = may attend, or
    additive float) or None, causal flag, softmax scale."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    causal: bool
    scale: float

    def allowed(self) -> torch.Tensor:
        """bool (B|1, 1, T|1, S): which keys each query may attend to."""
        t, s = self.q.shape[-2], self.k.shape[-2]
        ok = torch.ones(1, 1, 1, s, dtype=torch.bool, device=self.q.device)
        if self.mask is not None:
            ok = ok & (self.mask if self.mask.dtype == torch.bool else self.mask > torch.finfo(self.mask.dtype).min / 2)
        if self.causal:
            ok = ok & torch.ones(t, s, dtype=torch.bool, device=self.q.device).tril(diagonal=s - t)
        return ok

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """Keys or values (B, K, S, D) repeated for every query head of their group: (B, H, S, D)."""
        g = self.q.shape[1] // x.shape[1]
        return x if g == 1 else x.repeat_interleave(g, dim=1)

    def scores(self) -> torch.Tensor:
        """Attention logits q k^T * scale, (B, H, T, S), before masking (a masked entry is meaningless) and before
        any additive position bias (T5's relative bias travels in a float mask: see logits)."""
        return self.q @ self.expanded(self.k).transpose(-1, -2) * self.scale

    def logits(self) -> torch.Tensor:
        """What the kernel softmaxes, (B, H, T, S) in fp32: the scores plus an additive float mask (T5's relative
        position bias), -inf where a query may not attend."""
        with torch.autocast(self.q.device.type, enabled=False):
            x = self.q.float() @ self.expanded(self.k).float().transpose(-1, -2) * self.scale
        if self.mask is not None and self.mask.dtype != torch.bool:
            x = x + self.mask.float()
        return x.masked_fill(~self.allowed(), float("-inf"))

    def probs(self) -> torch.Tensor:
        """The attention probabilities, (B, H, T, S): each row sums to 1 over the keys its query may see."""
        return self.logits().softmax(-1)


@dataclass
class Recording:
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    kernels: list[KernelCall] = field(default_factory=list)
    calls: int = 0

    @property
    def logits(self) -> torch.Tensor:
        return self.output.logits

    @property
    def hidden_states(self) -> tuple[torch.Tensor, ...]:
        """The embeddings' output, then each layer's: num_layers + 1 tensors (B, T, H)."""
        return self.output.hidden_states


def self_attentions(model: nn.Module) -> list[SelfAttention]:
    """The self-attention modules of the model's blocks, in layer order: an encoder-decoder's encoder layers first,
    then its decoder's ([] for a backbone without such stacks)."""
    bb = backbone_of(model)
    stacks = [bb.layers] if isinstance(getattr(bb, "layers", None), nn.ModuleList) else [
        s.layers for s in (getattr(bb, "encoder", None), getattr(bb, "decoder", None))
        if isinstance(getattr(s, "layers", None), nn.ModuleList)]
    return [m for layers in stacks for m in layers.modules() if isinstance(m, SelfAttention)]


class record:
    """`with record(model, attention=True) as rec: model(...)` fills rec; the model is called with
    output_hidden_states=True. Used once per step for the student (inside its task loss) and for the teacher."""

    def __init__(self, model: nn.Module, attention: bool = False):
        self.model, self.attention = model, attention
        self.rec = Recording()
        self._handles: list = []

    def __enter__(self) -> Recording:
        rec = self.rec

        def before(module, args, kwargs):
            rec.calls += 1
            rec.args, rec.kwargs = args, {k: v for k, v in kwargs.items() if k != "output_hidden_states"}
            rec.kernels.clear()  # only the last call's kernels: they must match its hidden states
            return args, {**kwargs, "output_hidden_states": True}

        def after(module, args, kwargs, output):
            rec.output = output

        self._handles = [self.model.register_forward_pre_hook(before, with_kwargs=True),
                         self.model.register_forward_hook(after, with_kwargs=True)]
        if self.attention:
            def kernel_inputs(module, args):
                q, k, v, mask, causal, _, scale = args
                rec.kernels.append(KernelCall(q, k, v, mask, bool(causal), float(scale)))

            self._handles += [a.kernel.register_forward_pre_hook(kernel_inputs) for a in self_attentions(self.model)]
        return rec

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
