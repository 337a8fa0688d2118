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
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.targets import pattern_matches

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


@dataclass
class Site:
    """Where a method attaches: a module, and for a part of a fused projection the rows of that part."""

    name: str  # the module's dotted name in the model
    module: nn.Module
    part: str | None = None  # "q", "k", "v", "gate", "up" inside a fused projection; None = the whole module
    rows: torch.Tensor | None = None  # output rows of that part

    @property
    def label(self) -> str:
        return self.name if self.part is None else f"{self.name}[{self.part}]"


def _inside_delta(name: str, delta_names: set[str]) -> bool:
    return any(name == d or name.startswith(d + ".") for d in delta_names)


def _parts(model: nn.Module, skip: set[str]) -> list[tuple[str, Site]]:
    """(virtual name, Site) for each part of each fused projection: layers.0.attn.q -> Site(layers.0.attn.qkv, q)."""
    out = []
    for pname, parent in model.named_modules():
        fused = getattr(parent, "fused_parts", None)
        if fused is None or _inside_delta(pname, skip):
            continue
        for child, parts in fused().items():
            module = getattr(parent, child)
            cname = f"{pname}.{child}" if pname else child
            for part, rows in parts.items():
                out.append((f"{pname}.{part}" if pname else part, Site(cname, module, part, rows)))
    return out


def find_sites(model: nn.Module, targets: str | Sequence[str], *, types: tuple[type, ...] = (nn.Linear,),
               exclude: Sequence[str] = (), method: str = "delta tuning", parts: bool = True) -> list[Site]:
    """Every site matching a pattern of `targets`: modules of `types` by name (ptmkit.nn.targets syntax) and parts of
    fused projections ("q", "attn.v", "layers.*.attn.k"). A pattern that matches nothing, or two patterns that take
    the same rows twice, is a ConfigError that lists what the model has."""
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ConfigError(f"{method}: give at least one target module (e.g. q, v, attn.out, ffn.up)")
    deltas = {n for n, m in model.named_modules() if getattr(m, "is_delta", False)}
    real = [(n, Site(n, m)) for n, m in model.named_modules()
            if n and isinstance(m, types) and not _inside_delta(n, deltas)]
    if not real:
        raise ConfigError(f"{method}: {type(model).__name__} has no {'/'.join(t.__name__ for t in types)} modules, so "
                          f"{method} does not apply to this model family")
    virtual = _parts(model, deltas) if parts and nn.Linear in types else []
    # modules whose owner reads their weight instead of calling them (Transformer-XL's qkv): a hook never runs there
    direct = {f"{pn}.{c}" if pn else c for pn, parent in model.named_modules()
              for c in getattr(parent, "weights_read_directly", ())}
    sites: dict[tuple[str, str | None], Site] = {}
    for p in patterns:
        hits = [s for n, s in real + virtual if pattern_matches(p, n)
                and not any(pattern_matches(x, n) for x in exclude)]
        hookable = [s for s in hits if s.name not in direct]
        if hits and not hookable:
            raise ConfigError(f"{method}: {type(model).__name__} reads the weight of {hits[0].name} directly instead "
                              f"of calling the module, so a delta method there would never run; target {p!r} has "
                              "nothing else to change: choose other projections")
        hits = hookable
        if not hits:
            names = [n for n, _ in real] + [n for n, _ in virtual]
            tails = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ConfigError(
                f"{method}: target {p!r} matches no {'/'.join(t.__name__ for t in types)} module of "
                f"{type(model).__name__}; its module names end in {tails} (parts of fused projections count: "
                f"q, k, v, gate, up); e.g. {names[:4]}")
        for s in hits:
            sites[(s.name, s.part)] = s
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    sites = dict(sorted(sites.items(), key=lambda kv: order.get(kv[0][0], -1)))  # model order, whatever the patterns'
    whole = {name for name, part in sites if part is None}
    overlap = sorted({name for name, part in sites if part is not None and name in whole})
    if overlap:
        raise ConfigError(f"{method}: targets take {overlap[0]} both whole and by part (e.g. 'qkv' and 'q'); "
                          "name it once")
    return list(sites.values())


def refuse_tied(model: nn.Module, sites: list[Site], method: str) -> None:
    """A weight shared by two modules (an output layer tied to the input embedding) cannot take a mergeable change:
    merging it would change the other module too."""
    owners: dict[int, dict[int, str]] = {}  # weight -> the distinct modules holding it (a module reused across
    for name, module in model.named_modules():  # layers, ALBERT's sharing, is one module: not a tie)
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), {})[id(module)] = name
    for s in sites:
        shared = owners.get(id(getattr(s.module, "weight", None)), {})
        if len(shared) > 1:
            other = next(n for m, n in shared.items() if m != id(s.module))
            raise ConfigError(f"{method}: {s.name} shares its weight with {other} (tied embeddings), so a change "
                              f"merged into it would change {other} too; leave it out of the targets")


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
