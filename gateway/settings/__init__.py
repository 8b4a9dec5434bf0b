"""Gateway configuration: environment variables (or `.env`), validated once at start-up.

`Settings` is the sections below in one object; each field maps to `GATEWAY_<NAME>` unless an alias
says otherwise (REDIS_URL, DATABASE_URL). The secrets also take `<NAME>_FILE`, a file holding the value
(gateway/settings/files.py); the Redis and database passwords given apart are put into their URLs. The
fields' descriptions and defaults are the only description of the settings:
`python -m gateway.settings.reference` renders them into `.env.example` and docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.settings.access import AccessSettings, ModelPrice
from gateway.settings.files import SecretFilesSource
from gateway.settings.replicas import BackendSpec, ReplicaSettings, RoutingPolicy
from gateway.settings.requests import RequestSettings
from gateway.settings.server import ServerSettings
from gateway.settings.store import StoreSettings

__all__ = ["BackendSpec", "ModelPrice", "RoutingPolicy", "SECTIONS", "Settings"]

# Values that must never reach production: they are in docs and examples, so attackers know them too.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "admin", "test"})
# The sections in the order the reference lists them.
SECTIONS = (
    ("Server", ServerSettings),
    ("Replicas and routing", ReplicaSettings),
    ("What one request may ask for", RequestSettings),
    ("Access: keys, tokens, limits, cache, cost", AccessSettings),
    ("Inference log and capture", StoreSettings),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_password(url: str, password: str, url_name: str, password_name: str) -> str:
    """`url` with `password` in its user part (percent-encoded); an error when the URL names one already."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"{password_name} is set: {url_name} must be a URL such as scheme://host:port/...")
    if parts.password is not None:
        raise ValueError(f"{url_name} names a password and {password_name} gives one too: give it one way")
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Settings(ServerSettings, ReplicaSettings, RequestSettings, AccessSettings, StoreSettings):
    # Validation errors must not echo the input: it holds the secrets.
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,  # compose forwards unset tunables as "": they mean "use the default"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = dotenv_settings.env_vars if isinstance(dotenv_settings, DotEnvSettingsSource) else {}
        files = SecretFilesSource(settings_cls, dotenv)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _passwords_into_urls(self) -> Settings:
        if self.redis_password is not None:
            if not self.redis_url:
                raise ValueError("GATEWAY_REDIS_PASSWORD is set but REDIS_URL is not")
            self.redis_url = with_password(
                self.redis_url, self.redis_password.get_secret_value(), "REDIS_URL", "GATEWAY_REDIS_PASSWORD"
            )
        if self.database_password is not None:
            if self.database_url is None:
                raise ValueError("GATEWAY_DATABASE_PASSWORD is set but DATABASE_URL is not")
            self.database_url = SecretStr(
                with_password(
                    self.database_url.get_secret_value(),
                    self.database_password.get_secret_value(),
                    "DATABASE_URL",
                    "GATEWAY_DATABASE_PASSWORD",
                )
            )
        return self

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        problem = self.jwt_problem()
        if problem is not None:
            raise ValueError(problem)
        if self.auth == "none" and not is_loopback(self.host):
            raise ValueError(
                "GATEWAY_AUTH=none opens every endpoint to every caller: it is accepted only with "
                f"GATEWAY_HOST on a loopback address (127.0.0.1, ::1), not {self.host!r}"
            )
        if self.budget_warning_ratio >= self.budget_critical_ratio:
            raise ValueError(
                "GATEWAY_BUDGET_WARNING_RATIO must be below GATEWAY_BUDGET_CRITICAL_RATIO "
                f"({self.budget_warning_ratio} >= {self.budget_critical_ratio})"
            )
        if self.env == "production":
            if self.auth == "none":
                raise ValueError("GATEWAY_AUTH=none is refused in production")
            for field in ("admin_key", "jwt_secret", "key_pepper"):
                value: SecretStr | None = getattr(self, field)
                plain = value.get_secret_value() if value else ""
                if plain.lower() in PLACEHOLDER_SECRETS or len(plain) < 16:
                    raise ValueError(f"GATEWAY_{field.upper()} must be set to a real secret (16+ chars) in production")
        return self
