"""Settings of who may call and what they may spend: keys, JWTs, limits, the response cache, prices."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


class ModelPrice(BaseModel, frozen=True):
    input_per_million: float = Field(ge=0, description="USD per million prompt tokens on the hosted API")
    output_per_million: float = Field(ge=0, description="USD per million generated tokens on the hosted API")


# gpt-4o-mini list prices: a common yardstick for what a small fine-tuned model replaces.
DEFAULT_PRICE = ModelPrice(input_per_million=0.15, output_per_million=0.60)


class AccessSettings(BaseSettings):
    admin_key: SecretStr | None = Field(
        None,
        description="Bootstrap admin API key (sk-...). Unset: `python -m gateway` makes one for this run "
        "and prints it once (development; production refuses to start without one).",
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret for gateway-issued JWTs.")
    key_pepper: SecretStr | None = Field(None, description="Server-side pepper mixed into API-key hashes.")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "GATEWAY_REDIS_URL"),
        description="redis://[:password@]host:port/db. Unset: in-process stores (development).",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis password, put into REDIS_URL (which then names none) at start: the URL stays "
        "free of secrets, the password can come from a file (GATEWAY_REDIS_PASSWORD_FILE).",
    )
    redis_timeout_s: float = Field(0.25, gt=0, le=5, description="Socket timeout of every Redis call.")
    redis_retry_s: float = Field(3.0, gt=0, description="After a Redis failure, seconds before it is tried again.")
    jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["HS256"],
        description="Accepted JWT algorithms, pinned (never taken from the token): HS256 with "
        "GATEWAY_JWT_SECRET, RS256/ES256 with GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL.",
    )
    jwt_public_key: str | None = Field(None, description="PEM public key of an external identity provider.")
    jwt_jwks_url: str | None = Field(None, description="JWKS URL of an external identity provider.")
    jwt_issuer: str | None = Field(None, description="Required `iss` of accepted tokens (set on minted ones).")
    jwt_audience: str | None = Field(None, description="Required `aud` of accepted tokens (set on minted ones).")
    jwt_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed for exp/nbf/iat.")
    jwt_ttl_s: int = Field(900, ge=30, le=86400, description="Lifetime of tokens from POST /auth/token.")
    jwt_default_rpm: int | None = Field(None, ge=1, description="RPM for identity-provider tokens (no API key).")
    jwt_default_tpm: int | None = Field(None, ge=1, description="TPM for identity-provider tokens (no API key).")
    key_cache_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a validated key skips Redis (revocations on other replicas take effect within this).",
    )
    key_stale_s: float = Field(300.0, ge=0, description="Seconds a validated key keeps working while Redis is down.")
    anonymous_rpm: int = Field(
        60, ge=1, description="Per-client-IP requests per minute on anonymous routes (POST /auth/token)."
    )
    default_max_tokens_estimate: int = Field(
        256, ge=1, description="Output tokens reserved against TPM/budget when a request sets no max_tokens."
    )
    cache_enabled: bool = Field(True, description="Exact-match response cache on or off.")
    cache_scope: Literal["key", "owner", "shared"] = Field(
        "key",
        description="Who shares cached answers: `key` (each API key its own: a key learns nothing of "
        "what others asked), `owner` (the keys of one owner, e.g. a team), or `shared` (every caller: more hits, "
        "but any key can tell from a cache hit that someone sent the same prompt).",
    )
    cache_ttl_s: int = Field(3600, ge=1, description="Lifetime of a cached answer.")
    cache_max_entry_bytes: int = Field(256 * 1024, ge=1024, description="Larger answers are not cached.")
    price_default: ModelPrice = Field(
        DEFAULT_PRICE,
        description='Hosted-API price per million tokens: {"input_per_million": ..., "output_per_million": ...}.',
    )
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Per-model hosted-API prices.")
    gpu_monthly_usd: float = Field(0.0, ge=0, description="Monthly cost of the GPU box, for the break-even volume.")
    budget_metric_interval_s: float = Field(
        30.0, gt=0, description="How often the share of its monthly budget each key has used is read for /metrics."
    )
    budget_metric_max_keys: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Most keys exported in gateway_key_budget_used_ratio (the ones nearest their budget); the "
        "rest are counted in gateway_key_budget_keys_unexported.",
    )
    budget_warning_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of a monthly budget at which the key's team is warned."
    )
    budget_critical_ratio: float = Field(
        0.95, gt=0, le=1, description="Share of a monthly budget at which the warning becomes critical."
    )

    def jwt_problem(self) -> str | None:
        """Why the JWT settings cannot work, or None (checked at start-up, not on the first token)."""
        asymmetric = sorted(set(self.jwt_algorithms) & ASYMMETRIC_ALGORITHMS)
        unknown = sorted(set(self.jwt_algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS)
        if unknown or not self.jwt_algorithms:
            return (
                f"GATEWAY_JWT_ALGORITHMS: unsupported {unknown or '[]'}; choose from "
                f"{sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS)}"
            )
        if asymmetric and not (self.jwt_public_key or self.jwt_jwks_url):
            return f"GATEWAY_JWT_ALGORITHMS has {asymmetric}: set GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL"
        return None
