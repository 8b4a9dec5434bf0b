"""What a reader needs to compare two runs: the machine, its load, and the versions measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.litellm_env import LITELLM_VENV

REPO_ROOT = Path(__file__).resolve().parents[1]


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _run(argv: list[str], cwd: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(gateway_dir: Path | None = None) -> dict[str, Any]:
    """Machine, OS, interpreter, the gateway's commit and the versions of what is measured."""
    src = gateway_dir or REPO_ROOT
    litellm_python = LITELLM_VENV / "bin" / "python"
    litellm = (
        _run([str(litellm_python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        if litellm_python.exists()
        else "not installed"
    )
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "gateway_source": str(src),
        "gateway_commit": _run(["git", "rev-parse", "--short", "HEAD"], src)
        + ("+dirty" if _run(["git", "status", "--porcelain", "gateway"], src) not in ("", "unknown") else ""),
        "litellm": litellm,
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "redis_server": _run(["redis-server", "--version"]).split(" v=")[-1].split()[0]
        if _run(["redis-server", "--version"]) != "unknown"
        else "unknown",
        "load_average_at_start": load_average(),
    }
