"""Just enough of the GGUF header to describe an uploaded model the way Ollama does.

Ollama reads a created model's architecture, size and quantization from its GGUF metadata and
rejects a file whose magic is wrong; the double does the same with this small reader.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
WANTED = {
    "general.architecture": "architecture",
    "general.file_type": "file_type",
    "general.size_label": "parameter_size",
}
# llama.cpp's llama_ftype values -> the names Ollama shows as quantization_level
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_KEYS = 256  # the wanted keys come first in llama.cpp's files; don't walk the whole header


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    return f.read(length).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in SCALARS:
        return _read(f, SCALARS[kind])
    if kind == 8:
        return _string(f)
    if kind == 9:  # array: read through it, keep nothing (token lists are large)
        inner, count = _read(f, "<I"), _read(f, "<Q")
        if inner in SCALARS:
            f.seek(struct.calcsize(SCALARS[inner]) * count, 1)
        else:
            for _ in range(count):
                _value(f, inner)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def read_gguf_summary(path: Path) -> dict[str, str] | None:
    """{'architecture', 'file_type', 'parameter_size'} (those present), or None if not GGUF."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            return None
        found: dict[str, str] = {}
        try:
            version = _read(f, "<I")
            _read(f, "<Q" if version >= 2 else "<I")  # tensor count
            kv_count = _read(f, "<Q" if version >= 2 else "<I")
            for _ in range(min(kv_count, MAX_KEYS)):
                key, kind = _string(f), _read(f, "<I")
                value = _value(f, kind)
                if key in WANTED:
                    found[WANTED[key]] = FILE_TYPES.get(value, str(value)) if key == "general.file_type" else str(value)
                if len(found) == len(WANTED):
                    break
        except (EOFError, ValueError, struct.error):
            pass  # a short or odd header still counts as GGUF; we report what we read
        return found
