"""Shared CLI helpers: YAML config + dotted `--section.key value` overrides → a typed, validated config;
and a help epilog listing every config key with its default."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from ptmkit.config import ConfigError, apply_overrides, from_dict, load_yaml, parse_value


def parse_dotted(extra: list[str]) -> dict[str, object]:
    """['--train.lr', '3e-4', '--data.seq_len=64'] -> {'train.lr': 3e-4, 'data.seq_len': 64}."""
    out: dict[str, object] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unrecognised argument {arg!r}; config overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise ConfigError(f"override {arg} needs a value")
            value = extra[i + 1]
            i += 2
        try:
            out[key] = parse_value(value)
        except ConfigError as e:
            raise ConfigError(f"override --{key}: {e}") from None
    return out


def build_config(cls, yaml_path: str | None, overrides: dict[str, object]):
    """The typed config of a YAML file plus overrides; an error names the file (and the key, via from_dict)."""
    data = load_yaml(yaml_path) if yaml_path else {}
    try:
        return from_dict(cls, apply_overrides(data, overrides), where="config")
    except ConfigError as e:
        if not yaml_path:
            raise
        given = " with the command-line overrides" if overrides else ""
        raise ConfigError(f"{yaml_path}{given}: {e}") from None


def _field_comments(cls) -> dict[str, str]:
    """The `# comment` after each field in the dataclass source: the help text lives beside the field."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^\n#]*#\s*(.+)$", source, flags=re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def describe(cls, prefix: str = "") -> list[str]:
    """One line per leaf config key: `--section.key (type, default: value)  comment`."""
    lines = []
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "required"
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        note = comments.get(f.name, "")
        lines.append(f"  --{name} ({tname}, default: {default!r})" + (f"\n      {note}" if note else ""))
    return lines
