"""JWTs: mint short-lived HS256 tokens for API keys, verify tokens from us or an identity provider.

The accepted algorithms come from configuration, never from the token: the header's `alg` is
only used to pick which configured key to verify with, and only if it is in the pinned list.
HMAC algorithms are verified with the shared secret and nothing else; RSA/EC algorithms with
the configured public key or the JWKS, so a token HMAC-signed with the public key (the classic
key-confusion attack) cannot verify. `exp` is required; `nbf` and `iat` are honoured with
`leeway_s`; `iss`/`aud` are checked when configured.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import aiohttp
from jose import jwt
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from gateway.outbound import new_session
from gateway.settings import Settings
from gateway.settings.access import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS


class TokenInvalid(Exception):
    """Why a token was refused; the message goes back to the client in the 401."""


@dataclass(frozen=True, kw_only=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret: str | None = None
    public_key: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 30
    ttl_s: int = 900
    max_token_bytes: int = 8192

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown or not self.algorithms:
            raise ValueError(
                f"unsupported JWT algorithms {sorted(unknown) or '[]'}; "
                f"choose from {sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS)}"
            )
        if set(self.algorithms) & HMAC_ALGORITHMS and not self.secret:
            raise ValueError("an HS* algorithm is configured but GATEWAY_JWT_SECRET is empty")
        if set(self.algorithms) & ASYMMETRIC_ALGORITHMS and not (self.public_key or self.jwks_url):
            raise ValueError("an RS*/ES* algorithm needs GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL")

    @property
    def can_mint(self) -> bool:
        return "HS256" in self.algorithms and bool(self.secret)


def mint_token(
    config: JwtConfig,
    *,
    subject: str,
    key_id: str,
    scopes: frozenset[str],
    models: tuple[str, ...] | None,
    now: float | None = None,
) -> tuple[str, int]:
    """An HS256 token for an API key's identity; returns (token, lifetime in seconds)."""
    if not config.can_mint:
        raise TokenInvalid("token minting needs HS256 and GATEWAY_JWT_SECRET")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": subject,
        "key_id": key_id,
        "scope": " ".join(sorted(scopes)),
        "iat": issued,
        "nbf": issued,
        "exp": issued + config.ttl_s,
        "jti": secrets.token_hex(8),
    }
    if models is not None:
        claims["models"] = list(models)
    if config.issuer:
        claims["iss"] = config.issuer
    if config.audience:
        claims["aud"] = config.audience
    return jwt.encode(claims, config.secret, algorithm="HS256"), config.ttl_s


@dataclass
class JwksCache:
    """Public keys from an identity provider's JWKS URL, refreshed on an unknown `kid`.

    Its aiohttp session (the gateway's outbound conventions: the environment's proxy, verified
    TLS, a connect timeout) is opened on first use, inside the running loop, and closed by `aclose`.
    """

    url: str
    ttl_s: float = 600.0
    min_refresh_s: float = 30.0
    timeout_s: float = 3.0  # the whole fetch; a slow identity provider must not hold requests up
    _keys: list[dict] = field(default_factory=list)
    _fetched_at: float = float("-inf")
    _session: aiohttp.ClientSession | None = None

    async def key_for(self, kid: str | None) -> dict:
        key = self._match(kid)
        age = time.monotonic() - self._fetched_at
        if (key is None and age > self.min_refresh_s) or age > self.ttl_s:
            await self._refresh()
            key = self._match(kid)
        if key is None:
            raise TokenInvalid("token signed with a key the identity provider does not publish")
        return key

    def _match(self, kid: str | None) -> dict | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.get("kid") == kid), None)

    async def _refresh(self) -> None:
        if self._session is None:
            self._session = new_session(
                self.url, connect_timeout_s=self.timeout_s, total_timeout_s=self.timeout_s, max_connections=2
            )
        try:
            async with self._session.get(self.url) as response:
                response.raise_for_status()
                self._keys = list((await response.json(content_type=None))["keys"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            raise TokenInvalid(f"cannot fetch the identity provider's keys: {type(exc).__name__}") from exc
        finally:
            self._fetched_at = time.monotonic()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class JwtVerifier:
    """Verifies a compact JWT against the pinned configuration; returns its claims."""

    def __init__(self, config: JwtConfig, jwks: JwksCache | None = None) -> None:
        self.config = config
        self.jwks = jwks

    async def verify(self, token: str, now: float | None = None) -> dict:
        cfg = self.config
        if len(token) > cfg.max_token_bytes:
            raise TokenInvalid("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise TokenInvalid("malformed token") from exc
        alg = header.get("alg") if isinstance(header, dict) else None
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise TokenInvalid(f"token algorithm {alg!r} is not accepted")
        key = await self._key_for(alg, header.get("kid"))
        options = {
            "require_exp": True,
            "leeway": cfg.leeway_s,
            "verify_aud": cfg.audience is not None,
            "require_aud": cfg.audience is not None,
            "require_iss": cfg.issuer is not None,
        }
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=cfg.audience, issuer=cfg.issuer, options=options)
        except ExpiredSignatureError as exc:
            raise TokenInvalid("token expired") from exc
        except JWTClaimsError as exc:
            raise TokenInvalid(f"token claims rejected: {exc}") from exc
        except JOSEError as exc:
            raise TokenInvalid(f"token rejected: {exc}") from exc
        self._check_times(claims, time.time() if now is None else now)
        return claims

    async def _key_for(self, alg: str, kid: object) -> str | dict:
        if alg in HMAC_ALGORITHMS:
            return self.config.secret or ""
        if self.config.public_key:
            return self.config.public_key
        if self.jwks is None:
            raise TokenInvalid("no public key configured for this algorithm")
        key = await self.jwks.key_for(kid if isinstance(kid, str) else None)
        if key.get("alg") not in (None, alg):
            raise TokenInvalid("token algorithm does not match the identity provider's key")
        return key

    def _check_times(self, claims: dict, now: float) -> None:
        """python-jose checks `exp`/`nbf` values; we also refuse a non-numeric or future `iat`."""
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat > now + self.config.leeway_s):
            raise TokenInvalid("token issued in the future")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenInvalid("token has no subject")


def jwt_from_settings(settings: Settings) -> JwtConfig | None:
    """The pinned JWT configuration, or None when no secret / public key / JWKS is configured (API keys
    only). The settings were checked at start-up (`AccessSettings.jwt_problem`)."""
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    algorithms = tuple(settings.jwt_algorithms)
    asymmetric = set(algorithms) & ASYMMETRIC_ALGORITHMS
    if not (secret or asymmetric):
        return None
    if not secret:  # only asymmetric verification configured
        algorithms = tuple(a for a in algorithms if a not in HMAC_ALGORITHMS)
    return JwtConfig(
        algorithms=algorithms,
        secret=secret,
        public_key=settings.jwt_public_key,
        jwks_url=settings.jwt_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        ttl_s=settings.jwt_ttl_s,
    )
