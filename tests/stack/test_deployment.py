"""Deployment mistakes found by running the stack, pinned by static checks.

Each test names what it guards against. The compose tier (tests/compose/) proves the runtime side on a
real engine; these run in seconds with Compose's own parser (`docker compose config`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from gateway.settings.files import FILE_SETTINGS, SUFFIX
from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import (
    BASE,
    GPU,
    compose_binary,
    compose_config,
    env_example,
    generated_env,
    make_env_module,
    run_compose,
)

needs_compose = pytest.mark.skipif(compose_binary() is None, reason="no docker compose v2 binary installed")
DOCKERFILES = sorted(
    p
    for p in [*REPO_ROOT.rglob("Dockerfile"), *REPO_ROOT.rglob("*.Dockerfile")]
    if ".venv" not in p.parts and "shared" not in p.parts
)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return compose_config(generated_env(), files=(BASE,))["services"]


@needs_compose
def test_nginx_confd_tmpfs_is_owned_by_nginx(services: dict[str, dict[str, Any]]) -> None:
    # A mode alone is ignored by runc < 1.1.8 on a directory the image has (runc#3911).
    confd = [t for t in services["nginx"].get("tmpfs", []) if t.split(":")[0] == "/etc/nginx/conf.d"]
    assert len(confd) == 1 and {"uid=101", "gid=101"} <= set(confd[0].split(":", 1)[1].split(",")), confd
    assert not [v for v in services["nginx"].get("volumes", []) if v["target"] == "/etc/nginx/conf.d"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_dockerfile_makes_buildkit_fetch_a_frontend(dockerfile: Path) -> None:
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.I | re.M)


@needs_compose
def test_model_sync_pulls_the_default_model_and_ollama_gets_the_proxy(services: dict[str, dict[str, Any]]) -> None:
    sync = services["model-sync"]
    assert "--pull=smollm2:135m" in sync["command"] and "--ready-file=/tmp/synced" in sync["command"]
    assert any(v["target"] == "/runs" and v.get("read_only") for v in sync["volumes"])
    env = services["ollama"]["environment"]
    assert {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} <= set(env) and "ollama" in env["NO_PROXY"]


@needs_compose
def test_each_image_is_built_by_one_service(services: dict[str, dict[str, Any]]) -> None:
    builders: dict[str, list[str]] = {}
    for name, svc in services.items():
        if "build" in svc:
            builders.setdefault(svc["image"], []).append(name)
    assert all(len(v) == 1 for v in builders.values()), builders


def compose_in(folder: Path) -> dict[str, Any]:
    """`docker compose config` as a plain command in `folder` would see it (its .env included)."""
    binary = compose_binary()
    assert binary
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    done = subprocess.run(
        [*binary, "config", "--format", "json"], cwd=folder, capture_output=True, text=True, env=clean, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_compose
def test_the_gpu_override_sticks_for_every_later_command(tmp_path: Path) -> None:
    for f in (BASE, GPU, REPO_ROOT / ".env.example"):
        shutil.copy(f, tmp_path / f.name)
    make_env = make_env_module()
    env = tmp_path / ".env"
    env.write_text(make_env.render_env((tmp_path / ".env.example").read_text()))
    assert "devices" not in str(compose_in(tmp_path)["services"]["ollama"].get("deploy"))
    subprocess.run(["python3", str(REPO_ROOT / "scripts" / "make_env.py"), "--gpu", "on", str(env)], check=True)
    gpu = compose_in(tmp_path)["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["capabilities"] == ["gpu"]
    subprocess.run(["python3", str(REPO_ROOT / "scripts" / "make_env.py"), "--gpu", "off", str(env)], check=True)
    assert "devices" not in str(compose_in(tmp_path)["services"]["ollama"].get("deploy"))
    assert "GATEWAY_REPLICAS=" in env.read_text()  # the other settings survive the switch


def make_dry(*args: str) -> str:
    done = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_up_builds_and_only_destroy_deletes_volumes() -> None:
    up = make_dry("up")
    assert re.search(r"docker compose up .*--build", up) and "--wait" in up
    assert "--gpu on" in make_dry("up", "GPU=1") and "--gpu off" in make_dry("up", "GPU=0")
    down = make_dry("down")
    assert "docker compose" in down and " -v" not in down and "--volumes" not in down
    assert re.search(r"docker compose --profile '\*' down -v", make_dry("destroy"))


@needs_compose
def test_plain_down_v_reaches_every_volume() -> None:
    # `down -v` without profiles removes the volumes the default profile's services use.
    every = compose_config(generated_env(), files=(BASE,))["volumes"]
    done = run_compose(["config", "--format", "json"], generated_env(), files=(BASE,), profiles=())
    assert done.returncode == 0, done.stderr
    default = json.loads(done.stdout)["volumes"]
    assert set(default) == set(every), set(every) - set(default)


def setting_env_names() -> set[str]:
    """Every environment name the gateway's settings read (one per field: its alias or GATEWAY_<NAME>)."""
    from gateway.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.add(str(alias.choices[0]))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def otel_env_names() -> set[str]:
    """OTEL_* the gateway's own code reads, plus the SDK's sampler pair (how much to trace)."""
    from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG

    found = {OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG}
    for path in (REPO_ROOT / "gateway").rglob("*.py"):
        found |= set(re.findall(r"""environ(?:\.get)?[(\[]\s*["'](OTEL_[A-Z_]+)["']""", path.read_text()))
    return found


