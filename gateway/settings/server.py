"""Settings of the gateway process itself: where it listens, how many workers, who may call it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

AuthMode = Literal["keys", "none"]


class ServerSettings(BaseSettings):
    env: Literal["development", "production"] = Field(
        "development", description="`production` refuses missing or placeholder secrets at start-up."
    )
    host: str = Field("0.0.0.0", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn listens on.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="uvicorn worker processes in this container, so one replica "
        "can use several cores (all shared state is in Redis).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    auth: AuthMode = Field(
        "keys",
        description="`keys`: every call needs an API key or a JWT (the default). `none`: open access "
        "for every caller, accepted only with GATEWAY_HOST on a loopback address and answered only to "
        "loopback clients (a laptop, never a shared host).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest accepted request body (413 above).")
    api_docs: Literal["off", "admin", "public"] = Field(
        "admin",
        description="The API's OpenAPI schema at /openapi.json: for admin-scoped callers (`admin`), "
        "nobody (`off`), or everyone with the /docs page too (`public`: it lists every admin path).",
    )
    console: bool = Field(
        True,
        description="The review console at /console: captured answers, corrections, rollouts, datasets and "
        "keys in a browser, for reviewer and admin keys (signed in, never open). `false`: /console is 404.",
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=168, description="How long a console sign-in lasts before the key must be entered again."
    )
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="On SIGTERM, /readyz answers 503 at once and the gateway keeps serving new requests this "
        "long, so load balancers and Kubernetes endpoints stop sending them before it stops listening.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="After the drain delay, requests and streams in flight get this long to finish before "
        "they are cut; then the gateway writes what it holds (usage, capture) and exits. Kubernetes' "
        "terminationGracePeriodSeconds must cover the delay plus this.",
    )
