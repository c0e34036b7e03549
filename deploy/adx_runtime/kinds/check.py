"""The small subset of JSON Schema that the manifest's typed sections are declared in, checked
without the ``jsonschema`` package (the runtime must not need it).

The same declaration is both what the runtime checks a bundle against at load and what
:func:`adx_runtime.bundle.schema.manifest_schema` ships for readers in other languages, so the two
cannot drift. Keywords understood: ``type`` (one name or a list), ``enum``, ``minimum``,
``minLength``, ``minItems``, ``maxItems``, ``items``, ``properties``, ``required``,
``additionalProperties`` (a schema) and ``anyOf`` of ``required`` lists; anything else (such as
``description``) is documentation. A schema that uses another keyword is refused when it is
declared (:func:`check_declaration`), so the check never silently skips a rule.
"""

from __future__ import annotations

from typing import Any

from adx_runtime.errors import BundleError

#: Keywords :func:`check` enforces; ``description``, ``title`` and ``default`` only document.
ENFORCED = frozenset({"type", "enum", "minimum", "minLength", "minItems", "maxItems", "items", "properties",
                      "required", "additionalProperties", "anyOf"})
DOCUMENTING = frozenset({"description", "title", "default", "examples"})

_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "object": "an object", "array": "a list", "null": "null"}


def _shown(value: Any) -> str:
    """``repr`` cut to 60 characters: a value from a hostile manifest may be long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return type(value) is int
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "null":
        return value is None
    return isinstance(value, {"string": str, "boolean": bool, "object": dict, "array": list}[name])


def expected(schema: dict[str, Any]) -> str:
    """What a value must be, in words: ``an integer >= 1``, ``one of 'faiss', 'npz'``."""
    if "enum" in schema:
        return "one of " + ", ".join(_shown(v) for v in schema["enum"])
    types = schema.get("type", [])
    words = " or ".join(_NAMES[t] for t in ([types] if isinstance(types, str) else types)) or "a value"
    if "minimum" in schema:
        words += f" >= {schema['minimum']}"
    if schema.get("minLength"):
        words = "a non-empty string" + (" or null" if "null" in types else "")
    if "minItems" in schema and schema.get("maxItems") == schema["minItems"]:
        words += f" of {schema['minItems']} items"
    elif schema.get("minItems"):
        words = "a non-empty list"
    return words


def check(value: Any, schema: dict[str, Any], where: str) -> None:
    """Raise a one-line BundleError naming the first field of ``value`` that ``schema`` refuses."""
    def fail(what: str) -> None:
        raise BundleError(f"manifest {where} {what}; re-export the bundle")

    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in names):
            fail(f"must be {expected(schema)}, got {_shown(value)}")
    if "enum" in schema and value not in schema["enum"]:
        fail(f"must be {expected(schema)}, got {_shown(value)}")
    if "minimum" in schema and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value < schema["minimum"]:
        fail(f"must be {expected(schema)}, got {_shown(value)}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        fail(f"must be {expected(schema)}, got {_shown(value)}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            fail(f"must be {expected(schema)}, got {_shown(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                check(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                fail(f"lacks {key!r}")
        for option in schema.get("anyOf", ()):
            if all(key in value for key in option.get("required", ())):
                break
        else:
            if schema.get("anyOf"):
                fail("needs one of " + " or ".join("+".join(o["required"]) for o in schema["anyOf"]))
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                check(item, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                check(item, extra, f"{where}.{key}")


def check_declaration(schema: Any, where: str = "schema") -> None:
    """Refuse a declared schema that uses a keyword :func:`check` does not enforce (a programming
    error: the shipped schema would promise a rule the runtime does not check)."""
    if not isinstance(schema, dict):
        raise TypeError(f"{where}: a schema is a dict, got {type(schema).__name__}")
    unknown = set(schema) - ENFORCED - DOCUMENTING
    if unknown:
        raise TypeError(f"{where}: keywords {sorted(unknown)} are not checked by adx_runtime.kinds.check")
    for key, sub in (schema.get("properties") or {}).items():
        check_declaration(sub, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            check_declaration(schema[key], f"{where}.{key}")
    for option in schema.get("anyOf", ()):
        if set(option) != {"required"}:
            raise TypeError(f"{where}: anyOf options may only list required keys")
