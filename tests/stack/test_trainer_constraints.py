"""The trainer image's pins resolve together on its platform, and none would move.

pip resolves trainer/requirements-image.txt under trainer/constraints.txt against PyPI's metadata
for linux x86_64 / CPython 3.12 (the CUDA base's Ubuntu 24.04) without installing anything
(`--dry-run --report`). A pin that conflicts fails the resolve; a dependency the lock lacks, or
one resolved at another version, fails the comparison. Needs PyPI; skipped when it is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testkit.processes import REPO_ROOT

TRAINER = REPO_ROOT / "trainer"
INDEX = "https://pypi.org/simple"
# Ubuntu 24.04 has glibc 2.39: every manylinux tag up to it (pip does not widen an explicit one).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + ["manylinux2014_x86_64"]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            found[canonicalize_name(req.name)] = spec.version
    return found


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{INDEX}/pip/", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def test_every_line_is_an_exact_pin_and_the_image_set_is_in_the_lock() -> None:
    top, lock = pins(TRAINER / "requirements-image.txt"), pins(TRAINER / "constraints.txt")
    assert {"torch", "torchvision", "transformers", "unsloth", "unsloth-zoo", "trl"} <= set(top)
    assert {name: lock.get(name) for name in top} == top


@pytest.mark.slow
def test_the_pinned_set_resolves_for_linux_x86_64_without_moving(tmp_path: Path) -> None:
    if not pypi_reachable():
        pytest.skip(f"PyPI ({INDEX}) unreachable: the trainer's pins are not resolved here")
    report = tmp_path / "report.json"
    argv = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--target",
        str(tmp_path / "t"),
        "--report",
        str(report),
        "--index-url",
        INDEX,
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        *[f"--platform={p}" for p in PLATFORMS],
        "-r",
        str(TRAINER / "requirements-image.txt"),
        "-c",
        str(TRAINER / "constraints.txt"),
    ]
    cert = os.environ.get("PIP_CERT") or (
        "/etc/ssl/certs/ca-certificates.crt" if Path("/etc/ssl/certs/ca-certificates.crt").exists() else None
    )
    if cert:
        argv += ["--cert", cert]  # --isolated ignores pip's config, a site CA included
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    lock = pins(TRAINER / "constraints.txt")
    assert resolved == lock, {
        "moved or missing from the lock": {n: v for n, v in resolved.items() if lock.get(n) != v},
        "in the lock, not needed": sorted(set(lock) - set(resolved)),
    }
