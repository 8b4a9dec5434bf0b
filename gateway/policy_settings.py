"""Settings of the access and traffic policy (keys, JWT, limits, cache, cost); `Settings` inherits them.

Each maps to `GATEWAY_<NAME>` through the prefix `Settings` declares.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.cost import DEFAULT_PRICE, ModelPrice
from gateway.jwt_tokens import jwt_from_settings


class PolicySettings(BaseSettings):
    # Validation errors must not echo the input: it holds the secrets.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

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
    key_cache_s: float = Field(5.0, ge=0, description="Seconds a validated key skips Redis (revocations on "
                                                     "other replicas take effect within this).")
    key_stale_s: float = Field(300.0, ge=0, description="Seconds a validated key keeps working while Redis is down.")
    anonymous_rpm: int = Field(60, ge=1, description="Per-client-IP requests per minute on anonymous routes "
                                                     "(POST /auth/token).")
    default_max_tokens_estimate: int = Field(
        256, ge=1, description="Output tokens reserved against TPM/budget when a request sets no max_tokens.")
    cache_enabled: bool = Field(True, description="Exact-match response cache on or off.")
    cache_ttl_s: int = Field(3600, ge=1, description="Lifetime of a cached answer.")
    cache_max_entry_bytes: int = Field(256 * 1024, ge=1024, description="Larger answers are not cached.")
    redis_timeout_s: float = Field(0.25, gt=0, le=5, description="Socket timeout of every Redis call.")
    redis_retry_s: float = Field(3.0, gt=0, description="After a Redis failure, seconds before it is tried again.")
    price_default: ModelPrice = Field(
        DEFAULT_PRICE, description='Hosted-API price per million tokens: {"input_per_million": ..., '
                                   '"output_per_million": ...}.')
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Per-model hosted-API prices.")
    gpu_monthly_usd: float = Field(0.0, ge=0, description="Monthly cost of the GPU box, for the break-even volume.")

    @model_validator(mode="after")
    def _jwt_settings_usable(self) -> "PolicySettings":
        """Fail at start-up with a clear message, not on the first token."""
        if hasattr(self, "jwt_secret"):  # the full Settings (the secret lives there)
            jwt_from_settings(self)  # raises ValueError naming the missing setting
        return self
