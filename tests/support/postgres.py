"""A real PostgreSQL server from Debian's `postgresql` package, in a fresh data directory on a free port.

    with running_postgres() as pg:
        pg.url          # postgresql://postgres@127.0.0.1:PORT/postgres
        pg.stop(); pg.start()   # an outage, for the capture tests

initdb refuses to run as root: as root the server runs as the `postgres` system user (runuser).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import free_port, port_open, wait_until


def pg_bin(name: str) -> str:
    """initdb/pg_ctl live in /usr/lib/postgresql/<major>/bin, not on PATH; the newest major wins."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's `postgresql` package (`make system-deps`)")
    return found


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Postgres:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.data_dir / "server.log"), "-o", opts, "-w", "start")
        wait_until(lambda: port_open(self.port), timeout=30, what="postgres")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        subprocess.run(
            _as_server_user([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]),
            check=True,
            timeout=30,
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="slm-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_server_user(
            [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    pg = Postgres(data_dir=data, port=free_port())
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
