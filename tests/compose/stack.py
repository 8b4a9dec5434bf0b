"""The project as a user runs it: a copy of the checkout, `make up`, `docker compose ...`.

The copy (tracked and untracked, not ignored, files) keeps the checkout clean of the .env,
backups and overrides a run writes. Images come from the engine; where it is a private one and
an image is missing, the stand-ins (../shared/standins, built from Debian packages) fill in.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.processes import REPO_ROOT
from tests.compose.engine import Engine

STANDINS = Path(os.environ.get("SLM_STANDINS_DIR", REPO_ROOT.parent / "shared" / "standins"))
PROJECT = "slm-stack-ctest"
MODEL = "smollm2:135m"
# Services the stand-ins cannot run (no Debian package, or a CUDA base image).
NOT_RUN = {
    "grafana": "no stand-in image",
    "jaeger": "no stand-in image (profile tracing)",
    "trainer": "CUDA base image (profile train)",
}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        src = REPO_ROOT / raw.decode()
        if src.is_file():
            target = dest / raw.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def poll(what: str, check: Callable[[], Any], deadline_s: float, every_s: float = 0.5) -> Any:
    """check()'s first truthy result; AssertionError with the last one after the deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last and not isinstance(last, Pending):
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}: {last}")


@dataclass
class Pending:
    """A falsy poll result that still says why (shown when the deadline passes)."""

    why: str

    def __bool__(self) -> bool:
        return False


@dataclass
class Stack:
    engine: Engine
    workdir: Path
    api_port: int
    env: dict[str, str] = field(default_factory=dict)
    volumes_before: set[str] = field(default_factory=set)  # the engine's volumes before the run

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v1"

    def run(
        self, argv: list[str], check: bool = True, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # As a user's shell runs it, not as a sub-make of `make test` (whose flags print directory lines).
        base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        done = subprocess.run(
            argv,
            cwd=self.workdir,
            env={**base, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} -> {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        return done

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run(["docker", "compose", *args], check=check, timeout=timeout)

    def make(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return self.run(["make", *args], timeout=timeout)

    def dotenv(self, name: str) -> str:
        for line in (self.workdir / ".env").read_text().splitlines():
            if line.startswith(name + "="):
                return line.split("=", 1)[1]
        raise KeyError(name)

    def secret(self, name: str) -> str:
        """A secret `make up` wrote into secrets/ (the file compose mounts at /run/secrets/NAME)."""
        return (self.workdir / "secrets" / name).read_text()

    def containers(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def exec(self, service: str, *argv: str, timeout: float = 60) -> str:
        return self.compose("exec", "-T", service, *argv, timeout=timeout).stdout

    def labelled(self, kind: str) -> list[str]:
        """Containers, networks or volumes the engine holds for this project."""
        verb = {"container": ["ps", "-aq"], "network": ["network", "ls", "-q"], "volume": ["volume", "ls", "-q"]}[kind]
        out = self.engine.run(*verb, "--filter", f"label=com.docker.compose.project={PROJECT}").stdout
        return out.split()


# Services that run once at start and exit 0 (compose waits for them: service_completed_successfully).
ONE_SHOT = {"alertmanager-config"}


def stack_state(stack: Stack, replicas: int) -> str | Pending:
    """'ok' once every started service is running and healthy, with `replicas` gateways."""
    rows = stack.containers()
    done = [r for r in rows if r["Service"] in ONE_SHOT and r["State"] == "exited" and r.get("ExitCode") == 0]
    rows = [r for r in rows if r not in done]
    bad = [
        f"{r['Service']} {r['State']} {r.get('Health', '')} exit {r.get('ExitCode')}"
        for r in rows
        if r["State"] in ("exited", "dead") or r.get("Health") == "unhealthy"
    ]
    if bad:
        raise AssertionError("failed: " + ", ".join(bad))
    healthy = [r["Service"] for r in rows if r["State"] == "running" and r.get("Health") in ("healthy", "")]
    if healthy.count("gateway") >= replicas and all(r["Service"] in healthy for r in rows):
        return "ok"
    return Pending(", ".join(f"{r['Service']}:{r['State']}/{r.get('Health', '')}" for r in rows))


def images_needed(stack: Stack) -> tuple[set[str], set[str]]:
    """(images compose would pull, images it builds) for the default profile."""
    model = json.loads(stack.compose("config", "--format", "json").stdout)
    built = {s.get("image", n) for n, s in model["services"].items() if "build" in s}
    pulled = {s["image"] for s in model["services"].values() if "image" in s} - built
    return pulled, built


def dockerfile_bases(workdir: Path) -> set[str]:
    """The images the project's Dockerfiles build FROM (stage names left out)."""
    bases: set[str] = set()
    for dockerfile in [*workdir.rglob("Dockerfile"), *workdir.rglob("*.Dockerfile")]:
        stages: set[str] = set()
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if words and words[0].upper() == "FROM":
                ref = next(w for w in words[1:] if not w.startswith("--"))
                if ref not in stages:
                    bases.add(ref)
                if len(words) >= 4 and words[-2].upper() == "AS":
                    stages.add(words[-1])
    return bases


def provide_images(stack: Stack, refs: Iterable[str]) -> str:
    """Pull what a registry gives; else, in a private engine only, build the stand-ins."""
    missing = sorted(r for r in refs if stack.engine.run("image", "inspect", r, check=False).returncode)
    if not missing:
        return "every image present"
    if stack.engine.run("pull", missing[0], check=False, timeout=60).returncode == 0:
        stack.compose("pull", "--ignore-buildable", timeout=1200)
        return f"pulled {', '.join(missing)}"
    if not stack.engine.private:
        raise AssertionError(f"missing {missing}, no registry answers, and stand-ins go only into a private engine")
    assert (STANDINS / "build.sh").exists(), f"no stand-ins at {STANDINS} (set SLM_STANDINS_DIR)"
    build = [str(STANDINS / "build.sh"), "--project", str(stack.workdir), "--follow-project"]
    listed = stack.run([*build, "--list"]).stdout  # "key -> tag" lines, tags as the project pins them
    keys = [k for k, _, tag in (line.split() for line in listed.splitlines() if " -> " in line) if tag in missing]
    no_standin = sorted(
        set(missing) - {tag for *_, tag in (line.split() for line in listed.splitlines() if " -> " in line)}
    )
    assert not no_standin, f"no stand-in for {no_standin}"
    stack.run([*build, "--missing", *keys], timeout=1800)
    return f"built stand-ins for {', '.join(missing)}"
