"""The Ollama double's mutable state: models, blobs, fault knobs and what callers sent.

One `DoubleState` lives on `app.state.double`; handlers reach it through `state_of(request)`.
The event loop is single-threaded, so plain counters are race-free here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request

BODIES_KEPT = 20  # last request bodies kept per endpoint, so memory stays bounded in a soak
KEEP_ALIVE = timedelta(minutes=5)  # Ollama's default keep_alive

# The order faults are taken in when several are armed at once.
FAULT_ORDER = ("hang", "queue_full", "fail", "error_line", "die_mid_stream")


class KnobError(ValueError):
    """A control request named an unknown knob or gave it a bad value."""


@dataclass
class Knobs:
    """Fault and pacing knobs; every field can be set at start (CLI) and at run time (/_control)."""

    token_delay: float = 0.0  # seconds between two streamed tokens
    tokens: int = 16  # tokens per answer before num_predict / max_tokens caps it
    fail_next: int = 0  # next n inference requests answer `fail_status` with {"error": ...}
    fail_status: int = 500
    die_mid_stream_next: int = 0  # next n inference responses are cut (TCP closed mid-body)
    die_after_tokens: int = 2  # tokens sent before a cut or an error line
    queue_full_next: int = 0  # next n inference requests answer 503 like Ollama's full queue
    hang_next: int = 0  # next n inference requests are accepted and never answered until reset
    error_line_next: int = 0  # next n streams end with an {"error": ...} line under status 200
    ignore_format: int = 0  # 1: answer plain words whatever `format` asks (a fine-tune that drifted off JSON)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a control request, checking names and types so a typo fails loudly."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise KnobError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, value in changes.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or value < 0 or (known[name] == "int" and value != int(value)):
                raise KnobError(f"knob {name} needs a non-negative {known[name]}, got {value!r}")
            setattr(self, name, float(value) if known[name] == "float" else int(value))


def now_rfc3339(moment: datetime | None = None) -> str:
    """Ollama's timestamp style: RFC 3339 with nanoseconds, UTC."""
    dt = moment or datetime.now(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond:06d}000Z"


def normalise_name(name: str) -> str:
    """Ollama's model names default the tag to `latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parameter_size_of(name: str) -> str:
    """'smollm2:135m' -> '135M', 'llama3.2:1b' -> '1B'; a guess when the tag has no size."""
    match = re.search(r"(\d+(?:\.\d+)?)([mb])\b", name.split(":", 1)[-1], re.IGNORECASE)
    return f"{match.group(1)}{match.group(2).upper()}" if match else "1B"


DEFAULT_TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"


@dataclass
class ModelRecord:
    """A model as /api/tags and /api/show describe it."""

    name: str
    digest: str
    size: int
    modified_at: str
    family: str = "llama"
    parameter_size: str = "1B"
    quantization_level: str = "Q4_0"
    parent_model: str = ""
    template: str = DEFAULT_TEMPLATE
    system: str = ""
    license: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def seeded(cls, name: str) -> ModelRecord:
        """A model present at start: digest and size derived from the name, so they are stable."""
        name = normalise_name(name)
        digest = hashlib.sha256(name.encode()).hexdigest()
        size_param = parameter_size_of(name)
        scale = 1_000_000 if size_param.endswith("M") else 1_000_000_000
        size = int(float(size_param[:-1]) * scale * 0.6)  # ~Q4 bytes per parameter
        return cls(name=name, digest=digest, size=size, modified_at=now_rfc3339(), parameter_size=size_param)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


@dataclass
class BlobInfo:
    path: Path
    size: int


@dataclass
class Stats:
    """What callers sent and what the double did, for tests to assert on."""

    calls: Counter = field(default_factory=Counter)
    bodies: dict[str, deque] = field(default_factory=dict)
    faults: Counter = field(default_factory=Counter)
    streams_completed: int = 0
    streams_aborted: int = 0  # the client went away before the stream ended
    inflight: int = 0
    max_inflight: int = 0

    def record(self, endpoint: str, body: Any) -> None:
        self.calls[endpoint] += 1
        self.bodies.setdefault(endpoint, deque(maxlen=BODIES_KEPT)).append(body)


class DoubleState:
    """Models, blobs, knobs and stats, plus the event that releases hung requests."""

    def __init__(self, *, models: list[str], knobs: Knobs, embed_dim: int, version: str) -> None:
        self.initial_models = [normalise_name(m) for m in models]
        self.initial_knobs = replace(knobs)
        self.embed_dim = embed_dim
        self.version = version
        self._blob_dir: Path | None = None
        self.started = time.time()
        self._reset_fields()

    @property
    def blob_dir(self) -> Path:
        """Made on the first upload, so doubles that never see a blob leave nothing in /tmp."""
        if self._blob_dir is None:
            self._blob_dir = Path(tempfile.mkdtemp(prefix="ollama-double-blobs-"))
        return self._blob_dir

    def _reset_fields(self) -> None:
        self.knobs = replace(self.initial_knobs)
        self.models: dict[str, ModelRecord] = {n: ModelRecord.seeded(n) for n in self.initial_models}
        self.blobs: dict[str, BlobInfo] = {}
        self.loaded: dict[str, datetime] = {}
        self.stats = Stats()
        self.release = asyncio.Event()

    def reset(self) -> None:
        """Back to the start state; hung requests are released (they answer 503)."""
        self.release.set()
        for blob in self.blobs.values():
            blob.path.unlink(missing_ok=True)
        self._reset_fields()

    def close(self) -> None:
        self.release.set()
        if self._blob_dir is not None:
            shutil.rmtree(self._blob_dir, ignore_errors=True)

    def find_model(self, name: str) -> ModelRecord | None:
        return self.models.get(normalise_name(name)) if name else None

    def mark_loaded(self, model: ModelRecord, keep_alive: Any) -> None:
        """/api/ps lists models used recently; keep_alive 0 unloads at once."""
        if keep_alive in (0, "0", "0s", "0m"):
            self.loaded.pop(model.name, None)
        else:
            self.loaded[model.name] = datetime.now(UTC) + KEEP_ALIVE

    def take_fault(self) -> str | None:
        """Consume one armed fault (if any) for the inference request being served."""
        for fault in FAULT_ORDER:
            attr = f"{fault}_next"
            if getattr(self.knobs, attr) > 0:
                setattr(self.knobs, attr, getattr(self.knobs, attr) - 1)
                self.stats.faults[fault] += 1
                return fault
        return None

    def snapshot(self) -> dict[str, Any]:
        """GET /_control/stats."""
        s = self.stats
        return {
            "calls": dict(s.calls),
            "bodies": {k: list(v) for k, v in s.bodies.items()},
            "faults": dict(s.faults),
            "streams": {"completed": s.streams_completed, "aborted": s.streams_aborted},
            "inflight": s.inflight,
            "max_inflight": s.max_inflight,
            "knobs": asdict(self.knobs),
            "blobs": {d: b.size for d, b in self.blobs.items()},
            "models": sorted(self.models),
            "created": {n: _created_view(m) for n, m in self.models.items() if n not in self.initial_models},
            "loaded": sorted(self.loaded),
        }


def _created_view(model: ModelRecord) -> dict[str, Any]:
    return {
        "files": model.files,
        "adapters": model.adapters,
        "template": model.template,
        "system": model.system,
        "parameters": model.parameters,
        "license": model.license,
        "messages": model.messages,
        "parent_model": model.parent_model,
        "quantization_level": model.quantization_level,
    }


def state_of(request: Request) -> DoubleState:
    return request.app.state.double
