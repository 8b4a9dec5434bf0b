"""Settings: parsing of the documented environment variables and refusal of unsafe production config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.settings import Settings

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
