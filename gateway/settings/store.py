"""Settings of the inference log (captured answers, feedback, judge runs) and of capture."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings


def default_sqlite_path() -> str:
    """$XDG_DATA_HOME/slm-stack/gateway.db, else ~/.local/share/slm-stack/gateway.db: one file per user,
    whatever the working directory, so the gateway and `python -m gateway judge|export|migrate` started
    from anywhere read and write the same database."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "slm-stack" / "gateway.db")


class StoreSettings(BaseSettings):
    database_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "GATEWAY_DATABASE_URL"),
        description="postgresql://user:password@host:5432/db. Unset: an embedded SQLite file "
        "(GATEWAY_SQLITE_PATH) on one host, the development default.",
    )
    database_password: SecretStr | None = Field(
        None,
        description="Database password, put into DATABASE_URL (which then names none) at start: the URL stays "
        "free of secrets, the password can come from a file (GATEWAY_DATABASE_PASSWORD_FILE).",
    )
    sqlite_path: str = Field(
        default_factory=default_sqlite_path,
        description="The embedded database file when DATABASE_URL is unset (default: "
        "$XDG_DATA_HOME/slm-stack/gateway.db, else ~/.local/share/slm-stack/gateway.db; a relative "
        "path is taken from the working directory at start). Every process of one host given the "
        "same file shares it: WAL mode, and a lock file serialises migrations.",
    )
    migrate_on_start: bool = Field(
        True, description="Apply database migrations at start-up (one replica at a time: a Postgres advisory lock)."
    )
    capture_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Share of every answer kept in the inference "
        "log (routes' `capture` and GATEWAY_CAPTURE_KEYS can raise it). 0: off.",
    )
    capture_keys: dict[str, float] = Field(
        default_factory=dict, description='Per API key id, the share captured, e.g. {"k_abc": 100}.'
    )
    capture_queue: int = Field(
        10_000,
        ge=1,
        description="Captured answers waiting to be written at most; more "
        'are dropped (gateway_capture_dropped_total{reason="queue_full"}).',
    )
    capture_batch: int = Field(200, ge=1, le=5000, description="Rows written per database round trip at most.")
    capture_retry_s: float = Field(1.0, gt=0, description="Pause before retrying a batch the database did not take.")
    capture_retention_days: float = Field(
        30.0, gt=0, description="Captured inferences and feedback older than this are deleted."
    )
    capture_retention_interval_s: float = Field(
        3600.0, gt=0, description="How often retention runs (and the judge gauges are refreshed)."
    )

    @field_validator("sqlite_path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        """Resolved once, so the start-up log names the file and a later chdir cannot move it."""
        return v if v == ":memory:" else str(Path(v).expanduser().resolve())
