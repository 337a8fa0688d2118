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
from typing import Iterable, Sequence

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
