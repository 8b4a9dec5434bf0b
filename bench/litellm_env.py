"""Install LiteLLM's proxy from PyPI into its own virtual environment (bench/.venv-litellm).

Its own environment because its pins (fastapi, openai, pydantic, ...) differ from the gateway's,
and the comparison should run LiteLLM as its users install it. Idempotent: does nothing when
the pinned version is already there.

    python -m bench.litellm_env
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

LITELLM_VERSION = "1.106.2"
LITELLM_VENV = Path(__file__).resolve().parent / ".venv-litellm"
REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"


def installed_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure() -> None:
    if installed_version() == LITELLM_VERSION:
        print(f"LiteLLM {LITELLM_VERSION} already in {LITELLM_VENV}")
        return
    if not (LITELLM_VENV / "bin" / "python").exists():
        print(f"creating {LITELLM_VENV}")
        venv.EnvBuilder(with_pip=True).create(LITELLM_VENV)
    print(f"installing {REQUIREMENT} (a few minutes; pip shows progress)", flush=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "on", REQUIREMENT]
    if subprocess.run(pip).returncode != 0:
        sys.exit(f"installing {REQUIREMENT} failed; see pip's output above")


if __name__ == "__main__":
    ensure()
