"""The compose files: valid to Docker Compose's own parser and to the compose-spec schema,
merged with the GPU override, and holding the stack's rules (health, privileges, ports,
secrets, pinned images, start-up order)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from testkit.nginx_render import NGINX_DIR, render_template
from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import (
    BASE,
    GPU,
    SCHEMA,
    SECRET_NAMES,
    compose_binary,
    compose_config,
    env_example,
    generated_env,
    generated_secrets,
    make_env_module,
    referenced_variables,
    run_compose,
    secret_files,
    yaml_model,
)

needs_compose = pytest.mark.skipif(compose_binary() is None, reason="no docker compose v2 binary installed")
PUBLISHING = {"nginx", "grafana", "jaeger"}  # the edge: API, dashboards, traces UI
OPTIONAL_PROFILES = {"trainer": ["train"], "jaeger": ["tracing"], "llamacpp": ["adapters"]}
MOVING_TAGS = {"latest", "stable", "mainline", "alpine", "edge", "main", "master"}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return generated_env()


@pytest.fixture(scope="module")
def model(env: dict[str, str]) -> dict[str, Any]:
    """Merged base + GPU model: Compose's own rendering where available, else PyYAML's."""
    return compose_config(env) if compose_binary() else yaml_model()


@pytest.fixture(scope="module")
def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return model["services"]


def spec_validator() -> jsonschema.Draft7Validator:
    """The compose-spec schema is draft-07 (its $schema URL lacks the '#' jsonschema expects)."""
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def long_running(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") != "no"


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"compose-spec schema not at {SCHEMA}")
@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_each_file_matches_the_compose_spec_schema(path: Path) -> None:
    spec_validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"compose-spec schema not at {SCHEMA}")
def test_the_schema_check_catches_a_typo() -> None:
    broken = yaml.safe_load(BASE.read_text())
    broken["services"]["redis"]["restrat"] = "always"
    with pytest.raises(jsonschema.ValidationError, match="restrat"):
        spec_validator().validate(broken)


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"compose-spec schema not at {SCHEMA}")
@needs_compose
def test_merged_config_matches_the_compose_spec_schema(model: dict[str, Any]) -> None:
    spec_validator().validate(model)


@needs_compose
def test_plain_up_leaves_the_optional_profiles_out(env: dict[str, str]) -> None:
    done = run_compose(["config", "--services"], env, profiles=())
    assert done.returncode == 0, done.stderr
    plain = set(done.stdout.split())
    assert plain.isdisjoint(OPTIONAL_PROFILES)
    assert {
        "nginx",
        "gateway",
        "redis",
        "ollama",
        "model-sync",
        "prometheus",
        "grafana",
        "nginx-exporter",
        "redis-exporter",
    } <= plain


def test_optional_services_sit_in_their_profiles(services: dict[str, dict[str, Any]]) -> None:
    for name, profiles in OPTIONAL_PROFILES.items():
        assert services[name].get("profiles") == profiles
    assert all(not s.get("profiles") for n, s in services.items() if n not in OPTIONAL_PROFILES)


# Which secrets each service mounts: exactly these, no more (a service gets only what it reads).
SECRETS_OF = {
    "gateway": {"gateway_admin_key", "gateway_jwt_secret", "gateway_key_pepper", "redis_password", "postgres_password"},
    "trainer": {"gateway_admin_key"},
    "redis": {"redis_password"},
    "redis-exporter": {"redis_password"},
    "postgres": {"postgres_password"},
    "grafana": {"grafana_admin_password"},
    "alertmanager-config": {"alert_webhook_url", "alert_slack_webhook_url", "alert_smtp_password", "alert_routes"},
}
# The variable through which each service reads a mounted secret (the image's or the gateway's *_FILE form).
FILE_VARIABLES = {
    "gateway": {
        "GATEWAY_ADMIN_KEY_FILE": "gateway_admin_key",
        "GATEWAY_JWT_SECRET_FILE": "gateway_jwt_secret",
        "GATEWAY_KEY_PEPPER_FILE": "gateway_key_pepper",
        "GATEWAY_REDIS_PASSWORD_FILE": "redis_password",
        "GATEWAY_DATABASE_PASSWORD_FILE": "postgres_password",
    },
    "trainer": {"GATEWAY_ADMIN_KEY_FILE": "gateway_admin_key"},
    "postgres": {"POSTGRES_PASSWORD_FILE": "postgres_password"},
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD__FILE": "grafana_admin_password"},
    "alertmanager-config": {
        "ALERT_WEBHOOK_URL_FILE": "alert_webhook_url",
        "ALERT_SLACK_WEBHOOK_URL_FILE": "alert_slack_webhook_url",
        "ALERT_SMTP_PASSWORD_FILE": "alert_smtp_password",
        "ALERT_ROUTES_FILE": "alert_routes",
    },
}


def mounted_secrets(service: dict[str, Any]) -> dict[str, str]:
    """source -> path in the container, short or long syntax."""
    out = {}
    for entry in service.get("secrets") or []:
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        out[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


def test_every_secret_is_a_file_in_the_secrets_folder(model: dict[str, Any]) -> None:
    declared = model["secrets"]
    assert set(declared) == set(secret_files().values()) | set(make_env_module().RECEIVER_FILES)
    for name, spec in declared.items():
        assert Path(spec["file"]).as_posix().endswith(f"secrets/{name}"), spec
        assert not spec.get("environment") and not spec.get("external"), name
    assert "/secrets/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_each_service_mounts_only_the_secrets_it_reads(services: dict[str, dict[str, Any]]) -> None:
    got = {name: set(mounted_secrets(s)) for name, s in services.items() if s.get("secrets")}
    assert got == SECRETS_OF
    for name, variables in FILE_VARIABLES.items():
        environment = services[name].get("environment") or {}
        paths = mounted_secrets(services[name])
        for variable, secret in variables.items():
            assert environment.get(variable) == paths[secret], (name, variable)


def test_no_secret_is_a_compose_variable_or_a_literal() -> None:
    for path in (BASE, GPU):
        text = path.read_text()
        assert not set(referenced_variables(text)) & set(SECRET_NAMES), f"{path.name} interpolates a secret"
        for line in text.splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and re.search(r"PASSWORD|SECRET|PEPPER|TOKEN|_KEY$", key) and value.strip():
                literal = "${" not in value and "$$" not in value and not value.strip().startswith("/run/secrets/")
                assert not literal, f"{path.name}: a literal secret in {line.strip()!r}"


@needs_compose
def test_no_secret_value_reaches_the_rendered_model() -> None:
    """Whatever .env holds (even an old one with the secrets still in it), the model compose renders, and so
    every container's environment, command and labels, carries none of them."""
    values = generated_secrets()
    rendered = run_compose(["config", "--format", "json"], {**generated_env(), **values})
    assert rendered.returncode == 0, rendered.stderr
    leaked = [name for name, value in values.items() if value in rendered.stdout]
    assert not leaked, leaked


