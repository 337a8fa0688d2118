"""What every unstructured pruning method shares: the weight matrices it prunes, binary masks applied in the forward,
the exact-count selection of the weights to remove, and baking the masks into plain weights.

Masks are applied through torch.nn.utils.parametrize: a pruned Linear's `weight` is computed as original * mask, with
the mask a persistent bool buffer. So (1) the masked entries get a zero gradient and the effective weight is exactly
zero whatever the optimizer does to the stored original (AdamW's decay, Adam momentum left from before pruning);
(2) the masks live in the model's state_dict, so a training checkpoint holds them and a resumed run continues with
the same masks bit for bit; (3) a module whose owner reads `.weight` directly sees the masked weight too. `finalize`
bakes original * mask into a plain parameter, after which the model saves as an ordinary model directory.

Matrices: targets name Linear modules through the one target matcher (ptmkit.nn.targets: names, globs, "re:"); the
default is every nn.Linear inside the model's block stacks (ptmkit.nn.stacks: not the embeddings, not the task head),
as Gordon et al. 2020 and Sanh et al. 2020 prune BERT's encoder. A fused projection counts as its parts (q, k, v;
gate, up: the modules' own fused_parts), the separate matrices of the papers' BERT, so per-layer pruning gives each
of them the same sparsity.

Counting: a sparsity s of a matrix (or of all targets together, global scope) of n weights prunes exactly
k = floor(s n + 1/2) weights (s n rounded to the nearest integer, halves up): the k lowest scores; weights tied at the
k-th score are pruned in flat order (row-major within a matrix, matrices in model order), so the count is exact and
the choice deterministic. Dimension legend: O out_features (or a part's rows), I in_features, N weights ranked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ptmkit.config import ConfigError
from ptmkit.nn.stacks import block_stacks
from ptmkit.nn.targets import match_modules, pattern_matches

SCOPES = ("global", "layer")  # one ranking over every target / each weight matrix to the same sparsity


def check_scope(where: str, scope: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"{where}: scope must be 'global' (one threshold over all targets) or 'layer' (each weight "
                          f"matrix to the same sparsity), got {scope!r}")


class Mask(nn.Module):
    """The parametrization weight -> weight * mask; `mask` is a persistent bool buffer (True = kept)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones(weight.shape, dtype=torch.bool, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass
class Matrix:
    """One weight matrix that is pruned: a Linear's weight, or the rows of one part of a fused projection."""

    label: str  # e.g. backbone.layers.0.attn.qkv[q]
    module: nn.Linear
    rows: torch.Tensor | None = None  # the part's output rows; None = the whole weight

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """This matrix's entries of a tensor shaped like the module's weight: (O, I)."""
        return t if self.rows is None else t[self.rows.to(t.device)]

    @property
    def masker(self) -> Mask:
        """The module's mask parametrization (shared by the parts of a fused projection)."""
        return mask_of(self.module)

    def kept(self) -> torch.Tensor:
        """bool (O, I): True where this matrix keeps its weight."""
        return self.view(self.masker.mask)

    def original(self) -> torch.Tensor:
        """The stored (unmasked) weight, (O, I) over this matrix's rows."""
        return self.view(self.module.parametrizations.weight.original)

    def write(self, keep: torch.Tensor) -> None:
        """Set this matrix's part of the mask (keep: bool (O, I))."""
        buf = self.masker.mask
        if self.rows is None:
            buf.copy_(keep)
        else:
            buf[self.rows.to(buf.device)] = keep


def mask_of(module: nn.Module) -> Mask | None:
    """The pruning mask of a module's weight, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, Mask)), None)


def _inside(name: str, owners: list[str]) -> bool:
    return any(name == o or name.startswith(o + ".") for o in owners)


def default_targets(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Full names of every nn.Linear inside the block stacks (not a delta-tuning method's own), minus `exclude`."""
    stacks = [name for name, _ in block_stacks(model)]
    if not stacks:
        raise ConfigError(f"pruning: {type(model).__name__} has no `layers` block stack to take default targets from; "
                          "name the Linear modules to prune in `targets` (e.g. ['qkv', 'attn.out', 'ffn.up'])")
    deltas = [n for n, m in model.named_modules() if getattr(m, "is_delta", False)]
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and _inside(n, stacks) and not _inside(n, deltas)
            and not any(pattern_matches(x, n) for x in exclude)]


