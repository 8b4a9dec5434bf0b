"""Who a request comes from, once authenticated: a `Principal` with its scopes, models and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import Forbidden

# What a key or token may do: call the models (`inference`); rate and correct any answer, not only its own
# (`reviewer`); administer the gateway (`admin`).
SCOPES = frozenset({"inference", "reviewer", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({"inference"}))
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    monthly_token_budget: int | None = None
    capture_percent: float | None = None  # the key's own capture share (gateway/pipeline/capture.py)
    owner: str = ""  # the key's owner (a person or a team), "" when it names none

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this key lacks the '{scope}' scope")

    def require_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise Forbidden(f"this key may not use model '{model}'", param="model")


BOOTSTRAP_ADMIN = Principal(subject="admin", key_id="admin", scopes=SCOPES)
# GATEWAY_AUTH=none, for loopback callers only (gateway/access/authenticate.py).
LOCAL_OPERATOR = Principal(subject="local", scopes=SCOPES)