@needs_compose
def test_compose_accepts_the_example_env_as_is() -> None:
    done = run_compose(["config", "--quiet"], env_example())
    assert done.returncode == 0, done.stderr


def test_every_variable_is_documented_in_the_env_example() -> None:
    documented = set(env_example())
    used = set(referenced_variables(BASE.read_text())) | set(referenced_variables(GPU.read_text()))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if long_running(service):
            check = service.get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_one_shot_services_do_not_restart(services: dict[str, dict[str, Any]]) -> None:
    assert services["trainer"]["restart"] == "no"


def test_start_up_order_waits_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            condition = dep["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), f"{name} -> {target}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits on {target}, which has none"
            else:
                assert not long_running(services[target]), f"{target} never completes"
    assert services["nginx"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["model-sync"]["condition"] == "service_healthy"


def test_every_service_runs_unprivileged_and_hardened(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        user = str(service.get("user", ""))
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name} must set a non-root numeric user, has {user!r}"
        assert service.get("read_only") is True, f"{name}: root filesystem must be read-only"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), f"{name} adds capabilities"


def published(service: dict[str, Any]) -> list[dict[str, Any] | str]:
    return service.get("ports") or []


def test_only_the_edge_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    assert {n for n, s in services.items() if published(s)} == PUBLISHING
    if compose_binary():  # rendered ports: long syntax with host_ip and target
        assert {int(p["target"]) for p in published(services["nginx"])} == {8080, 8443}
        for name in ("grafana", "jaeger"):
            assert all(p["host_ip"] == "127.0.0.1" for p in published(services[name])), name
    assert all(service.get("network_mode") != "host" for service in services.values())


def test_only_the_edge_leaves_the_internal_network(model: dict[str, Any]) -> None:
    assert model["networks"]["internal"]["internal"] is True
    for name, service in model["services"].items():
        networks = set(service.get("networks") or {})
        assert "internal" in networks, name
        outside = networks - {"internal"}
        if name in PUBLISHING:
            assert outside == {"edge"}, name
        elif name == "ollama":
            assert outside == {"egress"}, "ollama pulls models from the internet"
        elif name == "alertmanager":
            assert outside == {"egress"}, "alertmanager reaches the receivers (Slack, SMTP, a webhook)"
        else:
            assert not outside, f"{name} must stay on the internal network"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image!r} has no tag"
        # A version number, or llama.cpp's release build number (server-b8840, server-cuda-b8840).
        version = re.search(r"\d+\.\d+", tag) or re.fullmatch(r"[a-z-]*b\d{4,}", tag)
        assert tag not in MOVING_TAGS and version, f"{name}: {image!r} is not a version"