@needs_compose
def test_compose_passes_every_setting_the_gateway_reads(services: dict[str, dict[str, Any]]) -> None:
    wanted = setting_env_names() | otel_env_names()
    assert "GATEWAY_ADMIN_KEY" in wanted and "OTEL_TRACES_SAMPLER_ARG" in wanted  # the derivation works
    # A secret is passed as its file (FILE_SETTINGS' `_FILE` form), never as a value.
    passed = set(services["gateway"]["environment"])
    passed |= {name for name in FILE_SETTINGS.values() if f"{name}{SUFFIX}" in passed}
    assert not wanted - passed, f"the gateway reads, compose never passes: {sorted(wanted - passed)}"
    assert services["gateway"]["environment"].get("GATEWAY_WORKERS") == "1"
    undocumented = {n for n in wanted - passed} | {
        n for n in passed if n.startswith("OTEL_") and n not in env_example() and n != "OTEL_SERVICE_NAME"
    }
    assert not undocumented, undocumented


@needs_compose
def test_nginx_and_the_gateways_get_enough_open_files(services: dict[str, dict[str, Any]]) -> None:
    assert int(env_example()["NOFILE_LIMIT"]) >= 65536
    for name in ("nginx", "gateway"):
        nofile = services[name]["ulimits"]["nofile"]
        assert nofile["soft"] == nofile["hard"] == int(env_example()["NOFILE_LIMIT"]), (name, nofile)


@needs_compose
def test_monitoring_starts_without_waiting_for_the_gateways(services: dict[str, dict[str, Any]]) -> None:
    def waits_for(name: str) -> set[str]:
        deps = set(services.get(name, {}).get("depends_on", {}))
        return deps | {d for dep in deps for d in waits_for(dep)}

    for name in ("prometheus", "grafana"):
        assert "gateway" not in waits_for(name) and "nginx" not in waits_for(name), (name, waits_for(name))


@needs_compose
def test_redis_has_the_lua_use_after_free_fix(services: dict[str, dict[str, Any]]) -> None:
    match = re.match(r"redis:(\d+)\.(\d+)\.(\d+)", services["redis"]["image"])
    assert match and tuple(map(int, match.groups())) >= (7, 4, 6), services["redis"]["image"]


def test_trainer_image_pins_its_set_has_headers_and_copies_code_last() -> None:
    text = (REPO_ROOT / "trainer" / "Dockerfile").read_text()
    build, runtime = text.split("\nFROM ", 2)[1:]
    assert "python3.12-dev" in runtime.split("\n", 3)[2] + runtime  # Triton compiles against Python.h
    installs = re.findall(r"pip install ([^\n&]+)", build)
    resolving = [i for i in installs if "--no-deps" not in i]
    assert resolving and all("-c trainer/constraints.txt" in i for i in resolving), installs
    assert build.index("COPY trainer ./trainer") > max(build.index(i) for i in resolving)
    assert "PIP_CONSTRAINT" not in text  # it would also bind the build backend's own setuptools
