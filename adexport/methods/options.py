"""Method options as data: read from each config dataclass, so the CLI writes no flag by hand.

- :func:`describe_options`: every field of a config (its own and inherited training options) with
  its type, default and one-line help. The help is the trailing ``# comment`` of the field in the
  config's source, so a config documents itself in one place.
- :func:`parse_assignments`: ``["lr=0.001", "layers=1,2,3"]`` -> typed overrides, by the field's
  type (``adx train --set KEY=VALUE``).
- :func:`format_methods`: what ``adx methods [NAME]`` prints.
- :func:`check_options`: the one validation every config runs first (``__post_init__``): each
  field has its declared type, every float is finite, and every number lies in the range its
  config declares in ``LIMITS`` (merged along the class hierarchy, so trained methods inherit the
  training options' ranges). A config's own ``__post_init__`` then checks only what ties fields
  together (sizes that must divide, options that exclude each other).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import math
import numbers
import re
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
    valid: str = ""  # the declared range, e.g. ">= 1", "in (0, 1]"; empty when any value of the type goes


# ------------------------------------------------------------------------------------- ranges
#: Seeds feed numpy's and torch's generators, which take unsigned 32-bit seeds everywhere we use them.
SEED_MAX = 2**32 - 1
#: No size, count or index option is anywhere near this; beyond it torch and numpy overflow in C.
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limit:
    """The valid range of a numeric option (each element of a tuple option): bounds, open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not valid
    hi_open: bool = False  # hi itself is not valid
    noun: str = ""  # what a valid value is called, e.g. "a probability"; default: by the field's type

    def admits(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``, ``in [0, 4294967295]``; empty when unbounded."""
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return ""


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


#: Named ranges a ``LIMITS`` table may use besides ``">= 1"``, ``"> 0"``, ``"in [0, 1)"`` and the like.
PRESETS = {
    "seed": Limit(0, SEED_MAX),
    "probability": Limit(0, 1, noun="a probability"),
    "fraction": Limit(0, 1, lo_open=True, noun="a fraction"),  # a share that must keep at least one
}


@functools.lru_cache(maxsize=None)
def parse_limit(spec: str) -> Limit:
    """A ``LIMITS`` entry as a :class:`Limit`: ``">= 1"``, ``"> 0"``, ``"<= 8"``, ``"in [0, 1)"``,
    ``"in (0, 1]"`` or a name from :data:`PRESETS`. Tables are text so that ``adexport.training``
    can declare its ranges without importing this package (which imports it)."""
    if spec in PRESETS:
        return PRESETS[spec]
    m = re.fullmatch(r"(>=|>|<=|<) (-?[0-9.e+]+)", spec)
    if m:
        op, x = m.group(1), float(m.group(2))
        return Limit(lo=x, lo_open=op == ">") if op.startswith(">") else Limit(hi=x, hi_open=op == "<")
    m = re.fullmatch(r"in ([\[(])(-?[0-9.e+]+), (-?[0-9.e+]+)([\])])", spec)
    if m:
        return Limit(float(m.group(2)), float(m.group(3)), lo_open=m.group(1) == "(", hi_open=m.group(4) == ")")
    raise TypeError(f"range {spec!r} is not understood; write '>= 1', '> 0', 'in [0, 1)' or one of "
                    f"{', '.join(PRESETS)}")


def option_limits(config_cls: type) -> dict[str, Limit]:
    """``LIMITS`` of ``config_cls`` and its bases merged (the most derived class wins), parsed."""
    out: dict[str, Limit] = {}
    for klass in reversed(config_cls.__mro__):
        out.update({k: parse_limit(v) for k, v in klass.__dict__.get("LIMITS", {}).items()})
    return out


@functools.lru_cache(maxsize=None)
def _checks(config_cls: type) -> tuple[tuple[str, Any, Limit | None], ...]:
    hints = typing.get_type_hints(config_cls)
    limits = option_limits(config_cls)
    unknown = sorted(set(limits) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:  # a typo in a LIMITS table must not silently leave an option unchecked
        raise TypeError(f"{config_cls.__name__}.LIMITS names no field: {', '.join(unknown)}")
    return tuple((f.name, hints[f.name], limits.get(f.name)) for f in dataclasses.fields(config_cls))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has type ``tp`` (an int is a float here; a bool is never a number)."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # numpy integers too: library callers pass them
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return True  # a type this checker does not know: left to the config's own checks


def _numbers(value: Any) -> list[float]:
    """The numbers in a value: itself, or the numeric elements of a tuple."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in items if isinstance(v, numbers.Real) and not isinstance(v, bool)]


def _integer_type(tp: Any) -> bool:
    """An int field (alone, optional or in a tuple), not a float one."""
    kinds = {tp, *typing.get_args(tp)}
    kinds |= {b for a in list(kinds) for b in typing.get_args(a)}
    return int in kinds and float not in kinds


def _noun(tp: Any, limit: Limit) -> str:
    """What a valid value is called: "an integer", "a probability", "2 finite numbers, each"."""
    inner = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis] or [tp]
    inner = [b for a in inner for b in (typing.get_args(a) or (a,))]  # (int | str, ...) -> int, str
    if typing.get_origin(tp) is tuple:
        count = "a list of" if typing.get_args(tp)[-1] is Ellipsis else str(len(typing.get_args(tp)))
        return f"{count} {'finite numbers' if float in inner else 'integers'}, each"
    if limit.noun:
        return limit.noun
    return "an integer" if int in inner else "a finite number"


def check_options(config: Any) -> None:
    """Refuse a config field of the wrong type, a float that is not finite, or a number outside
    its declared range: one line naming the option, what is valid and what was received.

    Called first by every method config's ``__post_init__``, so ``--set``, library calls and a
    fitted model's saved config are all checked the same way.
    """
    for name, tp, limit in _checks(type(config)):
        value = getattr(config, name)
        if not _matches(value, tp):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        limit = limit or Limit()
        for v in _numbers(value):
            # An int is finite however large (math.isfinite cannot even take one past float's range),
            # but past int32 torch and numpy overflow in C, so every integer option stops there.
            too_big = isinstance(v, numbers.Integral) and limit.hi is None and abs(v) > INT_MAX
            if too_big or not (isinstance(v, numbers.Integral) or math.isfinite(v)) or not limit.admits(v):
                shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else repr(value)
                valid = " and ".join(filter(None, [limit.describe(), f"at most {INT_MAX}" if too_big else ""]))
                what = " ".join(filter(None, [_noun(tp, limit), valid]))
                optional = " (or none)" if type(None) in typing.get_args(tp) else ""
                raise ConfigError(f"{name} must be {what}{optional}, got {shown}")


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
        limit = option_limits(config_cls).get(f.name)
        out.append(OptionInfo(f.name, _type_name(hints[f.name]), default, helps.get(f.name, ""),
                              limit.describe() if limit is not None else ""))
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
    w_valid = max(len("valid"), *(len(o.valid) for o in opts))
    lines = [f"{entry.name}: {entry.summary}",
             f"Set any option with adx train --method {entry.name} --set KEY=VALUE (repeatable).",
             f"  {'option':<{w_name}}  {'type':<{w_type}}  {'default':<{w_def}}  {'valid':<{w_valid}}  help"]
    for o in opts:
        lines.append(f"  {o.name:<{w_name}}  {o.type:<{w_type}}  {_fmt_default(o.default):<{w_def}}  "
                     f"{o.valid:<{w_valid}}  {o.help}")
    return "\n".join(lines)
