"""Start real processes on free loopback ports for tests, wait for them by polling, stop them."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives outgoing connections, so
    between this call and the server's bind a client socket could take it (seen: nginx "Address
    already in use"). Below that range only listeners bind; ports handed out recently are skipped.
    """
    low = min(_ephemeral_low(), 32768)
    if low < 4096:  # an ephemeral range that starts this low leaves no room below it: let the kernel pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def find_binary(name: str) -> str:
    """Debian puts some daemons in /usr/sbin, which is not always on PATH."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if not found:
        raise RuntimeError(f"{name} is not installed; `make test` installs it (apt, as root)")
    return found


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """`wait_until` for tests on the event loop: poll `condition` until it holds, at most `timeout` seconds
    (a bounded wait for a socket event, not a fixed sleep)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds or if `proc` died."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise TimeoutError(f"{what}: not ready after {timeout}s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code < 500


@dataclass
class Service:
    """A process started by a test, with its port and a log file for post-mortems."""

    name: str
    argv: Sequence[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO_ROOT
    log_dir: Path | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    host: str = "127.0.0.1"  # the loopback address it listens on

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Service:
        log_dir = self.log_dir or Path(os.environ.get("TEST_LOG_DIR", "/tmp/slm-test-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}-{self.host}-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_port(self, timeout: float = 30.0) -> Service:
        wait_until(lambda: port_open(self.port, self.host), timeout=timeout, what=self.name, proc=self.proc)
        return self

    def wait_http(self, path: str, timeout: float = 30.0) -> Service:
        wait_until(lambda: http_ok(self.url + path), timeout=timeout, what=self.name, proc=self.proc)
        return self

    def start_and_wait_http(self, path: str, timeout: float = 30.0) -> Service:
        """Start, poll `path` until it answers; if it never does, kill it and fail with its log."""
        self.start()
        try:
            self.wait_http(path, timeout=timeout)
        except Exception:
            self.kill()
            raise RuntimeError(f"{self.name} did not start; its log:\n{self.logs()}") from None
        return self

    def kill(self) -> None:
        """Hard kill (SIGKILL): what a crash looks like to the peers."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.proc:
            return
        if self.proc.poll() is not None:
            if self.proc.returncode < 0 and self.proc.returncode != -signal.SIGKILL:
                # died of a signal nobody here sent (a crash): leave its log where pytest shows it
                print(
                    f"{self.name} died of signal {-self.proc.returncode}; its log ends:\n{self.logs()[-3000:]}",
                    file=sys.stderr,
                )
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def python_service(name: str, args: Sequence[str], port: int, env: dict[str, str] | None = None) -> Service:
    """A Python module run with the interpreter running the tests (the project's venv)."""
    return Service(name=name, argv=[sys.executable, *args], port=port, env=env or {})


def redis_service(port: int | None = None, *, extra: Sequence[str] = ()) -> Service:
    port = port or free_port()
    argv = [
        find_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        *extra,
    ]
    return Service(name="redis", argv=argv, port=port)
