"""The compose tier's engine and stack: started once per session, torn down (`down -v`) at the end."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.engine import Engine, EngineUnavailable, get_engine
from tests.compose.stack import (
    NOT_RUN,
    PROJECT,
    STANDINS,
    Stack,
    copy_checkout,
    dockerfile_bases,
    free_ports,
    images_needed,
    provide_images,
)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        found = get_engine()
    except EngineUnavailable as exc:
        pytest.skip(f"compose tier: {exc}")
    yield found
    found.stop()


@pytest.fixture(scope="session")
def stack(engine: Engine) -> Iterator[Stack]:
    """The project copied aside, images provided, compose pointed at it; not started yet."""
    workdir = Path(tempfile.mkdtemp(prefix="slm-compose-"))
    copy_checkout(workdir)
    api_port, tls_port = free_ports(2)
    files = ["docker-compose.yml"]
    if engine.private:
        # What the stand-ins need and nothing else (../shared/standins/README.md).
        shutil.copy(STANDINS / "compose.standin-override.yml", workdir / "standin-override.yml")
        files.append("standin-override.yml")
    # No NOFILE_LIMIT here: `make up` fits the one it writes into .env to the engine (scripts/make_env.py).
    env = {
        **engine.env,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "COMPOSE_FILE": ":".join(files),
        "DOCKER_BUILDKIT": "0",
        "API_BIND": "127.0.0.1",
        "API_PORT": str(api_port),
        "API_TLS_PORT": str(tls_port),
        "MODEL_SYNC_INTERVAL_S": "5",  # a replica added under test catches up within seconds
    }
    s = Stack(engine, workdir, api_port, env)
    print(
        f"\ncompose tier: {engine.description}; project {PROJECT}; API on 127.0.0.1:{api_port}; "
        f"COMPOSE_FILE={env['COMPOSE_FILE']}; not run here: " + ", ".join(f"{k} ({v})" for k, v in NOT_RUN.items())
    )
    s.compose("--profile", "*", "down", "-v", "--remove-orphans", "-t", "2", check=False)  # an earlier run's leftovers
    s.volumes_before = set(engine.run("volume", "ls", "-q").stdout.split())
    t0 = time.monotonic()
    pulled, _built = images_needed(s)
    # The trainer's CUDA base has no stand-in and the trainer is not run here (NOT_RUN).
    bases = {b for b in dockerfile_bases(workdir) if not b.startswith("nvidia/cuda")}
    how = provide_images(s, pulled | bases)
    print(f"compose tier: images: {how} ({time.monotonic() - t0:.0f} s)")
    yield s
    s.compose("--profile", "*", "down", "-v", "--remove-orphans", "-t", "2", check=False, timeout=180)
    shutil.rmtree(workdir, ignore_errors=True)
