#!/usr/bin/env python3
"""Print a .env for docker compose: .env.example with every secret freshly generated.

    python3 scripts/make_env.py --output .env   (what `make up` runs when there is no .env)
    python3 scripts/make_env.py > .env          (the same, printed)
    python3 scripts/make_env.py --gpu on .env   (`make up GPU=1`: the GPU override sticks)

Standard library only, so it runs before any virtualenv exists. Values that are not secrets
are copied from .env.example unchanged; the note on stderr says where the operator finds the
bootstrap admin key and the Grafana password.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"

# Each secret's generator. URL-safe alphabets only: REDIS_PASSWORD is embedded in REDIS_URL
# and all of them pass through compose interpolation, where `$` would need escaping.
SECRET_GENERATORS: dict[str, Callable[[], str]] = {
    "GATEWAY_ADMIN_KEY": lambda: "sk-admin-" + secrets.token_urlsafe(32),
    "GATEWAY_JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "GATEWAY_KEY_PEPPER": lambda: secrets.token_urlsafe(32),
    "REDIS_PASSWORD": lambda: secrets.token_hex(32),
    "POSTGRES_PASSWORD": lambda: secrets.token_hex(32),  # embedded in the gateways' DATABASE_URL
    "GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(24),
}


class EnvTemplateError(ValueError):
    """.env.example does not declare exactly the secrets this script generates."""


def render_env(example: str, generators: dict[str, Callable[[], str]] = SECRET_GENERATORS) -> str:
    """Copy `example` line by line, replacing each secret's (empty) value with a new one."""
    seen: set[str] = set()
    out: list[str] = []
    for line in example.splitlines():
        key, sep, _value = line.partition("=")
        key = key.strip()
        if sep and not line.lstrip().startswith("#") and key in generators:
            if key in seen:
                raise EnvTemplateError(f"{key} is declared twice in .env.example")
            seen.add(key)
            line = f"{key}={generators[key]()}"
        out.append(line)
    missing = sorted(set(generators) - seen)
    if missing:
        raise EnvTemplateError(f".env.example does not declare {', '.join(missing)}")
    return "\n".join(out) + "\n"


def write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only; never overwrite an existing .env (its
    secrets are already in Redis and Grafana's volumes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


GPU_FILES = "docker-compose.yml:docker-compose.gpu.yml"


def set_gpu(env_text: str, on: bool) -> str:
    """`env_text` with COMPOSE_FILE naming the GPU override (on) or no COMPOSE_FILE (off).

    Compose reads COMPOSE_FILE from .env, so every later plain `up`, `--scale` or `run` keeps
    the override; a `-f` on one command line would be lost on the next.
    """
    lines = [line for line in env_text.splitlines() if not line.startswith("COMPOSE_FILE=")]
    if on:
        lines.append(f"COMPOSE_FILE={GPU_FILES}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="template (default: .env.example)")
    parser.add_argument("--output", type=Path, help="write this file (mode 0600) instead of printing")
    parser.add_argument(
        "--gpu",
        nargs=2,
        metavar=("on|off", "ENV_FILE"),
        help="set or clear the GPU override (COMPOSE_FILE) in an existing .env, then exit",
    )
    args = parser.parse_args(argv)
    if args.gpu:
        state, env_path = args.gpu[0], Path(args.gpu[1])
        if state not in ("on", "off"):
            parser.error("--gpu takes on or off")
        env_path.write_text(set_gpu(env_path.read_text(), state == "on"))
        print(f"make_env: GPU override {state} in {env_path} (COMPOSE_FILE)", file=sys.stderr)
        return 0
    try:
        text = render_env(args.example.read_text())
        if args.output:
            write_private(args.output, text)
        else:
            sys.stdout.write(text)
    except FileExistsError:
        print(f"make_env: {args.output} exists; remove it first to generate new secrets", file=sys.stderr)
        return 1
    except (OSError, EnvTemplateError) as exc:
        print(f"make_env: {exc}", file=sys.stderr)
        return 1
    print(
        "make_env: generated secrets. Bootstrap admin API key: GATEWAY_ADMIN_KEY in .env; "
        "Grafana: user `admin`, password GRAFANA_ADMIN_PASSWORD in .env.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
