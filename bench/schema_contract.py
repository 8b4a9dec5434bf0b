"""How much of the API's contract its OpenAPI schema states: per operation, whether it declares its request
body, how many of its inputs (parameters and body fields, nested) carry a bound, and whether its error
responses are documented with an error model.

    python -m bench.schema_contract                       # this checkout's schema (built in-process)
    python -m bench.schema_contract schema.json           # a saved one (e.g. another branch's)
    python -m bench.schema_contract http://host:8080/openapi.json --key sk-...

An input is bounded when the schema limits it: a string by maxLength, pattern, enum, const or format; a
number by both minimum and maximum (or enum/const); an array by maxItems; an object by its properties
(extra properties allowed are not counted); a boolean or null always.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import httpx

METHODS = ("get", "put", "post", "delete", "patch")


@dataclass
class Operation:
    method: str
    path: str
    body: bool
    inputs: int
    bounded: int
    errors: list[str]  # 4xx/5xx statuses documented with a JSON schema
    openai_errors: list[str]  # ... whose schema is OpenAI's error shape ({"error": {...}})

    @property
    def constrained(self) -> bool:
        """It takes input and every input is bounded."""
        return self.inputs > 0 and self.bounded == self.inputs


class Walker:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.components = schema.get("components", {}).get("schemas", {})

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in node and seen < 20:
            node = {
                **self.components.get(node["$ref"].rsplit("/", 1)[-1], {}),
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            seen += 1
        return node

    def leaves(self, node: dict[str, Any], depth: int = 0) -> tuple[int, int]:
        """(inputs, bounded) under `node`."""
        node = self.resolve(node)
        if depth > 8:
            return 0, 0
        variants = node.get("anyOf") or node.get("oneOf")
        if variants and "properties" not in node:
            parts = [self.resolve(v) for v in variants if self.resolve(v).get("type") != "null"]
            if not parts:
                return 1, 1
            counts = [self.leaves(p, depth + 1) for p in parts]
            return 1, int(all(i == b for i, b in counts))
        kind = node.get("type")
        if "enum" in node or "const" in node:
            return 1, 1
        if kind == "object" or "properties" in node:
            total = bounded = 0
            for child in node.get("properties", {}).values():
                i, b = self.leaves(child, depth + 1)
                total, bounded = total + i, bounded + b
            return (total, bounded) if total else (1, 1)
        if kind == "array":
            i, b = self.leaves(node.get("items", {}), depth + 1) if node.get("items") else (1, 1)
            return 1, int("maxItems" in node and i == b)
        if kind == "string":
            return 1, int(any(k in node for k in ("maxLength", "pattern", "format")))
        if kind in ("integer", "number"):
            low = "minimum" in node or "exclusiveMinimum" in node
            high = "maximum" in node or "exclusiveMaximum" in node
            return 1, int(low and high)
        if kind in ("boolean", "null"):
            return 1, 1
        return 1, 0  # no type: anything goes


def operations(schema: dict[str, Any]) -> list[Operation]:
    walker = Walker(schema)
    out = []
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            inputs = bounded = 0
            for parameter in op.get("parameters", []):
                i, b = walker.leaves(parameter.get("schema", {}))
                inputs, bounded = inputs + i, bounded + b
            body = op.get("requestBody", {}).get("content", {})
            for media in list(body.values())[:1]:
                i, b = walker.leaves(media.get("schema", {}))
                inputs, bounded = inputs + i, bounded + b
            errors = [
                status
                for status, response in op.get("responses", {}).items()
                if status[0] in "45" and any(m.get("schema") for m in response.get("content", {}).values())
            ]
            shaped = [
                status
                for status in errors
                if any(
                    "error" in walker.resolve(m.get("schema", {})).get("properties", {})
                    for m in op["responses"][status].get("content", {}).values()
                )
            ]
            out.append(Operation(method.upper(), path, bool(body), inputs, bounded, sorted(errors), sorted(shaped)))
    return out


def load(source: str | None, key: str | None) -> dict[str, Any]:
    if source is None:
        from gateway.app import create_app
        from gateway.settings import Settings

        return create_app(Settings(admin_key="sk-" + "0" * 43, api_docs="admin")).openapi()
    if source.startswith("http"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(source, headers=headers, timeout=10).json()
    with open(source) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="a schema file or URL (default: this checkout's)")
    parser.add_argument("--key", help="an admin key for a URL")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per operation")
    args = parser.parse_args(argv)
    ops = operations(load(args.source, args.key))
    if args.verbose:
        for op in ops:
            print(
                f"{op.method:6} {op.path:40} body={'y' if op.body else '-'} bounded {op.bounded}/{op.inputs} "
                f"errors {','.join(op.errors) or '-'}"
            )
    with_input = [op for op in ops if op.inputs]
    print(f"operations: {len(ops)}")
    print(f"  declaring a request body: {sum(op.body for op in ops)}")
    print(f"  with inputs in the schema: {len(with_input)}; every input bounded: {sum(op.constrained for op in ops)}")
    print(f"  inputs bounded: {sum(op.bounded for op in ops)} of {sum(op.inputs for op in ops)}")
    print(f"  documenting error responses with a schema: {sum(bool(op.errors) for op in ops)}")
    print(f"  error statuses documented: {sum(len(op.errors) for op in ops)}")
    print(f"  documenting error responses in OpenAI's error shape: {sum(bool(op.openai_errors) for op in ops)}")
    print(f"  error statuses documented in that shape: {sum(len(op.openai_errors) for op in ops)}")


if __name__ == "__main__":
    main()
