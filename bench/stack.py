"""Start the processes a benchmark measures, on loopback, and describe them as targets.

A target is somewhere the load generator sends OpenAI chat requests: the mock backend itself
(the floor), the gateway with its production policy path (API key, limits, Redis cache), and
LiteLLM's proxy (master key, Redis cache) in its own virtual environment.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.litellm_env import LITELLM_VENV
from bench.procs import peak_rss_bytes
from testkit.processes import Service, free_port, python_service, redis_service

CHAT_PATH = "/v1/chat/completions"


class BenchSetupError(RuntimeError):
    """A part of the benchmark could not start; the message says which and why."""


@dataclass(kw_only=True)
class Target:
    """Where load goes, how it authenticates, and the processes whose cost it is."""

    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Service] = field(default_factory=dict)
    chat_path: str = CHAT_PATH
    model: str | None = None  # what requests name as `model` (None: the mock's model)
    admin_key: str | None = None  # a gateway's bootstrap admin key (to create routes)

    def pids(self) -> dict[str, int]:
        return {name: svc.proc.pid for name, svc in self.processes.items() if svc.proc}

    def exited(self) -> str | None:
        """Which of its processes is gone and how (a negative code is the signal that ended it)."""
        for name, svc in self.processes.items():
            if svc.proc and svc.proc.poll() is not None:
                code = svc.proc.returncode
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                return f"{name} ({how}; log: {svc.log_path})"
        return None

    def peak_rss(self) -> dict[str, int]:
        return {name: peak_rss_bytes(pid) for name, pid in self.pids().items()}


@dataclass(frozen=True, kw_only=True)
class MockOptions:
    model: str = "bench-model"
    tokens: int = 16
    token_delay_ms: float = 0.0
    first_token_ms: float = 0.0
    plain_delay_ms: float | None = None
    content: str | None = None

    def args(self) -> list[str]:
        out = [
            "--model",
            self.model,
            "--tokens",
            str(self.tokens),
            "--token-delay-ms",
            str(self.token_delay_ms),
            "--first-token-ms",
            str(self.first_token_ms),
        ]
        if self.content is not None:
            out += ["--content", self.content]
        return out + (["--plain-delay-ms", str(self.plain_delay_ms)] if self.plain_delay_ms is not None else [])


def _tail(svc: Service, lines: int = 30) -> str:
    return "\n".join(svc.logs().splitlines()[-lines:])


def _started(stack: ExitStack, svc: Service, *, http_path: str | None, timeout: float) -> Service:
    stack.callback(svc.stop)
    svc.start()
    try:
        svc.wait_http(http_path, timeout=timeout) if http_path else svc.wait_port(timeout=timeout)
    except (TimeoutError, RuntimeError) as exc:
        raise BenchSetupError(f"{svc.name} did not start ({exc}); last log lines:\n{_tail(svc)}") from exc
    return svc


def start_mock(stack: ExitStack, opts: MockOptions, *, name: str = "mock") -> Service:
    port = free_port()
    args = ["-m", "testkit.mock_backend", "--port", str(port), *opts.args()]
    return _started(stack, python_service(name, args, port), http_path="/v1/models", timeout=15)


def direct_target(mock: Service, *, path: str = CHAT_PATH) -> Target:
    return Target(name="direct", port=mock.port, processes={"mock": mock}, chat_path=path)


def start_gateway(
    stack: ExitStack,
    mock: Service,
    *,
    backend_kind: str = "openai",
    with_redis: bool = True,
    workers: int = 1,
    source_dir: Path | None = None,
    name: str = "gateway",
    extra_env: dict[str, str] | None = None,
) -> Target:
    """The gateway as production runs it: `python -m gateway` configured only by its documented
    environment settings (production env, API key auth, Redis for keys/limits/cache), so the
    harness measures any version of the gateway without knowing its insides.

    `workers` is passed as GATEWAY_WORKERS (uvicorn worker processes; a gateway that does not know
    the setting ignores it and serves with one). `source_dir` runs the `gateway` package of another
    checkout (before/after comparisons); `extra_env` adds or overrides settings."""
    processes: dict[str, Service] = {}
    admin_key = "sk-admin-" + secrets.token_urlsafe(24)
    port = free_port()
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_ENV": "production",
        "GATEWAY_BACKENDS": json.dumps([{"kind": backend_kind, "url": mock.url, "name": "mock"}]),
        "GATEWAY_ADMIN_KEY": admin_key,
        "GATEWAY_JWT_SECRET": secrets.token_urlsafe(32),
        "GATEWAY_KEY_PEPPER": secrets.token_urlsafe(32),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_DRAIN_DELAY_S": "0",  # stopped at the end of a run, with no load balancer in front
        **(extra_env or {}),
    }
    if with_redis:
        redis = _started(stack, redis_service(), http_path=None, timeout=15)
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
        processes["redis"] = redis
    svc = python_service(name, ["-m", "gateway"], port, env)
    if source_dir is not None:
        if not (source_dir / "gateway" / "__main__.py").exists():
            raise BenchSetupError(f"{source_dir} has no gateway package (gateway/__main__.py)")
        svc.cwd = source_dir  # `python -m` puts the working directory first on sys.path
    gw = _started(stack, svc, http_path="/healthz", timeout=60)
    headers = {"Authorization": f"Bearer {_client_key(gw.url, admin_key)}"}
    return Target(name=name, port=port, headers=headers, processes={"gateway": gw, **processes}, admin_key=admin_key)


def routed_target(gateway: Target, model: str, *, route: str = "bench-route") -> Target:
    """The same gateway, called through a route (one variant at 100 % on `model`): what a routed request
    costs beyond a plain one. Gateways without routes fail here with BenchSetupError."""
    admin = {"Authorization": f"Bearer {gateway.admin_key}"}
    url = f"http://127.0.0.1:{gateway.port}/admin/routes/{route}"
    r = httpx.put(url, headers=admin, json={"variants": [{"model": model, "weight": 100}]}, timeout=10)
    if r.status_code != 200:
        raise BenchSetupError(f"could not create route {route}: {r.status_code} {r.text[:200]}")
    return Target(name="routed", port=gateway.port, headers=gateway.headers, processes=gateway.processes, model=route)


def _client_key(base_url: str, admin_key: str) -> str:
    """A normal (non-admin) API key minted through the admin API, so requests take the key-lookup
    path a client's would; the admin key itself where the gateway has no key store yet."""
    try:
        r = httpx.post(
            f"{base_url}/admin/keys",
            headers={"Authorization": f"Bearer {admin_key}"},
            json={"name": "bench", "rpm": 10**9, "tpm": 10**12},
            timeout=10,
        )
        if r.status_code < 300:
            key = r.json().get("key")
            if isinstance(key, str) and key:
                return key
    except (httpx.HTTPError, ValueError):
        pass
    return admin_key


