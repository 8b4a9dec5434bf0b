"""Processes of the real-model benchmark: llama.cpp `llama-server` replicas serving SmolLM2, and per routing
policy one gateway (production path: API key, limits, Redis) behind its own nginx (the shipped config).
"""

from __future__ import annotations

import json
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import (
    BenchSetupError,
    MockOptions,
    Target,
    _started,
    start_gateway,
    start_mock,
)
from testkit.llama import smollm2_gguf
from testkit.llama_server import llama_server_binary
from testkit.nginx_render import build_conf_dir
from testkit.processes import Service, free_port
from testkit.topology import loopback_nginx_values, start_nginx

MODEL = "smollm2"


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """How each replica runs. The defaults are the settings under which prefix affinity pays (bench/README.md)."""

    threads: int = 1
    slots: int = 8
    ctx_per_slot: int = 2048
    cache_ram_mib: int = 8192  # llama.cpp's default host-memory prompt cache
    slot_similarity: float = 0.8  # llama.cpp's default (0.1) lets chats sharing a system prompt take each other's slots
    cache_reuse: int = 0
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [
            "-t",
            str(self.threads),
            "-tb",
            str(self.threads),
            "-np",
            str(self.slots),
            "-c",
            str(self.slots * self.ctx_per_slot),
            "--cache-ram",
            str(self.cache_ram_mib),
            "-sps",
            str(self.slot_similarity),
            "--cache-reuse",
            str(self.cache_reuse),
            *self.extra,
        ]


def server_version() -> str:
    try:
        out = subprocess.run(
            [str(llama_server_binary()), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return " ".join((out.stdout + out.stderr).split())[:200]


def start_replicas(stack: ExitStack, count: int, opts: ServerOptions, log_dir: Path) -> list[Service]:
    binary, gguf = str(llama_server_binary()), str(smollm2_gguf())
    replicas = []
    for i in range(count):
        port = free_port()
        argv = [
            binary,
            "-m",
            gguf,
            "--alias",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-webui",
            *opts.args(),
        ]
        svc = Service(name=f"llama{i}", argv=argv, port=port, log_dir=log_dir)
        replicas.append(_started(stack, svc, http_path="/health", timeout=120))
    return replicas


def start_mock_replicas(stack: ExitStack, count: int) -> list[Service]:
    """Replicas without a model (testkit.mock_backend), to check the benchmark's plumbing in seconds."""
    return [
        start_mock(stack, MockOptions(model=MODEL, tokens=8, token_delay_ms=1.0), name=f"mock{i}") for i in range(count)
    ]


def replica_names(replicas: list[Service]) -> dict[str, str]:
    """The name each replica has in the gateway's metrics -> its URL."""
    return {f"llama{i}": r.url for i, r in enumerate(replicas)}


def start_stack(
    stack: ExitStack,
    replicas: list[Service],
    policy: str,
    workdir: Path,
    load_factor: float,
    affinity_memory: int,
    move_factor: float,
) -> tuple[Target, Service]:
    """nginx -> one gateway using `policy` -> the replicas; returns the gateway target (pointed at nginx) and nginx."""
    backends = [{"kind": "openai", "url": url, "name": name} for name, url in replica_names(replicas).items()]
    env = {
        "GATEWAY_BACKENDS": json.dumps(backends),
        "GATEWAY_ROUTING_POLICY": policy,
        "GATEWAY_AFFINITY_LOAD_FACTOR": str(load_factor),
        "GATEWAY_AFFINITY_MEMORY": str(affinity_memory),
        "GATEWAY_AFFINITY_MOVE_FACTOR": str(move_factor),
        "GATEWAY_FIRST_TOKEN_TIMEOUT_S": "120",
        "GATEWAY_TOTAL_TIMEOUT_S": "600",
    }
    gateway = start_gateway(stack, replicas[0], extra_env=env)
    public, status = free_port(), free_port()
    values = loopback_nginx_values(public, status, free_port())
    conf = build_conf_dir(workdir / f"nginx-{policy}", values, [f"127.0.0.1:{gateway.port}"])
    try:
        nginx = start_nginx(conf, public)
    except RuntimeError as exc:
        raise BenchSetupError(str(exc)) from exc
    stack.callback(nginx.stop)
    return gateway, nginx


def requests_per_replica(gateway_port: int) -> dict[str, float]:
    """The gateway's `gateway_llm_requests_total` summed per backend (read before and after a block)."""
    text = httpx.get(f"http://127.0.0.1:{gateway_port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_llm_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                backend = sample.labels.get("backend", "?")
                out[backend] = out.get(backend, 0.0) + sample.value
    return out
