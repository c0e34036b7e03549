"""Method options as data: read from each config dataclass, so the CLI writes no flag by hand.

- :func:`describe_options`: every field of a config (its own and inherited training options) with
  its type, default and one-line help. The help is the trailing ``# comment`` of the field in the
  config's source, so a config documents itself in one place.
- :func:`parse_assignments`: ``["lr=0.001", "layers=1,2,3"]`` -> typed overrides, by the field's
  type (``adx train --set KEY=VALUE``).
- :func:`format_methods`: what ``adx methods [NAME]`` prints.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence

from adx_runtime.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str  # readable, e.g. "int", "float | None", "tuple of int | str"
    default: Any
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """``name -> trailing comment`` for the annotated fields in the class bodies of ``cls``'s MRO."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        for no, line in enumerate(lines, start=1):
            stripped = line.strip()
            head = stripped.split(":", 1)[0]
            if head.isidentifier() and ":" in stripped and no in comments and line.startswith("    ") \
                    and not line.startswith("     "):
                out[head] = comments[no]
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"{len(args)} x {_type_name(args[0])}" if len(set(args)) == 1 else \
            "(" + ", ".join(_type_name(a) for a in args) + ")"
    return getattr(tp, "__name__", str(tp))


def describe_options(config_cls: type) -> list[OptionInfo]:
    """Every option of a method config: name, type, default, help."""
    hints = typing.get_type_hints(config_cls)
    helps = _field_comments(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append(OptionInfo(f.name, _type_name(hints[f.name]), default, helps.get(f.name, "")))
    return out


def _parse_scalar(text: str, tp: Any, key: str) -> Any:
    if tp is bool:
        low = text.lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected a number") from None
    if tp is str:
        return text
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and text.lower() in _NONE:
            return None
        for a in args:  # int before str: "3" is a stage index, "layer3" a name
            try:
                return _parse_scalar(text, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"--set {key}={text}: expected {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_scalar(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"--set {key}={text}: expected {len(args)} comma-separated values")
        return tuple(_parse_scalar(p, a, key) for p, a in zip(parts, args))
    raise ConfigError(f"--set {key}: options of type {_type_name(tp)} cannot be set from the command line")


def parse_assignments(config_cls: type, assignments: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: typed value}`` for ``config_cls``; unknown keys are refused
    with the list of valid ones."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in names:
            raise ConfigError(f"{config_cls.__name__} has no option {key!r}; its options: {', '.join(names)} "
                              "(see `adx methods METHOD`)")
        out[key] = _parse_scalar(value.strip(), hints[key], key)
    return out


def _fmt_default(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) if v else "()"
    return str(v)


def format_methods(entries: Sequence[Any], name: str | None = None) -> str:
    """The registered methods (``name=None``), or one method's options with types, defaults, help."""
    if name is None:
        width = max(len(e.name) for e in entries)
        lines = ["Methods (adx train --method NAME; adx methods NAME lists its options):"]
        for e in entries:
            kind = "trained network" if e.trained else "one-pass fit"
            lines.append(f"  {e.name:<{width}}  {e.summary} [{kind}]")
        return "\n".join(lines)
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        raise ConfigError(f"method {name!r} is not known; valid: {', '.join(e.name for e in entries)}")
    opts = describe_options(entry.config_cls)
    w_name = max(len(o.name) for o in opts)
    w_type = max(len(o.type) for o in opts)
    w_def = max(len(_fmt_default(o.default)) for o in opts)
    lines = [f"{entry.name}: {entry.summary}",
             f"Set any option with adx train --method {entry.name} --set KEY=VALUE (repeatable).",
             f"  {'option':<{w_name}}  {'type':<{w_type}}  {'default':<{w_def}}  help"]
    for o in opts:
        lines.append(f"  {o.name:<{w_name}}  {o.type:<{w_type}}  {_fmt_default(o.default):<{w_def}}  {o.help}")
    return "\n".join(lines)
