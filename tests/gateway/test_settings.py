"""Settings: parsing of the documented environment variables and refusal of unsafe production config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]

SECRETS = {"GATEWAY_ADMIN_KEY": "sk-" + "a" * 32, "GATEWAY_JWT_SECRET": "j" * 32, "GATEWAY_KEY_PEPPER": "p" * 32}


def test_backends_json_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GATEWAY_BACKENDS",
        '[{"kind": "ollama", "url": "http://ollama:11434/"},'
        ' {"kind": "openai", "url": "http://vllm:8000/v1", "name": "vllm-a"}]',
    )
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    s = Settings(_env_file=None)
    assert [b.url for b in s.backends] == ["http://ollama:11434", "http://vllm:8000"]
    assert [b.label for b in s.backends] == ["ollama:11434", "vllm-a"]
    assert s.redis_url == "redis://redis:6379/0" and s.port == 8000


@pytest.mark.parametrize(
    "backends",
    [
        '[{"kind": "tgi", "url": "http://x"}]',
        '[{"kind": "ollama", "url": "ftp://x"}]',
        '[{"kind": "ollama", "url": "http://a:1"}, {"kind": "openai", "url": "http://a:1"}]',
        "not json",
    ],
)
def test_bad_backends_are_refused(monkeypatch: pytest.MonkeyPatch, backends: str) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", backends)
    with pytest.raises((ValidationError, SettingsError)):
        Settings(_env_file=None)


@pytest.mark.parametrize("weak", ["changeme", "", "short"])
def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    for k, v in {**SECRETS, "GATEWAY_ENV": "production", "GATEWAY_JWT_SECRET": weak}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(_env_file=None)


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {**SECRETS, "GATEWAY_ENV": "production"}.items():
        monkeypatch.setenv(k, v)
    assert Settings(_env_file=None).env == "production"


def test_invalid_config_exits_with_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    env = {"GATEWAY_BACKENDS": "[{]", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "invalid configuration" in r.stderr and "Traceback" not in r.stderr


def test_empty_variables_mean_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose forwards an unset tunable as an empty string
    for name in ("GATEWAY_BREAKER_FAILURES", "GATEWAY_CACHE_TTL_S", "GATEWAY_JWT_ISSUER"):
        monkeypatch.setenv(name, "")
    s = Settings(_env_file=None)
    assert s.breaker_failures == 3 and s.jwt_issuer is None


# ---- secrets from files (`<VAR>_FILE`, the Docker secrets convention) ---------------------------------------


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_secrets_come_from_files_without_their_trailing_line_break(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_ADMIN_KEY_FILE", secret_file(tmp_path, "admin", SECRETS["GATEWAY_ADMIN_KEY"] + "\n"))
    monkeypatch.setenv("GATEWAY_JWT_SECRET_FILE", secret_file(tmp_path, "jwt", SECRETS["GATEWAY_JWT_SECRET"]))
    monkeypatch.setenv("GATEWAY_KEY_PEPPER_FILE", secret_file(tmp_path, "pepper", " p" * 16 + "\r\n"))
    s = Settings(_env_file=None)
    assert s.admin_key is not None and s.admin_key.get_secret_value() == SECRETS["GATEWAY_ADMIN_KEY"]
    assert s.jwt_secret is not None and s.jwt_secret.get_secret_value() == SECRETS["GATEWAY_JWT_SECRET"]
    assert s.key_pepper is not None and s.key_pepper.get_secret_value() == " p" * 16  # only the line break goes


def test_a_file_named_in_the_env_file_counts_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"GATEWAY_KEY_PEPPER_FILE={secret_file(tmp_path, 'pepper', 'from-the-file-' * 3)}\n")
    s = Settings(_env_file=dotenv)
    assert s.key_pepper is not None and s.key_pepper.get_secret_value() == "from-the-file-" * 3


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            {"GATEWAY_ADMIN_KEY": "sk-" + "a" * 32, "GATEWAY_ADMIN_KEY_FILE": "admin"},
            "GATEWAY_ADMIN_KEY and GATEWAY_ADMIN_KEY_FILE are both set",
        ),
        ({"GATEWAY_JWT_SECRET_FILE": "missing"}, r"GATEWAY_JWT_SECRET_FILE=.*missing: cannot read it: No such file"),
        ({"GATEWAY_KEY_PEPPER_FILE": "empty"}, r"GATEWAY_KEY_PEPPER_FILE=.*empty: the file is empty"),
        ({"GATEWAY_KEY_PEPPER_FILE": "."}, r"GATEWAY_KEY_PEPPER_FILE=.*: cannot read it"),
    ],
)
def test_unusable_secret_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: dict[str, str], message: str
) -> None:
    secret_file(tmp_path, "admin", "sk-" + "b" * 32)
    secret_file(tmp_path, "empty", "")
    for name, value in setup.items():
        monkeypatch.setenv(name, str(tmp_path / value) if name.endswith("_FILE") else value)
    with pytest.raises(SettingsError, match=message):
        Settings(_env_file=None)


def test_the_redis_and_database_passwords_go_into_their_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.engine import make_url

    odd = "p@ss/w:rd%?#"
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD_FILE", secret_file(tmp_path, "redis", odd + "\n"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://slm@postgres:5432/slm")
    monkeypatch.setenv("GATEWAY_DATABASE_PASSWORD_FILE", secret_file(tmp_path, "pg", odd))
    s = Settings(_env_file=None)
    assert (
        s.redis_url is not None
        and s.redis_url.startswith("redis://:p%40ss%2Fw%3Ard")
        and s.redis_url.endswith("@redis:6379/0")
    )
    import redis

    pool = redis.ConnectionPool.from_url(s.redis_url)
    assert pool.connection_kwargs["password"] == odd and pool.connection_kwargs["host"] == "redis"
    assert s.database_url is not None
    url = make_url(s.database_url.get_secret_value())
    assert (url.username, url.password, url.host, url.port, url.database) == ("slm", odd, "postgres", 5432, "slm")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            {"REDIS_URL": "redis://:inline@redis:6379/0", "GATEWAY_REDIS_PASSWORD": "x" * 20},
            "REDIS_URL names a password",
        ),
        ({"GATEWAY_REDIS_PASSWORD": "x" * 20}, "GATEWAY_REDIS_PASSWORD is set but REDIS_URL is not"),
        ({"GATEWAY_DATABASE_PASSWORD": "x" * 20}, "GATEWAY_DATABASE_PASSWORD is set but DATABASE_URL is not"),
    ],
)
def test_a_password_given_twice_or_without_its_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, setup: dict[str, str], message: str
) -> None:
    for name, value in setup.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)


def test_a_missing_secret_file_stops_the_cli_with_one_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"GATEWAY_ADMIN_KEY_FILE": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    for argv in (["-m", "gateway"], ["-m", "gateway", "keys", "list"]):
        r = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "invalid configuration" in r.stderr and "GATEWAY_ADMIN_KEY_FILE" in r.stderr
        assert "Traceback" not in r.stderr


def test_the_cli_admin_key_comes_from_the_variable_or_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings.files import secret_from_environment

    path = secret_file(tmp_path, "admin", "sk-admin-from-file\n")
    assert secret_from_environment("GATEWAY_ADMIN_KEY", {"GATEWAY_ADMIN_KEY_FILE": path}) == "sk-admin-from-file"
    assert secret_from_environment("GATEWAY_ADMIN_KEY", {"GATEWAY_ADMIN_KEY": "sk-plain"}) == "sk-plain"
    assert secret_from_environment("GATEWAY_ADMIN_KEY", {}) is None
    with pytest.raises(SettingsError, match="both set"):
        secret_from_environment("GATEWAY_ADMIN_KEY", {"GATEWAY_ADMIN_KEY": "a", "GATEWAY_ADMIN_KEY_FILE": path})
