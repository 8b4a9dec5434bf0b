"""The README's "Run the stack with Docker" commands: each is marked as needing Docker, or is
run here exactly as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.processes import REPO_ROOT

SECTION = re.compile(r"^## Run the stack with Docker\n(.*?)(?=^## |\Z)", re.M | re.S)
THIS_SUITE = ".venv/bin/pytest tests/stack"  # what CI runs anyway


def readme_commands() -> list[str]:
    section = SECTION.search((REPO_ROOT / "README.md").read_text())
    assert section, "README has no 'Run the stack with Docker' section"
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section.group(1), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def run_in(directory: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def test_every_command_needs_docker_or_runs_here(tmp_path: Path) -> None:
    made = subprocess.run(["python3", str(REPO_ROOT / "scripts" / "make_env.py"), "--output", ".env"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    ran = 0
    for command in readme_commands():
        if "(Docker" in command or command == THIS_SUITE:
            continue
        shell = command.split("  #")[0].strip()
        if shell.startswith("KEY="):
            done = run_in(tmp_path, shell + '\necho "$KEY"')
            assert done.stdout.strip() == env["GATEWAY_ADMIN_KEY"], done.stderr
        elif shell.startswith("grep "):
            done = run_in(tmp_path, shell)
            assert done.stdout.splitlines() == [f"GATEWAY_ADMIN_KEY={env['GATEWAY_ADMIN_KEY']}",
                                                f"GRAFANA_ADMIN_PASSWORD={env['GRAFANA_ADMIN_PASSWORD']}"]
        elif shell == "rm .env":
            assert run_in(tmp_path, shell).returncode == 0 and not (tmp_path / ".env").exists()
        else:
            raise AssertionError(f"README command neither marked (Docker) nor checked here: {command}")
        ran += 1
    assert ran == 3
