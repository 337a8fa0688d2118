"""Typed dataclass configs: build from dicts/YAML, apply dotted overrides, validate, dump JSON.

Configs are data, never code: YAML is read with `safe_load`, every key must be a declared field,
and every value must have the declared type (ints widen to floats; nothing else is coerced).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message says which."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses; raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # one real option (X | None): its own message says more than "not a valid X | None"
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range (~1.8e308)
            raise ConfigError(f"{where}: a {value.bit_length()}-bit integer is too large for a float") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types are errors naming the key."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if k not in fields), key=repr)  # YAML keys may be 1, null, true
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_value(text: str) -> Any:
    """Parse a command-line override value as YAML scalar/list (`3e-4`, `true`, `[1,2]`)."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # `[1,`, `*a`, a date 2024-13-45 ...
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{text!r} is not a YAML value ({problem}); fix it, or for a string holding YAML syntax "
                          f"put it in YAML quotes: \"'{text}'\"") from None
    # YAML 1.1 reads "3e-4" as a string; accept the float spelling users type.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `data` with dotted keys (`train.lr`) set; intermediate mappings are created."""
    out = copy.deepcopy(data)  # YAML values need not be JSON (dates, bytes, sets): from_dict judges them
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _yaml_error(path: Path, text: str, e: Exception) -> ConfigError:
    """The ConfigError for a YAML file that does not parse, at path:line:column of the fault."""

    def at(index: int) -> str:  # lines end at "\n" as in every ptmkit reader (YAML also breaks at \r, \u2028 ...)
        return f"{text.count(chr(10), 0, index) + 1}:{index - text.rfind(chr(10), 0, index)}"

    if isinstance(e, yaml.MarkedYAMLError) and (e.problem_mark or e.context_mark):
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} at {at(e.context_mark.index)})" if e.context and e.context_mark else ""
        return ConfigError(f"{path}:{at(mark.index)}: not valid YAML: {e.problem or e}{context}; fix the syntax there")
    if isinstance(e, yaml.reader.ReaderError):  # a control character, e.g. NUL
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        return ConfigError(f"{path}:{at(e.position)}: unacceptable character {char} ({e.reason}); remove it")
    return ConfigError(f"{path}: not a readable YAML config ({type(e).__name__}: {e}); fix that value, or quote it to "
                       "keep it as text")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file; a file that is not UTF-8 or not YAML is a ConfigError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({e.reason}); save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: e.g. a date 2024-13-45
        raise _yaml_error(path, text, e) from None
    if data is None:  # an empty file (or only comments): every key at its default
        return {}
    if not isinstance(data, dict):  # `[]`, `0`, `false` too: not an empty config in disguise
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def dump_json(cfg: Any, path: str | Path) -> None:
    from ptmkit import atomic  # a module of the same base layer

    atomic.write_text(path, json.dumps(to_dict(cfg), indent=2, sort_keys=False) + "\n")


def check_positive(where: str, **values: float) -> None:
    """Raise a ConfigError naming each value that is not > 0."""
    bad = {k: v for k, v in values.items() if not (v > 0)}
    if bad:
        raise ConfigError(f"{where}: must be positive: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