def litellm_binary() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise BenchSetupError(
            f"LiteLLM is not installed in {LITELLM_VENV}; run `python -m bench.litellm_env` "
            "(or `make bench`, which does it) or leave litellm out of --targets"
        )
    return exe


def start_litellm(stack: ExitStack, mock: Service, *, model: str, workdir: Path) -> Target:
    """LiteLLM's proxy, one worker, master key, Redis cache, same backend (OpenAI-compatible)."""
    exe = litellm_binary()
    redis = _started(stack, redis_service(), http_path=None, timeout=15)
    master = "sk-" + secrets.token_urlsafe(24)
    config = workdir / "litellm_config.json"  # JSON is YAML, so litellm reads it as its config
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": f"openai/{model}",
                            "api_base": f"{mock.url}/v1",
                            "api_key": "sk-unused",
                        },
                    }
                ],
                "litellm_settings": {
                    "cache": True,
                    "cache_params": {"type": "redis", "host": "127.0.0.1", "port": redis.port},
                },
                "general_settings": {"master_key": master},
            },
            indent=2,
        )
    )
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "PYTHONFAULTHANDLER": "1",  # a crash in C code leaves a traceback in the log
        "DISABLE_ADMIN_UI": "True",
    }
    svc = Service(
        name="litellm",
        argv=[str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        port=port,
        env=env,
        cwd=workdir,
    )
    _started(stack, svc, http_path="/health/liveliness", timeout=180)
    return Target(
        name="litellm",
        port=port,
        headers={"Authorization": f"Bearer {master}"},
        processes={"litellm": svc, "redis": redis},
    )


def smoke_check(target: Target, model: str) -> None:
    """One plain and one streamed request must succeed before any load is sent."""
    url = f"http://127.0.0.1:{target.port}{target.chat_path}"
    body = {"model": model, "messages": [{"role": "user", "content": "smoke"}]}
    for stream in (False, True):
        try:
            r = httpx.post(url, json={**body, "stream": stream}, headers=target.headers, timeout=30)
        except httpx.HTTPError as exc:
            raise BenchSetupError(f"{target.name}: smoke request failed: {exc}") from exc
        if r.status_code != 200 or "tok" not in r.text:
            logs = "\n".join(_tail(s) for s in target.processes.values())
            raise BenchSetupError(
                f"{target.name}: smoke request (stream={stream}) answered {r.status_code}: {r.text[:300]}\n{logs}"
            )


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (timeout, kill) unwinds like Ctrl-C, so every `ExitStack` stops what it started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
