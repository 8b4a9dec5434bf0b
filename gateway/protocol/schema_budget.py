"""How much work a client-supplied JSON schema may ask for, checked when the request is parsed, before any
work is done with it (a 400 naming the limit, as OpenAI refuses over-complex structured-output schemas).

A schema's cost is not linear in its size: `$ref`s can point at the same definition many times, so a
1.5 KB schema of 19 levels, each an `allOf` of two references to the level below, expands to half a
million subschemas and takes minutes to validate one answer. The budget walks the schema with its
references expanded (a reference back to a schema already on the path, a recursive schema, is not
expanded again) and stops at the first limit crossed, so checking it is bounded too.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import orjson

MAX_SCHEMA_BYTES = 100_000  # the schema as JSON
MAX_DEPTH = 16  # subschemas nested along one path, references followed
MAX_NODES = 5_000  # subschemas visited with every reference expanded
MAX_PROPERTIES = 1_000  # object properties, counted over the expanded schema
MAX_ENUM_VALUES = 1_000  # enum and const values, counted over the expanded schema

# Keywords whose value is one subschema, a list of them, or a mapping of name -> subschema.
ONE = (
    "additionalProperties",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
)
MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
# Definitions ($defs) are not walked where they stand: they cost only where a $ref uses them.
NAMED = ("properties", "patternProperties", "dependentSchemas")


class SchemaTooComplex(ValueError):
    """The schema crosses a limit; the message names it (the 400 the client sees)."""


def _children(schema: dict[str, Any]) -> Iterator[Any]:
    for key in ONE:
        if key in schema:
            yield schema[key]
    for key in MANY:
        value = schema.get(key)
        if isinstance(value, list):
            yield from value
    for key in NAMED:
        value = schema.get(key)
        if isinstance(value, dict):
            yield from value.values()


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local reference (`#`, `#/$defs/x`, `#/properties/a/items`); None for anything else (remote
    references are never fetched, and a validator would refuse them)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def check_schema_budget(schema: Any, *, what: str) -> None:
    """Raise SchemaTooComplex naming the limit `schema` crosses (`what` names the schema in the message)."""
    if not isinstance(schema, dict):
        return
    serialized = orjson.dumps(schema)
    if len(serialized) > MAX_SCHEMA_BYTES:
        raise SchemaTooComplex(f"{what} is {len(serialized)} bytes; at most {MAX_SCHEMA_BYTES} are accepted")
    problem = _over_budget(serialized)
    if problem is not None:
        raise SchemaTooComplex(f"{what} {problem}")


@lru_cache(maxsize=128)
def _over_budget(serialized: bytes) -> str | None:
    """The limit a schema crosses, None within them; remembered, since clients send the same schemas."""
    schema = orjson.loads(serialized)
    counts = {"nodes": 0, "properties": 0, "enum": 0}
    # Depth-first, each entry a subschema, its depth, and the schemas on its path (ids: a cycle guard).
    stack: list[tuple[Any, int, frozenset[int]]] = [(schema, 1, frozenset())]
    while stack:
        node, depth, path = stack.pop()
        if not isinstance(node, dict):
            continue
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels (references followed)"
        counts["nodes"] += 1
        if counts["nodes"] > MAX_NODES:
            return f"expands to more than {MAX_NODES} subschemas once its $refs are followed"
        properties = node.get("properties")
        if isinstance(properties, dict):
            counts["properties"] += len(properties)
            if counts["properties"] > MAX_PROPERTIES:
                return f"has more than {MAX_PROPERTIES} object properties"
        enum = node.get("enum")
        counts["enum"] += (len(enum) if isinstance(enum, list) else 0) + ("const" in node)
        if counts["enum"] > MAX_ENUM_VALUES:
            return f"has more than {MAX_ENUM_VALUES} enum and const values"
        here = path | {id(node)}
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _resolve(schema, ref)
            if isinstance(target, dict) and id(target) not in here:  # a reference up the path is recursion
                stack.append((target, depth + 1, here))
        stack.extend((child, depth + 1, here) for child in _children(node))
    return None
