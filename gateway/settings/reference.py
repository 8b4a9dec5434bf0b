"""The settings reference, rendered from the `Settings` fields (description, default): the gateway block
of `.env.example` and the tables of docs/configuration.md. The fields are the one source; this writes the
two files, and a test fails when they drift.

    python -m gateway.settings.reference --write     # regenerate both files in place
    python -m gateway.settings.reference --check     # exit 1 when either is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.settings import SECTIONS, Settings
from gateway.settings.files import FILE_SETTINGS, SUFFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO_ROOT / ".env.example"
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"
BEGIN = "# >>> gateway settings: generated from gateway/settings/ by `python -m gateway.settings.reference --write`"
END = "# <<< gateway settings"
DOC_BEGIN = "<!-- settings: generated from gateway/settings/ by `python -m gateway.settings.reference --write` -->"
DOC_END = "<!-- /settings -->"
# Set by docker-compose.yml itself (the passwords as files of its secrets), not taken from .env.
SET_BY_COMPOSE = frozenset(
    {"env", "host", "port", "backends", "redis_url", "database_url", "redis_password", "database_password"}
)
# Defaults computed where the gateway runs (the SQLite file under the user's data folder).
MACHINE_DEPENDENT = frozenset({"sqlite_path"})
# The generated secrets: files in secrets/ (scripts/make_env.py writes them), never values in .env.
SECRETS = frozenset({"admin_key", "jwt_secret", "key_pepper", "redis_password", "database_password"})


def env_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"GATEWAY_{name.upper()}"


def default_text(name: str, info: FieldInfo) -> str:
    """The default as an environment value ("" for none, or for one that depends on the machine)."""
    if name in MACHINE_DEPENDENT:
        return ""
    value: Any = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if value is None or isinstance(value, SecretStr):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump())
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def fields() -> list[tuple[str, list[tuple[str, FieldInfo]]]]:
    """(section title, [(field name, field)]) in reference order; every Settings field exactly once."""
    out = [(title, list(section.model_fields.items())) for title, section in SECTIONS]
    listed = [name for _, items in out for name, _ in items]
    assert sorted(listed) == sorted(Settings.model_fields), "a Settings field is in no section (SECTIONS)"
    return out


def env_block() -> str:
    lines = [BEGIN]
    for title, items in fields():
        chosen = [(n, i) for n, i in items if n not in SET_BY_COMPOSE and n not in SECRETS]
        if not chosen:
            continue
        lines += ["", f"# -- {title} " + "-" * max(0, 96 - len(title))]
        for name, info in chosen:
            lines += textwrap.wrap(
                info.description or "", 100, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
            )
            lines.append(f"{env_name(name, info)}={default_text(name, info)}")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def doc_tables() -> str:
    lines = [DOC_BEGIN]
    for title, items in fields():
        lines += ["", f"### {title}", "", "| Variable | Default | What it does |", "|---|---|---|"]
        for name, info in items:
            default = default_text(name, info)
            shown = "(secret)" if name in SECRETS or name == "database_url" else f"`{default}`" if default else "unset"
            variable = f"`{env_name(name, info)}`"
            if name in FILE_SETTINGS:
                variable += f" or `{FILE_SETTINGS[name]}{SUFFIX}`"
            lines.append(f"| {variable} | {_cell(shown)} | {_cell(info.description or '')} |")
    lines += ["", DOC_END]
    return "\n".join(lines) + "\n"


def _replace(text: str, begin: str, end: str, block: str, path: Path) -> str:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"{path}: the markers of the generated block are missing ({begin!r} ... {end!r})")
    return text[:start] + block + text[stop + len(end) + 1 :]


def rendered() -> dict[Path, str]:
    """Each file as it should read."""
    return {
        ENV_EXAMPLE: _replace(ENV_EXAMPLE.read_text(), BEGIN, END, env_block(), ENV_EXAMPLE),
        CONFIGURATION: _replace(CONFIGURATION.read_text(), DOC_BEGIN, DOC_END, doc_tables(), CONFIGURATION),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.settings.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="regenerate the files in place")
    p.add_argument("--check", action="store_true", help="exit 1 when a file is out of date")
    args = p.parse_args(argv)
    stale = [path for path, text in rendered().items() if path.read_text() != text]
    if args.write:
        for path, text in rendered().items():
            path.write_text(text)
        return 0
    for path in stale:
        print(
            f"{path.relative_to(REPO_ROOT)} is out of date: python -m gateway.settings.reference --write",
            file=sys.stderr,
        )
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
