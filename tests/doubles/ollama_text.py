"""Deterministic "model output" for the Ollama double: words, JSON, embeddings, token counts.

Everything here is a pure function of its inputs (no clock, no randomness), so a test can
predict what the double will answer, and two different requests give two different answers
(a cache that mixes up requests is caught by comparing texts).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

# 32 plain words: one token each, easy to read in a failing assertion.
WORDS: tuple[str, ...] = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basil",
    "cedar",
    "dune",
    "ember",
    "fjord",
)


def count_prompt_tokens(text: str) -> int:
    """The double's tokenizer: one token per 4 characters, rounded up, at least 1."""
    return max(1, (len(text) + 3) // 4)


def seed_of(*parts: str) -> int:
    """A stable 64-bit seed from the request's parts (model, prompt, options.seed)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def word_sequence(seed: int, count: int) -> list[str]:
    """`count` words cycling through WORDS from a seed-chosen start with a seed-chosen odd step.

    An odd step is coprime with len(WORDS) == 32, so the cycle visits every word.
    """
    start = seed % len(WORDS)
    step = 2 * ((seed >> 8) % 8) + 1
    return [WORDS[(start + i * step) % len(WORDS)] for i in range(count)]


def plain_tokens(seed: int, count: int) -> list[str]:
    """Tokens as a model streams them: the first word bare, later ones with a leading space."""
    words = word_sequence(seed, count)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def json_mode_tokens(seed: int, count: int) -> list[str]:
    """`format: "json"`: the same words wrapped so the joined text is always one JSON object."""
    tokens = plain_tokens(seed, count)
    if not tokens:
        return ["{}"]
    tokens[0] = '{"text": "' + tokens[0]
    tokens[-1] = tokens[-1] + '"}'
    return tokens


def value_for_schema(schema: Any, seed: int, depth: int = 0) -> Any:
    """A deterministic value that matches a (simple) JSON schema: objects, arrays, scalars, enums."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: value_for_schema(sub, seed_of(str(seed), name), depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [value_for_schema(schema.get("items") or {"type": "string"}, seed + i, depth + 1) for i in range(2)]
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return (seed % 10000) / 100
    if kind == "boolean":
        return bool(seed & 1)
    if kind == "null":
        return None
    return word_sequence(seed, 1)[0]


def schema_tokens(seed: int, count: int, schema: dict[str, Any]) -> list[str]:
    """A JSON-schema `format`: a matching document, cut into at most `count` pieces."""
    text = orjson.dumps(value_for_schema(schema, seed)).decode()
    pieces = max(1, min(count, len(text)))
    size = math.ceil(len(text) / pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


def embedding_for(text: str, dim: int) -> list[float]:
    """A unit-length vector derived from the text (what /api/embed returns: L2-normalised)."""
    raw = hashlib.shake_256(text.encode()).digest(dim * 2)
    values = [(int.from_bytes(raw[i : i + 2], "big") / 32767.5) - 1.0 for i in range(0, dim * 2, 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: "base64"`: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
