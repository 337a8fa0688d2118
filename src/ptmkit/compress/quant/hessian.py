"""Per-layer Hessian traces by Hutchinson's estimator: Tr(H) = E[v^T H v] for Rademacher v, with H v from a
Hessian-vector product (double backward), so no Hessian is ever formed.

Hutchinson 1990; Avron & Toledo 2011 (Rademacher vectors give the least variance); used per layer as the quantisation
sensitivity by Dong et al. 2020 (HAWQ-V2) and Yao et al. 2020 (PyHessian), the trace form of Shen et al. 2020's
Q-BERT criterion. One product H v with v drawn for every layer's weight at once gives every layer's v_l^T (H v)_l;
its expectation is Tr(H_ll) (the cross terms v_l^T H_lm v_m have mean zero), so all layers cost one double backward.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def hutchinson_traces(model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any], batches: Sequence[Any],
                      params: dict[str, torch.Tensor], samples: int, seed: int = 0) -> dict[str, float]:
    """Estimated trace of the Hessian of loss_fn(model, batch) (averaged over `batches`) with respect to each of
    `params`, from `samples` Rademacher vectors per batch. loss_fn returns the scalar loss, or an objective's
    (loss, metrics), so `objective.loss` serves as it is. The model runs in eval mode (dropout would make each
    product a different function's)."""
    names, tensors = list(params), list(params.values())
    g = torch.Generator(device="cpu").manual_seed(seed)
    totals = torch.zeros(len(names), dtype=torch.float64)
    was_training = model.training
    frozen = [p for p in tensors if not p.requires_grad]  # a frozen weight still has a Hessian: differentiate it
    for p in frozen:
        p.requires_grad_(True)
    model.eval()
    try:
        # the fused CPU attention kernels have no double backward; the math kernel is differentiable twice
        with sdpa_kernel(SDPBackend.MATH):
            for batch in batches:
                loss = loss_fn(model, batch)
                loss = loss[0] if isinstance(loss, tuple) else loss
                grads = torch.autograd.grad(loss, tensors, create_graph=True)
                for _ in range(samples):
                    vs = [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for p in tensors]  # Rademacher
                    hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)  # H v
                    totals += torch.stack([(hv * v).sum().double() for hv, v in zip(hvs, vs)])  # v_l^T (H v)_l
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(False)
    totals /= samples * len(batches)
    return dict(zip(names, totals.tolist()))
