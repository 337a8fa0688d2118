"""LAMB: Adam with a layer-wise trust ratio (You et al. 2020, "Large Batch Optimization for Deep Learning: Training
BERT in 76 minutes", Algorithm 2; survey §6.1). Lets BERT pre-train with batches of 32k-64k sequences at one lr.

Per parameter tensor w (a "layer" in the paper) with gradient g at step t:

    m = β1·m + (1-β1)·g                 v = β2·v + (1-β2)·g²          (Adam moments)
    r = (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε)                     (bias-corrected Adam direction)
    u = r + λ·w                                                       (decoupled weight decay, as AdamW)
    w ← w - lr · φ(‖w‖ / ‖u‖) · u                                     (trust ratio, 1 if either norm is 0)

so every tensor moves by lr·‖w‖ per step whatever the scale of its gradient: the relative step is the same in every
layer, which is what a single global lr cannot give Adam once the batch (and so the lr) grows large. φ is the
identity, optionally clamped from above (`max_trust`), the paper's φ(z) = min(z, γ_u).
"""

from __future__ import annotations

import math

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB with per-group `lr`, `betas`, `eps`, `weight_decay`, `max_trust` and `layer_adaptation`.

    `layer_adaptation=False` gives a group plain AdamW steps (trust ratio 1). Google's reference LAMB
    (`exclude_from_layer_adaptation`, defaulting to the weight-decay exclusions) does this for biases and LayerNorm
    parameters: a bias starts at 0, so its trust ratio would stay tiny and the bias would barely move.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_trust: float | None = None, layer_adaptation: bool = True):
        if not lr > 0:
            raise ValueError(f"Lamb: lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Lamb: betas must be two numbers in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"Lamb: eps must be positive, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"Lamb: weight_decay must be >= 0, got {weight_decay}")
        if max_trust is not None and not max_trust > 0:
            raise ValueError(f"Lamb: max_trust must be positive or None (no clamp), got {max_trust}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_trust=max_trust,
                        layer_adaptation=layer_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:  # e.g. a block that LayerDrop skipped this step: no update, no moment decay
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients; use dense embeddings")
                state = self.state[p]
                if not state:
                    # a tensor step, like torch.optim.Adam's, so the two optimizers' state dicts look alike
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(int(state["step"].item()))
            if params:
                _update(group, params, grads, exp_avgs, exp_avg_sqs, steps)
        return loss


def _update(group: dict, params, grads, exp_avgs, exp_avg_sqs, steps: list[int]) -> None:
    """One LAMB step for a group's parameters, each op applied to the whole list at once (torch._foreach_*)."""
    beta1, beta2 = group["betas"]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = β1·m + (1-β1)·g
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)  # v = β2·v + (1-β2)·g²
    # bias corrections differ per tensor when some parameters skipped steps (no gradient)
    bias1 = [1 - beta1 ** s for s in steps]
    bias2_sqrt = [math.sqrt(1 - beta2 ** s) for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, group["eps"])  # sqrt(v̂) + ε
    updates = torch._foreach_div(exp_avgs, denom)
    torch._foreach_div_(updates, bias1)  # r = m̂ / (sqrt(v̂) + ε)
    if group["weight_decay"]:
        torch._foreach_add_(updates, params, alpha=group["weight_decay"])  # u = r + λ·w
    if group["layer_adaptation"]:
        torch._foreach_mul_(updates, trust_ratios(params, updates, group["max_trust"]))
    torch._foreach_add_(params, updates, alpha=-group["lr"])


def trust_ratios(params, updates, max_trust: float | None = None) -> list[torch.Tensor]:
    """‖w‖ / ‖u‖ per tensor as 0-d tensors on each tensor's device (no host sync); 1 where either norm is 0 (a
    zero-initialised bias, or a tensor whose update vanished), optionally clamped at max_trust."""
    w_norms = torch._foreach_norm(params)
    u_norms = torch._foreach_norm(updates)
    ratios = []
    for w, u in zip(w_norms, u_norms):
        ratio = torch.where((w > 0) & (u > 0), w / u, torch.ones_like(w))
        ratios.append(ratio.clamp(max=max_trust) if max_trust is not None else ratio)
    return ratios
