"""llama.cpp's own `llama-server`, built from the sources vendored in the pinned llama-cpp-python sdist.

No Debian package ships it and no binary may be downloaded, so it is compiled once (CMake target
`llama-server`, CPU only) and cached under `~/.cache/slm-stack/llama-server-<version>-<build tag>/`;
later calls return the cached binary. It is tuned for the building CPU (`-march=native`) except for
AMX: a virtual CPU may advertise AMX tiles that its hypervisor does not enable, and ggml's AMX matmul
then dies at its first `ldtilecfg` (seen on a Xeon VM here), while AVX-512 is as fast for a model this
small. The sdist is the one trainer.converter checks by SHA-256, so the server
matches the converter that wrote the GGUF files.

    python -m testkit.llama_server          # build (or find) it, print its path
    llama_server_binary()                         # the same, from a test or a benchmark
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from trainer.converter import LLAMA_CPP_PYTHON_VERSION, SDIST_SHA256, _sha256, download_sdist

_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # gcc: explicit -mno-* wins over -march=native
BUILD_TAG = "noamx"  # part of the cache path: a binary built with other flags is not reused


def cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "slm-stack" / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{BUILD_TAG}"


def _unpack_sources(sdist: Path, target: Path) -> Path:
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{sdist} has SHA-256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith(_PREFIX):
                member.name = member.name[len(_PREFIX) :]
                members.append(member)
        tar.extractall(target, members=members, filter="data")
    return target


def build(target: Path) -> Path:
    """Compile llama-server into `target`/bin; return the binary's path."""
    jobs = str(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        src = _unpack_sources(download_sdist(Path(tmp)), Path(tmp) / "llama.cpp")
        build_dir = Path(tmp) / "build"
        subprocess.run(
            [
                "cmake",
                "-S",
                str(src),
                "-B",
                str(build_dir),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                f"-DCMAKE_C_FLAGS={_NO_AMX}",
                f"-DCMAKE_CXX_FLAGS={_NO_AMX}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        built = next(build_dir.rglob("llama-server"))
        (target / "bin").mkdir(parents=True, exist_ok=True)
        final = target / "bin" / "llama-server"
        shutil.copy2(built, final)
    return final


def llama_server_binary() -> Path:
    """The cached binary, built on first use (several minutes on two cores)."""
    binary = cache_dir() / "bin" / "llama-server"
    if not binary.exists():
        build(cache_dir())
    return binary


if __name__ == "__main__":
    print(llama_server_binary())
    sys.exit(0)
