"""What every delta-tuning method shares (Ding et al. 2022, "Delta tuning"): the sites it attaches to, the hooks
that run its parameters beside the frozen model, freezing, switching off, and the count of what trains.

A method never replaces a module of the model. Its parameters live in a `Delta` child of the module it changes
(e.g. `layers.0.attn.qkv.lora`) and run from a forward hook on that module, so the base model keeps every one of
its parameter names (its Hugging Face export, tensor-parallel plans and checkpoints still apply), `disabled(model)`
is a flag rather than a rebuild, and removing a method is deleting a child. Hooks look their Delta up by attribute
name when they run, so a deep copy of the model runs its own copy of the parameters.

Sites are found with the one target matcher (ptmkit.nn.targets), plus the parts of fused projections: the model's
single q/k/v matmul is addressed as "q", "k", "v" (and a LLaMA's gate/up pair as "gate", "up"), which is how LoRA
and IA3 name their targets (Hu et al. 2021; Liu et al. 2022).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.targets import Site, find_sites, refuse_tied  # noqa: F401  (the methods find their sites here)

APPLIED = "_ptmkit_delta_methods"  # model attribute: {method name: its config}, in the order applied


class Delta(nn.Module):
    """A method's parameters at one site. `output(module, inputs, y)` or `input(module, x)` is what the hook runs;
    `enabled` False makes the site behave as the base model."""

    is_delta = True  # models/io.py recognises delta parameters by this flag (it cannot import adapt)
    hook: str | None = "output"  # "output": change the module's output; "input": its first positional input;
    # "around": before(module, args, kwargs) and after(module, args, kwargs, out) see every argument (soft prompts,
    # feature heads); None: no hook, the module reads the Delta itself (prefix keys/values, read by SelfAttention)

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.merged = False  # mergeable methods: folded into the base weights, the hook is then a no-op

    def output(self, module: nn.Module, inputs: tuple, y: Any) -> Any:
        raise NotImplementedError

    def input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """hook == "around": new (args, kwargs) for the module, or None to keep them."""
        return None

    def after(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        """hook == "around": a new output, or None to keep it."""
        return None

    def fold(self, module: nn.Module, undo: bool) -> None:
        """Mergeable methods: add this site's change into the module's weights (undo: take it out again)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weights")


class _OutputHook:
    """A forward hook that runs the Delta stored as `module.<attr>` (looked up at call time: deep-copy safe)."""

    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, inputs, y):
        delta = getattr(module, self.attr)
        if not delta.enabled or delta.merged:
            return None  # None: keep the module's own output
        return delta.output(module, inputs, y)


class _InputHook:
    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, inputs):
        delta = getattr(module, self.attr)
        if not delta.enabled or delta.merged:
            return None
        return (delta.input(module, inputs[0]), *inputs[1:])


class _BeforeHook:
    """A forward pre-hook with keyword arguments that runs `module.<attr>.before` (hook == "around")."""

    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, args, kwargs):
        return getattr(module, self.attr).before(module, args, kwargs)


class _AfterHook:
    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, args, kwargs, out):
        return getattr(module, self.attr).after(module, args, kwargs, out)


HOOKS = (_OutputHook, _InputHook, _BeforeHook, _AfterHook)


def attach(site: Site, attr: str, delta: Delta) -> None:
    """Store `delta` as `site.module.<attr>` and hook it into the module's forward."""
    module = site.module
    if hasattr(module, attr):
        raise ConfigError(f"{site.name} already carries {attr!r}: a method is applied once (remove it first)")
    module.add_module(attr, delta)
    delta.train(module.training)  # a new module starts in training mode: follow the model's (dropout off in eval)
    if delta.hook == "output":
        module.register_forward_hook(_OutputHook(attr))
    elif delta.hook == "input":
        module.register_forward_pre_hook(_InputHook(attr))
    elif delta.hook == "around":
        module.register_forward_pre_hook(_BeforeHook(attr), with_kwargs=True)
        module.register_forward_hook(_AfterHook(attr), with_kwargs=True)


def detach(module: nn.Module, attr: str) -> None:
    """Undo `attach`: the module's hook for `attr` and the Delta child."""
    for hooks, with_kwargs in ((module._forward_hooks, module._forward_hooks_with_kwargs),
                               (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs)):
        for key in [k for k, h in hooks.items() if isinstance(h, HOOKS) and h.attr == attr]:
            del hooks[key]
            with_kwargs.pop(key, None)
    delattr(module, attr)


def register(model: nn.Module, method: str, cfg: Any) -> None:
    """Record that `method` was applied (with `cfg`); applying a method twice is an error."""
    applied = getattr(model, APPLIED, None)
    if applied is None:
        applied = {}
        object.__setattr__(model, APPLIED, applied)  # a plain attribute, not a submodule or buffer
    if method in applied:
        raise ConfigError(f"{method} is already applied to this model; apply a method once (to change its settings "
                          f"start from the base model, or remove it with ptmkit.adapt.remove(model, {method!r}))")
    applied[method] = cfg


def applied(model: nn.Module) -> dict[str, Any]:
    """{method name: config} of the delta methods on `model`."""
    return dict(getattr(model, APPLIED, {}) or {})


def deltas(model: nn.Module, attr: str | None = None) -> Iterator[tuple[str, nn.Module, Delta]]:
    """(module name, module, Delta) for every delta child (of one method's attribute name, if given)."""
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if getattr(child, "is_delta", False) and (attr is None or child_name == attr):
                yield name, module, child


def merge(model: nn.Module, attr: str, hook: str | None = None) -> nn.Module:
    """Fold every `attr` delta (of one hook side, if given) into its module's weights. The delta parameters stay,
    switched off, so `unmerge` can take them out again (and training can go on after unmerging)."""
    for _, module, delta in deltas(model, attr):
        if not delta.merged and hook in (None, delta.hook):
            delta.fold(module, undo=False)
            delta.merged = True
    return model


def unmerge(model: nn.Module, attr: str, hook: str | None = None) -> nn.Module:
    for _, module, delta in deltas(model, attr):
        if delta.merged and hook in (None, delta.hook):
            delta.fold(module, undo=True)
            delta.merged = False
    return model


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: every delta site is switched off inside the block (and restored after)."""
    found = [d for _, _, d in deltas(model)]
    before = [d.enabled for d in found]
    for d in found:
        d.enabled = False
    try:
        yield model
    finally:
        for d, e in zip(found, before):
            d.enabled = e


def delta_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter of every Delta child (the parameters a delta method adds)."""
    owners = {name for name, m in model.named_modules() if getattr(m, "is_delta", False)}
    return {n: p for n, p in model.named_parameters() if any(n.startswith(o + ".") for o in owners)}


def freeze_except(model: nn.Module, trainable: Sequence[str] = ()) -> None:
    """Only delta parameters and those under the modules named in `trainable` — full dotted names from the model's
    root, e.g. a task head's ["dense", "out"] (PEFT's modules_to_save) — keep gradients."""
    names = {n for n, _ in model.named_modules()}
    unknown = [t for t in trainable if t not in names]
    if unknown:
        raise ConfigError(f"freeze_except: {type(model).__name__} has no module {unknown[0]!r} (trainable modules are "
                          f"named from the model's root, e.g. {[n for n, _ in model.named_children()]})")
    keep = set(delta_parameters(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep or any(name.startswith(t + ".") for t in trainable))


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters (shared tensors counted once), and the trainable share in %."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    total = sum(n for n, _ in seen.values())
    trainable = sum(n for n, g in seen.values() if g)
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / max(total, 1)}
