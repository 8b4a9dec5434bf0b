"""Start the Ollama double as a real process and steer it: knobs, reset, stats.

with running_ollama_double(tokens=8) as double:      # a Service on a free port
    control = OllamaDoubleControl(double.url)
    control.set(fail_next=1)
    ...                                               # call double.url with any client
    assert control.stats()["calls"]["/api/chat"] == 1
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from testkit.processes import Service, free_port, python_service

DEFAULT_MODELS = ("smollm2:135m", "llama3.2:1b")


def start_ollama_double(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    port: int | None = None,
    host: str = "127.0.0.1",
    embed_dim: int | None = None,
    timeout: float = 30.0,
    **knobs: Any,
) -> Service:
    """Start `python -m tests.doubles.ollama_double` and wait until it answers GET /api/version.

    `host`: the loopback address it listens on (127.0.0.0/8: several doubles can share a port, as the
    replicas behind one DNS name do).

    `knobs` are the double's start values (token_delay, tokens, fail_next, ...); an unknown
    name fails here rather than inside the process.
    """
    from tests.doubles.ollama_state import Knobs  # the knob names are the double's own

    unknown = sorted(set(knobs) - set(Knobs.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown Ollama double knob(s): {', '.join(unknown)}")
    port = port or free_port()
    args = ["-m", "tests.doubles.ollama_double", "--host", host, "--port", str(port), "--models", ",".join(models)]
    if embed_dim is not None:
        args += ["--embed-dim", str(embed_dim)]
    for name, value in knobs.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    service = python_service("ollama-double", args, port)
    service.host = host
    return service.start_and_wait_http("/api/version", timeout=timeout)


@contextlib.contextmanager
def running_ollama_double(**kwargs: Any) -> Iterator[Service]:
    """`start_ollama_double` that stops the process when the block ends."""
    service = start_ollama_double(**kwargs)
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def running_ollama_replicas(
    addresses: Sequence[str], port: int, models_of: Callable[[str], Sequence[str]], **kwargs: Any
) -> Iterator[dict[str, Service]]:
    """One double per loopback address, all on `port` (the replicas a DNS name resolves to), each with
    `models_of(address)`; address -> its service. Every one is stopped when the block ends."""
    started: dict[str, Service] = {}
    try:
        for address in addresses:
            started[address] = start_ollama_double(host=address, port=port, models=models_of(address), **kwargs)
        yield started
    finally:
        for service in started.values():
            service.stop()


class OllamaDoubleControl:
    """A small sync client for the double's /_control API."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        response = httpx.request(method, self.base_url + path, json=json, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def set(self, **knobs: Any) -> dict[str, Any]:
        """Set knobs (token_delay, fail_next, ...); returns all knobs as they now are."""
        return self._call("POST", "/_control", knobs)

    def reset(self) -> None:
        """Back to the start state: knobs, models, blobs, stats; hung requests are released."""
        self._call("POST", "/_control/reset")

    def stats(self) -> dict[str, Any]:
        """Calls and last bodies per endpoint, faults fired, streams, blobs, created models, knobs."""
        return self._call("GET", "/_control/stats")

    def calls(self, endpoint: str) -> int:
        return self.stats()["calls"].get(endpoint, 0)

    def last_body(self, endpoint: str) -> Any:
        bodies = self.stats()["bodies"].get(endpoint) or []
        if not bodies:
            raise AssertionError(f"the double saw no request on {endpoint}")
        return bodies[-1]
