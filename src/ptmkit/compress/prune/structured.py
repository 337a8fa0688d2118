"""What the structured pruning methods share (heads.py, ffn.py, layers.py): the targets, the count to remove, the
gradient importance of gated units (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"), and the report.

Structured pruning removes whole units — attention heads, feed-forward neurons, blocks — physically: the matrices get
smaller (ptmkit.nn.feedforward.PrunableUnits does the surgery), so the pruned model is faster, not only sparser.

Rounding rule (every method): a fraction f of N units removes exactly ⌊f·N⌋ of them, never more than asked (a product
within 1e-9 of an integer counts as that integer, so 0.29 of 100 is 29 despite floating point). Each report states
what was reached: removed / total, exactly.

Dimension legend: B batch, T length, U units of a module (heads, neurons), S a unit's width (head dim D, or 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.targets import match_modules

REPORTS = "_ptmkit_structured_pruning"  # model attribute: the PruneReports of the methods applied, in order

# A loss of the model on one batch: a scalar tensor, or (loss, metrics) as an objective's `loss(model, batch)` returns.
LossFn = Callable[[nn.Module, Any], Any]


@dataclass
class PruneReport:
    """What one structured pruning call did, exactly."""

    method: str  # "heads" | "ffn" | "layers"
    unit: str  # what was counted: "head", "neuron", "layer"
    total: int  # units in the targeted modules before the call
    removed: int
    requested: float | None  # the fraction asked for (None: a list of layers)
    parameters_before: int  # whole model, shared tensors counted once
    parameters_after: int
    kept: dict[str, list[int]] = field(default_factory=dict)  # module name -> kept units (indices before the call)

    @property
    def fraction(self) -> float:
        """The sparsity reached, in units: removed / total."""
        return self.removed / self.total if self.total else 0.0

    @property
    def parameter_fraction(self) -> float:
        """The share of the model's parameters removed."""
        return 1.0 - self.parameters_after / self.parameters_before


def reports(model: nn.Module) -> list[PruneReport]:
    """The reports of every structured pruning applied to `model`, in order."""
    return list(getattr(model, REPORTS, []))


def record(model: nn.Module, report: PruneReport) -> None:
    if not hasattr(model, REPORTS):
        object.__setattr__(model, REPORTS, [])  # a plain attribute, not a submodule or buffer
    getattr(model, REPORTS).append(report)


def check_fraction(where: str, fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{where}: fraction must be in [0, 1) (the share of units to remove; 1 would remove them "
                          f"all), got {fraction}")


def count_to_remove(fraction: float, total: int) -> int:
    """⌊fraction · total⌋: the rounding rule of every structured method (see the module docstring)."""
    return math.floor(fraction * total + 1e-9)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def match_targets(model: nn.Module, patterns: Sequence[str], types: tuple[type, ...],
                  method: str) -> list[tuple[str, Any]]:
    """(name, module) of each module of `types` that `patterns` match, in model order, through the one target matcher
    (ptmkit.nn.targets; a pattern that matches nothing is an error listing what the model has). A model carrying
    delta-tuning modules is refused: their parameters are shaped by the units this would remove."""
    deltas = [n for n, m in model.named_modules() if getattr(m, "is_delta", False)]
    if deltas:
        raise ConfigError(f"{method}: the model carries delta-tuning modules (e.g. {deltas[0]}) sized for the units "
                          "pruning removes; merge them into the weights (ptmkit.adapt.merge) and remove them, or prune "
                          "before attaching them")
    try:
        return match_modules(model, list(patterns), types=types)
    except ConfigError as e:
        raise ConfigError(f"{method}: {e}; set `targets` to patterns that name them") from None


def loss_value(out: Any) -> torch.Tensor:
    """The scalar loss of `loss_fn`'s result: a tensor, or the first item of (loss, metrics)."""
    loss = out[0] if isinstance(out, (tuple, list)) else out
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise ConfigError(f"loss_fn must return a scalar loss tensor (or (loss, metrics)), got {type(loss).__name__}")
    return loss


def materialise(batches: Iterable[Any] | None, loss_fn: LossFn | None, method: str) -> list[Any]:
    """The batches as a list (importance may be computed several times); both must be given."""
    if loss_fn is None or batches is None:
        raise ConfigError(f"{method}: gradient importance needs `loss_fn(model, batch) -> loss` and a few `batches` "
                          "(e.g. an objective's loss and some training batches)")
    batches = list(batches)
    if not batches:
        raise ConfigError(f"{method}: `batches` is empty; give at least one batch to estimate importance on")
    return batches


def _gate_input(gate: torch.Tensor, width: int):
    """A forward pre-hook that multiplies the module's input, U units of `width` features, by one gate per unit."""

    def hook(module, args):
        x = args[0]  # (B, T, U*S)
        gated = (x.unflatten(-1, (gate.numel(), width)) * gate.to(x.dtype)[:, None]).flatten(-2)  # (B, T, U*S)
        return (gated, *args[1:])

    return hook


def gate_importance(model: nn.Module, readers: Sequence[tuple[nn.Module, int, int]], loss_fn: LossFn,
                    batches: Sequence[Any], gates: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Michel et al. 2019 §4.1: each unit's output is multiplied by a gate ξ = 1 and its importance is the expected
    absolute sensitivity of the loss to the gate, I = E_x |∂L(x)/∂ξ| — by the chain rule the sum over positions of
    (unit output · ∂L/∂unit output), the first-order change of the loss when the unit is masked. `readers`: (the module
    that reads the units' outputs as its input — attention's `out`, a feed-forward's `down` —, U units, S features
    each). `gates`: their values (default 1; 0 masks a unit removed in an earlier round). Returns per reader a (U,)
    tensor, the mean over batches of |∂L/∂ξ|. The model runs in eval mode (no dropout) and its parameters' .grad are
    left untouched."""
    values = gates if gates is not None else [torch.ones(u) for _, u, _ in readers]
    gates = [v.detach().clone().float().requires_grad_() for v in values]
    handles = [m.register_forward_pre_hook(_gate_input(g, s)) for (m, _, s), g in zip(readers, gates)]
    was_training = model.training
    model.eval()
    total = [torch.zeros(u) for _, u, _ in readers]
    try:
        for batch in batches:
            grads = torch.autograd.grad(loss_value(loss_fn(model, batch)), gates, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:  # a unit the loss does not read (a decoder-only loss on an encoder-decoder)
                    t.add_(g.abs())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [t / len(batches) for t in total]


def normalise_per_layer(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Michel et al. 2019 §4.1 (after Molchanov et al. 2017): divide each layer's importances by their l2 norm, so
    that layers are compared on equal terms when units are ranked globally."""
    return [s / (s.norm(p=2) + 1e-20) for s in scores]


def magnitude_importance(module: Any) -> torch.Tensor:
    """(U,) the product of the l2 norms of each unit's input weights (the rows it is computed from: up, or a SwiGLU's
    gate and up rows together) and output weights (its down column). With a positively homogeneous activation (ReLU)
    scaling a unit's input by c and its output by 1/c leaves the function unchanged; so does the product."""
    u = module.num_units
    score = torch.ones(u)
    with torch.no_grad():
        for name, (dim, index) in module.unit_slices(torch.arange(u)).items():
            if name.endswith(".weight"):
                w = module.get_parameter(name).index_select(dim, index).movedim(dim, 0).reshape(u, -1)  # (U, ...)
                score *= w.float().norm(dim=1)
    return score
