"""Settings of the model-serving replicas behind the gateway: which, how they are called and picked."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

BackendKind = Literal["ollama", "openai", "llamacpp", "vllm"]
# How the pool picks among the replicas serving a model (gateway/replicas/affinity.py).
RoutingPolicy = Literal["least_in_flight", "prefix_affinity"]


class BackendSpec(BaseModel):
    """One inference server replica the gateway may route to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: BackendKind = Field(
        description="`ollama` for Ollama's native API, `openai` for any OpenAI-compatible server "
        "(vLLM, llama.cpp server, TGI, Ollama's /v1); `llamacpp` (llama-server) and `vllm` also serve the "
        "registered LoRA adapters of their base model."
    )
    url: str = Field(description="Base URL, e.g. http://ollama:11434 or http://vllm:8000 (no /v1 suffix).")
    name: str | None = Field(None, description="Label used in metrics and logs; defaults to host:port.")
    api_key: SecretStr | None = Field(None, description="Bearer token sent to an OpenAI-compatible server.")
    max_adapters: int | None = Field(
        None,
        ge=1,
        description="`vllm` only: most adapters the gateway loads on this "
        "replica (its --max-cpu-loras); unset: no cap.",
    )
    discover: Literal["static", "dns"] = Field(
        "static",
        description="`dns`: the URL's host names many replicas (a Kubernetes headless Service, "
        "`docker compose --scale`); each address it resolves to is a replica of its own, with its own circuit, "
        "requests in flight and model list, found again every GATEWAY_DNS_INTERVAL_S.",
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests the gateway sends one replica at once (Ollama's OLLAMA_NUM_PARALLEL); more "
        "wait in the gateway, counted in gateway_requests_waiting (the autoscaling signal). Unset: no limit.",
    )
    address: str | None = Field(
        None,
        description="Connect to this IP address instead of resolving the URL's host; the URL keeps its host "
        "for TLS and the Host header. DNS discovery sets it on each replica it finds.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"backend url must be http(s)://host[:port], got {v!r}")
        return v.rstrip("/").removesuffix("/v1")

    @property
    def label(self) -> str:
        return self.name or urlsplit(self.url).netloc


class ReplicaSettings(BaseSettings):
    backends: list[BackendSpec] = Field(
        default_factory=list,
        description='JSON list of replicas: [{"kind": "ollama", "url": "http://ollama:11434"}, ...].',
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description='JSON object mapping alias -> model, e.g. {"default": "smollm2:135m"}.'
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout to a backend.")
    first_token_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for a backend's first byte/token (model load included)."
    )
    total_timeout_s: float = Field(300.0, gt=0, description="Hard cap on one request, all attempts included.")
    max_attempts: int = Field(3, ge=1, le=10, description="Replicas tried per request before giving up.")
    breaker_failures: int = Field(3, ge=1, description="Consecutive failures that open a replica's circuit.")
    breaker_reset_s: float = Field(10.0, gt=0, description="Seconds a circuit stays open before one probe.")
    discovery_interval_s: float = Field(15.0, gt=0, description="How often replicas' model lists are refreshed.")
    discovery_timeout_s: float = Field(3.0, gt=0, description="Timeout of one model-list call.")
    dns_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often the hosts of `discover: dns` backends are resolved again (also at once, at "
        "most once a second, after a connection to one of their replicas failed).",
    )
    dns_servers: list[str] = Field(
        default_factory=list,
        description='DNS servers that resolve `discover: dns` hosts, e.g. ["10.0.0.10", "127.0.0.1:8600"]; '
        "empty: the system's resolver (/etc/hosts, /etc/resolv.conf and its search domains).",
    )
    queue_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a request waits for a free slot on a replica with `max_concurrency`; then 503 "
        "`replicas_busy` with Retry-After.",
    )
    max_connections_per_backend: int = Field(256, ge=1, description="HTTP connection pool size per replica.")
    shadow_queue: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Shadow requests waiting at most; more are "
        'dropped (and counted in gateway_shadow_requests_total{result="dropped"}).',
    )
    routing_policy: RoutingPolicy = Field(
        "least_in_flight",
        description="How a replica is picked among those serving a model: `least_in_flight`, "
        "or `prefix_affinity` (a conversation sticks to one replica, whose prompt cache it reuses).",
    )
    routing_policies: dict[str, RoutingPolicy] = Field(
        default_factory=dict,
        description="Per-model policy overriding GATEWAY_ROUTING_POLICY, e.g. "
        '{"smollm2:135m": "prefix_affinity"} (the model name the replicas serve).',
    )
    affinity_load_factor: float = Field(
        1.25,
        ge=1.0,
        le=10.0,
        description="prefix_affinity's bound for placing a conversation: no replica takes a "
        "new one that would put it above this factor x the mean of requests in flight (it goes to the next "
        "replica on the ring).",
    )
    affinity_move_factor: float = Field(
        2.0,
        ge=1.0,
        le=10.0,
        description="prefix_affinity moves a conversation off the replica holding its prompt "
        "cache only when that replica would go above this factor x the mean of requests in flight (moving costs "
        "the whole prompt, so this is looser than the placing bound).",
    )
    affinity_memory: int = Field(
        16_384,
        ge=0,
        le=1 << 22,
        description="prefix_affinity remembers where this many recent conversations were "
        "served (about 150 bytes each), to keep each one a bound or a failure moved where its prompt is cached "
        "(0: the ring and the placing bound alone decide).",
    )
    affinity_prefix_chars: int = Field(
        2048,
        ge=16,
        le=1 << 20,
        description="prefix_affinity hashes the system messages and the first user "
        "message, each cut to this many characters.",
    )

    @field_validator("backends", mode="after")
    @classmethod
    def _unique_labels(cls, v: list[BackendSpec]) -> list[BackendSpec]:
        labels = [b.label for b in v]
        dupes = {x for x in labels if labels.count(x) > 1}
        if dupes:
            raise ValueError(f"backend names must be unique, repeated: {sorted(dupes)}")
        return v