def _fused_parts(model: nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """id(fused projection) -> {part: its output rows}, as the modules declare them (SelfAttention's q, k, v)."""
    out = {}
    for parent in model.modules():
        for child, parts in (parent.fused_parts() if hasattr(parent, "fused_parts") else {}).items():
            out[id(getattr(parent, child))] = parts
    return out


def resolve(model: nn.Module, targets: Sequence[str] | None, exclude: Sequence[str], method: str) -> list[Matrix]:
    """The matrices of the Linear modules `targets` names (None = default_targets) through the one target matcher
    (ptmkit.nn.targets; a pattern matching nothing is an error), a fused projection as its parts."""
    names = default_targets(model, exclude) if targets is None else list(targets)
    if not names:
        raise ConfigError(f"{method}: `exclude` {list(exclude)} leaves no Linear module of the blocks to prune; "
                          "exclude fewer modules")
    try:
        hits = match_modules(model, names, types=(nn.Linear,), exclude=exclude)
    except ConfigError as e:
        raise ConfigError(f"{method}: {e}") from None
    if not hits:
        raise ConfigError(f"{method}: `exclude` {list(exclude)} removes every module `targets` {names} matches; "
                          "exclude fewer modules or name others")
    fused = _fused_parts(model)
    return [Matrix(f"{name}[{part}]", module, rows) if part else Matrix(name, module)
            for name, module in hits for part, rows in (fused.get(id(module)) or {None: None}).items()]


def attach(matrices: list[Matrix], make: Callable[[torch.Tensor], Mask], method: str) -> None:
    """Parametrize each targeted module's weight as weight * mask (one mask per module, shared by its parts)."""
    modules = list({id(m.module): m for m in matrices}.values())
    for m in modules:
        if parametrize.is_parametrized(m.module, "weight"):
            what = "a pruning mask" if mask_of(m.module) is not None else "a parametrization"
            raise ConfigError(f"{method}: {m.label.split('[')[0]} already carries {what}; prune a model once "
                              "(bake the masks with finalize(model) first, or start again from the unpruned model)")
        parametrize.register_parametrization(m.module, "weight", make(m.module.weight))


def prune_count(sparsity: float, n: int) -> int:
    """k = s n rounded to the nearest integer, halves up (the documented rounding; see the module docstring)."""
    return min(n, math.floor(sparsity * n + 0.5))


def smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool (N,): True at the k lowest of the flat `scores`; ties at the k-th value go to the lowest indices."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(k).values  # O(N), no full sort
    below = scores < kth
    tied = scores == kth
    return below | (tied & (tied.cumsum(0) <= k - below.sum()))


@torch.no_grad()
def prune_lowest(matrices: list[Matrix], scores: list[torch.Tensor], sparsity: float, scope: str) -> None:
    """Set every matrix's mask to keep all but the round(s n) lowest scores: of all matrices together (global) or of
    each one (layer). scores[i] is shaped like matrices[i] (O, I)."""
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores])  # (N,) in model order
        pruned = smallest(flat, prune_count(sparsity, flat.numel())).split([s.numel() for s in scores])
    else:
        pruned = [smallest(s.flatten(), prune_count(sparsity, s.numel())) for s in scores]
    for m, p, s in zip(matrices, pruned, scores):
        m.write(~p.view(s.shape))


def finalize(model: nn.Module) -> nn.Module:
    """Bake every pruning mask into its weight (weight = original * mask, a plain parameter again) and drop the masks
    and any importance scores; the model then saves with ptmkit.models.save_model as an ordinary model directory.
    The parameter object is kept, so an optimizer holding it stays valid."""
    pruned = [m for m in model.modules() if mask_of(m) is not None]
    if not pruned:
        raise ConfigError("finalize: this model carries no pruning masks (prune it first, e.g. with "
                          "ptmkit.compress.prune.unstructured.prune(model, 'magnitude', {...}))")
    for m in pruned:
        # torch's parametrize gives a parametrized module a class of its own, and copy.deepcopy shares that class with
        # the copy; removing the parametrization deletes `weight` from the class, which would break every other
        # module of it (finalizing a copy to save it broke the model still training). A private class first.
        cls = type(m)
        m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


class Pruner:
    """A pruning method on one model. Building it attaches the masks to the targeted matrices; calling it with the
    step index (the engine's `on_step`, run before each optimizer step) updates them when the method says so."""

    method = "pruning"

    def __init__(self, model: nn.Module, targets: Sequence[str] | None, exclude: Sequence[str],
                 make: Callable[[torch.Tensor], Mask]):
        self.matrices = resolve(model, targets, exclude, self.method)
        attach(self.matrices, make, self.method)

    def __call__(self, step: int) -> None:
        return None

    @torch.no_grad()
    def sparsity(self) -> float:
        """The fraction of the targeted weights masked now."""
        pruned = sum(int((~m.kept()).sum()) for m in self.matrices)
        return pruned / sum(m.kept().numel() for m in self.matrices)