def test_state_lives_in_named_volumes(model: dict[str, Any]) -> None:
    declared = set(model.get("volumes") or {})
    for name, service in model["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            kind = volume.get("type") if isinstance(volume, dict) else ("bind" if source.startswith(".") else "volume")
            if kind == "volume":
                assert source in declared, f"{name}: anonymous or undeclared volume {source!r}"
    assert {"redis-data", "ollama-models", "prometheus-data", "grafana-data"} <= declared


def test_bind_mounts_point_into_the_repository(model: dict[str, Any]) -> None:
    binds = []
    for service in model["services"].values():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict) and volume.get("type") == "bind":
                binds.append(Path(volume["source"]))
            elif isinstance(volume, str) and volume.startswith("./"):
                binds.append(REPO_ROOT / volume.split(":")[0])
    assert binds
    for path in binds:
        absolute = path if path.is_absolute() else REPO_ROOT / path
        assert REPO_ROOT in absolute.resolve().parents, f"bind mount outside the repo: {path}"
        top = absolute.resolve().relative_to(REPO_ROOT).parts[0]
        if top in ("prometheus", "grafana") and not (REPO_ROOT / top).exists():
            continue  # written on the observability branch; checked once both are merged
        if top == "trainer" and absolute.name == "data":
            continue  # the trainer's data folder is the operator's; compose creates it
        assert absolute.exists(), f"bind mount source missing: {path}"


def test_gpu_goes_to_the_model_servers_and_the_trainer_only(model: dict[str, Any]) -> None:
    with_gpu = set()
    for name, service in model["services"].items():
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        if devices:
            assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
            with_gpu.add(name)
    assert with_gpu == {"ollama", "trainer", "llamacpp"}
    assert not any("devices" in str(s.get("deploy")) for s in yaml_model([BASE])["services"].values())


def test_redis_is_persistent_and_evicts_only_expiring_keys(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy volatile-lru" in command
    assert "requirepass" in command and "/run/secrets/redis_password" in command  # read in the container
    check = " ".join(services["redis"]["healthcheck"]["test"])
    assert "--askpass" in check and "< /run/secrets/redis_password" in check  # stdin: no argv, no environment


def test_gateway_runs_in_production_mode_against_redis_and_ollama(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    environment = gateway["environment"]
    assert environment["GATEWAY_ENV"] == "production"
    assert environment["REDIS_URL"] == "redis://redis:6379/0"  # the password comes from its file
    assert environment["DATABASE_URL"] == "postgresql://slm@postgres:5432/slm"
    backends = json.loads(environment["GATEWAY_BACKENDS"])
    assert [b["url"] for b in backends] == ["http://ollama:11434"]
    if compose_binary():  # interpolated: ${GATEWAY_REPLICAS:-2} with the example's value
        assert int(gateway["deploy"]["replicas"]) >= 2


def test_the_gateway_sees_client_addresses_through_nginx(model: dict[str, Any]) -> None:
    """uvicorn trusts X-Forwarded-For only from FORWARDED_ALLOW_IPS (default 127.0.0.1, never nginx's
    container): without it every anonymous caller would share nginx's address and one limit."""
    services = model["services"]
    assert services["gateway"]["environment"].get("FORWARDED_ALLOW_IPS") == "*"
    # which is safe only because nothing but the internal network reaches the gateway ...
    assert not services["gateway"].get("ports") and services["gateway"]["networks"] in (
        ["internal"],
        {"internal": None},
    )
    assert model["networks"]["internal"].get("internal") is True
    # ... and nginx replaces, never appends to, what a client sends
    conf = (NGINX_DIR / "api_server.conf").read_text()
    assert re.search(r"proxy_set_header X-Forwarded-For \$remote_addr;", conf)


def test_nginx_template_renders_from_the_compose_environment(services: dict[str, dict[str, Any]]) -> None:
    values = {k: str(v) for k, v in services["nginx"]["environment"].items() if k.startswith("NGINX_")}
    template = (NGINX_DIR / "templates" / "gateway.conf.template").read_text()
    rendered = render_template(template, values, [values["NGINX_GATEWAY_SERVER"]])
    assert "server gateway:8000 resolve max_fails=" in rendered
    assert "resolver 127.0.0.11 " in rendered
    assert services["nginx"]["environment"]["NGINX_ENVSUBST_FILTER"] == "^NGINX_"
