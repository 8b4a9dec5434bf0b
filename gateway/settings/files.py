"""Secrets from files: `<VAR>_FILE` names a file holding the value of `<VAR>`.

The convention of the official Postgres (`POSTGRES_PASSWORD_FILE`) and Grafana (`..._PASSWORD__FILE`) images
and of Docker's own secrets (mounted at /run/secrets/<name>): the value never sits in the environment, where
`docker inspect` and /proc/<pid>/environ show it. pydantic-settings' own `secrets_dir` reads files named after
the fields from one folder, not a path per variable, hence this small source.

- `GATEWAY_ADMIN_KEY_FILE=/run/secrets/gateway_admin_key` gives `GATEWAY_ADMIN_KEY` (and so on for every name
  in `FILE_SETTINGS`);
- one trailing line break is not part of the value (`echo secret > file` writes one);
- the variable and its `_FILE` form both set, a file missing, unreadable or empty: a `SettingsError` that says
  which variable and why (the CLI prints it without a traceback).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

# Field -> the variable whose `_FILE` form names a file with its value.
FILE_SETTINGS = {
    "admin_key": "GATEWAY_ADMIN_KEY",
    "jwt_secret": "GATEWAY_JWT_SECRET",
    "key_pepper": "GATEWAY_KEY_PEPPER",
    "redis_password": "GATEWAY_REDIS_PASSWORD",
    "database_password": "GATEWAY_DATABASE_PASSWORD",
}
SUFFIX = "_FILE"


def read_secret_file(path: str, variable: str) -> str:
    """The value in `path` without its trailing line break; SettingsError naming `variable` when unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{variable}={path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}={path}: not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SettingsError(f"{variable}={path}: the file is empty")
    return value


def secret_from_environment(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """`name`'s value from the environment, or from the file `name_FILE` names; None when neither is set.

    For the commands outside the settings (the CLI's admin key, the trainer's): the same rules as the source below.
    """
    env = os.environ if environ is None else environ
    value, path = env.get(name) or "", env.get(name + SUFFIX) or ""
    if value and path:
        raise SettingsError(f"{name} and {name}{SUFFIX} are both set: give the value one way")
    if path:
        return read_secret_file(path, name + SUFFIX)
    return value or None


class SecretFilesSource(PydanticBaseSettingsSource):
    """The `_FILE` forms of `FILE_SETTINGS`, from the environment or the `.env` file the settings read."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: Mapping[str, str | None]) -> None:
        super().__init__(settings_cls)
        # The .env source keeps every variable of the file, lower-cased (the settings are case-insensitive).
        self.dotenv = {k.upper(): v for k, v in dotenv.items() if v}

    def lookup(self, name: str) -> str:
        return os.environ.get(name) or self.dotenv.get(name) or ""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field, name in FILE_SETTINGS.items():
            path = self.lookup(name + SUFFIX)
            if not path:
                continue
            if self.lookup(name):
                raise SettingsError(f"{name} and {name}{SUFFIX} are both set: give the value one way")
            values[field] = read_secret_file(path, name + SUFFIX)
        return values
