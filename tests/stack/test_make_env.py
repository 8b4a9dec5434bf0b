"""scripts/make_env.py: the .env `make up` writes, with every secret generated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import ENV_EXAMPLE, SECRET_NAMES, env_example, generated_env, make_env_module

SCRIPT = REPO_ROOT / "scripts" / "make_env.py"


def test_the_example_holds_no_secret_values() -> None:
    example = env_example()
    for name in SECRET_NAMES:
        assert name in example, f".env.example does not document {name}"
        assert example[name] == "", f".env.example ships a value for {name}"


def test_secrets_are_generated_long_and_distinct() -> None:
    first, second = generated_env(), generated_env()
    values = [first[name] for name in SECRET_NAMES]
    assert all(len(v) >= 32 for v in values), values
    assert len(set(values)) == len(values)
    assert all(first[name] != second[name] for name in SECRET_NAMES)
    assert first["GATEWAY_ADMIN_KEY"].startswith("sk-")


def test_everything_else_is_copied_from_the_example() -> None:
    example, generated = env_example(), generated_env()
    assert list(generated) == list(example)
    assert {k: v for k, v in generated.items() if k not in SECRET_NAMES} == {
        k: v for k, v in example.items() if k not in SECRET_NAMES
    }


def test_generated_secrets_pass_the_gateways_production_checks() -> None:
    from gateway.settings import Settings

    env = generated_env()
    settings = Settings(
        env="production",
        admin_key=env["GATEWAY_ADMIN_KEY"],
        jwt_secret=env["GATEWAY_JWT_SECRET"],
        key_pepper=env["GATEWAY_KEY_PEPPER"],
        redis_url=f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0",
    )
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == env["GATEWAY_ADMIN_KEY"]


def test_the_script_prints_the_env_and_says_where_the_keys_are() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if line and not line.startswith("#"))
    assert all(lines[name] for name in SECRET_NAMES)
    assert "GATEWAY_ADMIN_KEY" in done.stderr and "GRAFANA_ADMIN_PASSWORD" in done.stderr
    assert lines["GATEWAY_ADMIN_KEY"] not in done.stderr  # the note names, never shows, the key


def test_a_template_missing_a_secret_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "example.env"
    broken.write_text(ENV_EXAMPLE.read_text().replace("REDIS_PASSWORD=", "# REDIS_PASSWORD="))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--example", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "does not declare REDIS_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_render_env_rejects_a_secret_declared_twice() -> None:
    module = make_env_module()
    with pytest.raises(module.EnvTemplateError, match="twice"):
        module.render_env(ENV_EXAMPLE.read_text() + "\nREDIS_PASSWORD=\n")


def test_output_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(target)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    before = target.read_text()
    assert "GATEWAY_ADMIN_KEY=sk-" in before
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(target)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 1 and "exists" in again.stderr
    assert target.read_text() == before
