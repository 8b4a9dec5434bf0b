"""llama.cpp's own GGUF converters at a pinned version, taken from the pinned llama-cpp-python sdist.

The sdist (checked against its SHA-256) carries vendor/llama.cpp with convert_hf_to_gguf.py,
convert_lora_to_gguf.py, their `conversion` package and gguf-py, so the converter matches the
llama.cpp that serves the model. Only those files are extracted, into a cache folder. Export never
downloads: the Docker image (and `make test`) run `python -m trainer.converter` at build time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from trainer.errors import ExportError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
_MARKER = ".extracted-from"


def converter_dir() -> Path:
    """TRAINER_LLAMA_CPP_DIR (or LLAMA_CPP_DIR, as the image sets it), else a versioned folder under the cache."""
    if env := os.environ.get("TRAINER_LLAMA_CPP_DIR") or os.environ.get("LLAMA_CPP_DIR"):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "slm-trainer" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def installed(target: Path | None = None) -> bool:
    target = target or converter_dir()
    return (target / _MARKER).exists() and (target / "convert_hf_to_gguf.py").exists()


def script(name: str) -> Path:
    """Path of convert_hf_to_gguf.py or convert_lora_to_gguf.py; a clear error if not installed."""
    target = converter_dir()
    if not installed(target):
        raise ExportError(
            f"llama.cpp's converter is not installed in {target}; run `python -m trainer.converter` "
            "once (the Docker image does this at build time)"
        )
    return target / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sdist(dest: Path) -> Path:
    """pip fetches the sdist from the configured index (and its cache); nothing is built."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        "-d",
        str(dest),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
    if done.returncode != 0 or not found:
        raise ExportError(
            f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist: {done.stderr.strip()[-500:]}"
        )
    return found[0]


def extract(sdist: Path, target: Path) -> Path:
    """Check the sdist's digest and unpack only the converter files into `target`."""
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        raise ExportError(
            f"{sdist} has SHA-256 {digest}, expected {SDIST_SHA256} (llama-cpp-python "
            f"{LLAMA_CPP_PYTHON_VERSION}); refusing to use a different converter"
        )
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(_PREFIX) :] if m.name.startswith(_PREFIX) else ""
            if rel and rel.startswith(_WANTED) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        tar.extractall(target, members=members, filter="data")
    (target / _MARKER).write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sha256:{SDIST_SHA256}\n")
    return target


def ensure(sdist: Path | None = None, target: Path | None = None) -> Path:
    """Install the converter once; later calls return the cached folder."""
    target = target or converter_dir()
    if installed(target):
        return target
    if sdist is None:
        with tempfile.TemporaryDirectory() as tmp:
            return extract(download_sdist(Path(tmp)), target)
    return extract(sdist, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.converter", description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="use this llama-cpp-python sdist instead of downloading it")
    parser.add_argument("--target", type=Path, help=f"install folder (default {converter_dir()})")
    args = parser.parse_args(argv)
    try:
        print(ensure(args.sdist, args.target))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
