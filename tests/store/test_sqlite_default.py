"""Without DATABASE_URL: one SQLite file per user in a documented place, whatever the working directory,
so two gateway processes and the store's commands started from elsewhere all use the same database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import Settings
from testkit.ollama import running_ollama_double
from tests.store.support import MODEL, chat
from tests.support.gateway import ADMIN_KEY, running_gateway


def test_the_default_file_is_under_xdg_data_home_else_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SQLITE_PATH", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings(_env_file=None).sqlite_path == str(tmp_path / "xdg" / "slm-stack" / "gateway.db")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings(_env_file=None).sqlite_path == str(
        tmp_path / "home" / ".local" / "share" / "slm-stack" / "gateway.db"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_SQLITE_PATH", "here.db")  # a relative path: from the working directory, resolved
    assert Settings(_env_file=None).sqlite_path == str(tmp_path / "here.db")
    monkeypatch.setenv("GATEWAY_SQLITE_PATH", "")  # compose forwards unset as "": the default
    assert Settings(_env_file=None).sqlite_path.endswith("/.local/share/slm-stack/gateway.db")


def test_two_gateways_and_the_export_command_share_the_default_file(tmp_path: Path) -> None:
    data_home = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(data_home), "GATEWAY_CAPTURE_PERCENT": "100"}
    with (
        running_ollama_double(tokens=4) as double,
        running_gateway([("ollama", double.url)], env=env) as first,
        running_gateway([("ollama", double.url)], env=env) as second,
    ):
        ids = {chat(g, ADMIN_KEY, f"hello from {n}").headers["x-request-id"] for n, g in enumerate((first, second))}
        (tmp_path / "elsewhere").mkdir()
        exported: list[dict] = []
        for _ in range(20):  # each gateway writes after its answer, in the background
            done = subprocess.run(
                [sys.executable, "-m", "gateway", "export"],
                cwd=tmp_path / "elsewhere",
                capture_output=True,
                text=True,
                timeout=60,
                env={
                    **os.environ,
                    "XDG_DATA_HOME": str(data_home),
                    "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                },
            )
            assert done.returncode == 0, done.stderr
            exported = [json.loads(line) for line in done.stdout.splitlines()]
            if len(exported) == 2:
                break
    assert {r["request_id"] for r in exported} == ids and {r["variant"] for r in exported} == {MODEL}
    assert (data_home / "slm-stack" / "gateway.db").is_file()
    assert not list((tmp_path / "elsewhere").iterdir())  # nothing written where the command ran
