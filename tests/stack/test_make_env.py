"""scripts/make_env.py: what `make up` writes before compose runs: .env (no secret in it, NOFILE_LIMIT fitted to
the engine) and each secret as a file in secrets/, written once."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import ENV_EXAMPLE, SECRET_NAMES, env_example, generated_env, make_env_module

SCRIPT = REPO_ROOT / "scripts" / "make_env.py"
make_env = make_env_module()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def setup(tmp_path: Path, probe: Any = lambda: (20000, "probed")) -> list[str]:
    notes: list[str] = make_env.setup(tmp_path / ".env", tmp_path / "secrets", ENV_EXAMPLE, probe)
    return notes


def secret_values(folder: Path) -> dict[str, str]:
    return {var: (folder / name).read_text() for var, (name, _) in make_env.SECRETS.items()}


def test_the_example_declares_no_secret_and_names_each_file() -> None:
    example = env_example()
    text = ENV_EXAMPLE.read_text()
    for var, (name, _) in make_env.SECRETS.items():
        assert var not in example, f".env.example still declares {var}"
        assert f"secrets/{name}" in text, f".env.example does not document secrets/{name}"
    assert set(make_env.SECRETS) == set(SECRET_NAMES)


def test_setup_creates_the_alert_receiver_files_empty_once_and_keeps_what_the_operator_wrote(tmp_path: Path) -> None:
    notes = setup(tmp_path)
    folder = tmp_path / "secrets"
    assert any("alert_routes" in note and "reach nobody" in note for note in notes)
    for name in ("alert_webhook_url", "alert_slack_webhook_url", "alert_smtp_password"):
        assert (folder / name).read_text() == "" and mode(folder / name) == 0o644, name
    routes = (folder / "alert_routes").read_text()
    assert routes and all(line.startswith("#") for line in routes.splitlines())  # an example, every line off
    (folder / "alert_webhook_url").write_text("https://relay.example.com/alerts")
    assert not any("alert_" in note for note in setup(tmp_path))
    assert (folder / "alert_webhook_url").read_text() == "https://relay.example.com/alerts"


def test_setup_writes_each_secret_once_long_distinct_and_readable_by_the_containers(tmp_path: Path) -> None:
    setup(tmp_path)
    folder = tmp_path / "secrets"
    assert mode(folder) == 0o700  # the access check on the host
    values = secret_values(folder)
    for var, (name, _) in make_env.SECRETS.items():
        path = folder / name
        assert mode(path) == 0o644, name  # compose bind-mounts it as is: the services' uids must read it
        assert not values[var].endswith("\n") and len(values[var]) >= 32, name
    assert len(set(values.values())) == len(values)
    assert values["GATEWAY_ADMIN_KEY"].startswith("sk-admin-")
    other = tmp_path / "other"
    other.mkdir()
    setup(other)
    assert all(secret_values(other / "secrets")[var] != values[var] for var in values)


def test_setup_never_overwrites_a_secret_file_and_fills_in_the_missing_ones(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o755)
    (folder / "gateway_key_pepper").write_text("the-operators-own-pepper-0123456789\n")
    setup(tmp_path)
    before = secret_values(folder)
    assert before["GATEWAY_KEY_PEPPER"] == "the-operators-own-pepper-0123456789\n"
    assert mode(folder) == 0o700  # a looser folder is tightened
    (folder / "redis_password").unlink()
    notes = setup(tmp_path)
    after = secret_values(folder)
    assert after["REDIS_PASSWORD"] != before["REDIS_PASSWORD"]
    assert {k: v for k, v in after.items() if k != "REDIS_PASSWORD"} == {
        k: v for k, v in before.items() if k != "REDIS_PASSWORD"
    }
    assert any("generated redis_password" in n for n in notes)


def test_a_new_env_holds_no_secret_and_the_engines_open_file_limit(tmp_path: Path) -> None:
    setup(tmp_path, probe=lambda: (20000, "the engine's containers get a hard limit of 20000"))
    env = tmp_path / ".env"
    assert mode(env) == 0o600
    pairs = make_env.env_pairs(env.read_text())
    assert not set(pairs) & set(SECRET_NAMES)
    assert pairs["NOFILE_LIMIT"] == "20000"
    assert {k: v for k, v in pairs.items() if k != "NOFILE_LIMIT"} == {
        k: v for k, v in env_example().items() if k != "NOFILE_LIMIT"
    }


def test_an_existing_env_is_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("GATEWAY_REPLICAS=5\nNOFILE_LIMIT=4096\n")

    def probe() -> tuple[int, str]:
        raise AssertionError("no probe for an existing .env")

    setup(tmp_path, probe=probe)
    assert env.read_text() == "GATEWAY_REPLICAS=5\nNOFILE_LIMIT=4096\n"


def test_an_old_envs_secrets_move_into_the_files_once(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    old = {name: f"old-{name.lower()}-0123456789abcdef" for name in SECRET_NAMES}
    env.write_text("# settings\nAPI_PORT=8080\n" + "".join(f"{k}={v}\n" for k, v in old.items()) + "OTHER=x\n")
    env.chmod(0o644)
    notes = setup(tmp_path)
    assert secret_values(tmp_path / "secrets") == old  # the values Postgres, Grafana and the key hashes hold
    assert env.read_text() == "# settings\nAPI_PORT=8080\nOTHER=x\n"
    assert mode(env) == 0o600
    assert any("moved" in n for n in notes) and not any(v in " ".join(notes) for v in old.values())
    assert setup(tmp_path) == []  # once
    assert secret_values(tmp_path / "secrets") == old


def test_an_old_env_disagreeing_with_a_file_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "redis_password").write_text("the-file-value")
    env = tmp_path / ".env"
    env.write_text("REDIS_PASSWORD=the-env-value\nGATEWAY_ADMIN_KEY=sk-admin-old-0123456789abcdef\n")
    with pytest.raises(make_env.SecretConflict, match="redis_password differs from REDIS_PASSWORD"):
        setup(tmp_path)
    assert "REDIS_PASSWORD=the-env-value" in env.read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["redis_password"]


def test_generated_secret_files_pass_the_gateways_production_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.settings import Settings

    setup(tmp_path)
    folder = tmp_path / "secrets"
    for var in ("GATEWAY_ADMIN_KEY", "GATEWAY_JWT_SECRET", "GATEWAY_KEY_PEPPER"):
        monkeypatch.setenv(f"{var}_FILE", str(folder / make_env.SECRETS[var][0]))
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD_FILE", str(folder / "redis_password"))
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    settings = Settings(_env_file=None, env="production")
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == (folder / "gateway_admin_key").read_text()
    assert settings.redis_url == f"redis://:{(folder / 'redis_password').read_text()}@redis:6379/0"


def test_the_script_sets_up_and_says_where_the_keys_are_without_showing_them(tmp_path: Path) -> None:
    # No docker on PATH: the probe falls back to this shell's limit and says why.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--setup"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stderr
    key = (tmp_path / "secrets" / "gateway_admin_key").read_text()
    assert "secrets/gateway_admin_key" in done.stderr and "secrets/grafana_admin_password" in done.stderr
    assert key not in done.stderr + done.stdout
    assert "could not ask the Docker engine" in done.stderr
    own = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = 65536 if own == resource.RLIM_INFINITY else min(own, 65536)
    assert make_env.env_pairs((tmp_path / ".env").read_text())["NOFILE_LIMIT"] == str(expected)


def test_the_printed_env_is_the_example() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ENV_EXAMPLE.read_text().rstrip("\n") + "\n"
    assert generated_env() == env_example()


def test_a_template_declaring_a_secret_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "example.env"
    broken.write_text(ENV_EXAMPLE.read_text() + "\nREDIS_PASSWORD=\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--example", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "declares REDIS_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_output_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(target)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    before = target.read_text()
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(target)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 1 and "exists" in again.stderr
    assert target.read_text() == before


# ---- the engine's open-file limit -------------------------------------------------------------


@pytest.mark.parametrize(
    ("printed", "parsed"),
    [("20000\n", 20000), ("1048576", 1048576), ("unlimited\n", 65536), ("", None), ("abc", None), ("0", None)],
)
def test_ulimit_output_is_parsed(printed: str, parsed: int | None) -> None:
    assert make_env.parse_ulimit(printed) == parsed


def test_the_probe_runs_the_stacks_redis_image_without_network() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "20000\n", "")

    assert make_env.probe_nofile(run)[0] == 20000
    image = make_env.stack_image()
    assert image and image.startswith("redis:") and image in (REPO_ROOT / "docker-compose.yml").read_text()
    assert calls == [["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", "ulimit -Hn"]]


@pytest.mark.parametrize(
    ("result", "why"),
    [
        (
            subprocess.CompletedProcess([], 125, "", "docker: Cannot connect to the Docker daemon\nmore\n"),
            "Cannot connect",
        ),
        (subprocess.CompletedProcess([], 0, "not a number\n", ""), "printed 'not a number'"),
        (FileNotFoundError(2, "No such file or directory", "docker"), "No such file"),
    ],
)
def test_a_failed_probe_says_why(result: Any, why: str) -> None:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]

    limit, how = make_env.probe_nofile(run)
    assert limit is None and why in how


@pytest.mark.parametrize(("engine", "chosen"), [(20000, 20000), (1048576, 65536), (65536, 65536)])
def test_nofile_is_the_engines_limit_at_most_what_the_stack_asks(engine: int, chosen: int) -> None:
    value, note = make_env.fitting_nofile(lambda: (engine, "probed"))
    assert value == chosen and f"NOFILE_LIMIT={chosen}" in note


def test_without_an_answer_nofile_falls_back_to_this_shells_limit() -> None:
    value, note = make_env.fitting_nofile(lambda: (None, "no docker"))
    own = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert value == (65536 if own == resource.RLIM_INFINITY else min(own, 65536))
    assert "no docker" in note and "lower NOFILE_LIMIT in .env" in note


def test_umask_does_not_change_the_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        setup(tmp_path)
    finally:
        os.umask(old)
    assert mode(tmp_path / "secrets" / "redis_password") == 0o644 and mode(tmp_path / "secrets") == 0o700
