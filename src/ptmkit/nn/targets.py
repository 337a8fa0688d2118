"""The one target-module matcher for model transforms (delta tuning, pruning, quantisation, sharing): which
submodules a transform applies to. Patterns follow PEFT's `target_modules` and torchao's filters:

    "qkv"               a module whose dotted name ends with this component path: layers.0.attn.qkv, ...
    "attn.out"          ends with these components (whole components: "out" does not match "layout")
    "backbone.layers.0.ffn.up"   a full name
    "layers.*.ffn.*"    a glob over the full name (fnmatch: * also crosses dots)
    "re:.*\\.(qkv|out)$" a regular expression over the full name

Each pattern must match at least one module (of the requested types): a typo is an error that lists the model's
module names, not a transform that silently does nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ptmkit.config import ConfigError

_GLOB = set("*?[")


def pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if _GLOB & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _describe(candidates: Iterable[str]) -> str:
    names = list(candidates)
    kinds = Counter(n.rsplit(".", 1)[-1] for n in names)
    common = ", ".join(f"{k} (x{c})" if c > 1 else k for k, c in kinds.most_common(20))
    return f"{len(names)} candidate modules; last components: {common}; e.g. {names[:6]}"


def match_modules(model: nn.Module, targets: str | Sequence[str], *, types: tuple[type, ...] | None = None,
                  exclude: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) for every submodule matching any of `targets` (and none of `exclude`), in model order,
    restricted to instances of `types` when given. A pattern that matches nothing is a ConfigError."""
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ConfigError("target modules: give at least one name or pattern (e.g. qkv, attn.out, layers.*.ffn.up)")
    candidates = [(n, m) for n, m in model.named_modules() if n and (types is None or isinstance(m, types))]
    if not candidates:
        kind = " or ".join(t.__name__ for t in types) if types else "named"
        raise ConfigError(f"target modules: {type(model).__name__} has no {kind} submodules")
    for p in patterns:
        if not any(pattern_matches(p, n) for n, _ in candidates):
            kind = f" {'/'.join(t.__name__ for t in types)}" if types else ""
            raise ConfigError(f"target modules: {p!r} matches no{kind} module of {type(model).__name__} "
                              f"({_describe(n for n, _ in candidates)})")
    return [(n, m) for n, m in candidates
            if any(pattern_matches(p, n) for p in patterns) and not any(pattern_matches(x, n) for x in exclude)]


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
            raise ConfigError(f"{method}: {s.name} shares its weight with {other} (tied embeddings), so changing its "
                              f"weight (a merged delta, a quantised copy) would change {other} too; leave it out of "
                              "the targets")
