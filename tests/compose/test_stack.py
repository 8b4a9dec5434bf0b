"""`docker compose up` on a real engine, checked as a user would, then torn down.

The tests run in file order against one stack (the `stack` fixture): up, the API through nginx
with the OpenAI SDK, keys made with the CLI, Prometheus, scaling, a Redis restart under load,
backup / destroy / up / restore, and `down -v`. Grafana, Jaeger and the trainer are not run
(no stand-in image; the fixture prints so).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.console.web import CSP as CONSOLE_CSP
from tests.compose.stack import MODEL, NOT_RUN, PROJECT, Pending, Stack, poll, stack_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
KEYS: dict[str, str] = {}  # name -> plain key, made by the CLI test, used by later ones


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=30)


def chat_status(stack: Stack, key: str, text: str) -> int:
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": MODEL, "messages": [{"role": "user", "content": text}]},
    )
    return r.status_code


def answers(url: str) -> int | str:
    """The status of a GET, or the error while the server is (re)starting."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def make_key(stack: Stack, name: str, rpm: int) -> str:
    out = stack.exec(
        "gateway",
        "python",
        "-m",
        "gateway",
        "--json",
        "keys",
        "create",
        "--name",
        name,
        "--rpm",
        str(rpm),
        "--models",
        MODEL,
    )
    return json.loads(out)["key"]


def replicas(stack: Stack) -> int:
    return int(stack.dotenv("GATEWAY_REPLICAS"))


SECRETS = (
    "gateway_admin_key",
    "gateway_jwt_secret",
    "gateway_key_pepper",
    "redis_password",
    "postgres_password",
    "grafana_admin_password",
    "alert_webhook_url",  # filled in below before `make up`, as an operator would
)
RECEIVER_FILES = ("alert_webhook_url", "alert_slack_webhook_url", "alert_smtp_password", "alert_routes")
# An operator's webhook, with a token in its path like a real one: Alertmanager is configured with it, and
# nothing else may show it. Nothing listens there; the tier only checks the configuration.
WEBHOOK_URL = f"http://alerts.example.invalid/hooks/{hashlib.sha256(b'compose tier').hexdigest()[:24]}"


def test_make_up_starts_every_service_healthy(stack: Stack) -> None:
    t0 = time.monotonic()
    (stack.workdir / "secrets").mkdir(mode=0o700, exist_ok=True)
    (stack.workdir / "secrets" / "alert_webhook_url").write_text(WEBHOOK_URL)
    (stack.workdir / "secrets" / "alert_webhook_url").chmod(0o644)
    stack.make("up")
    assert (stack.workdir / ".env").stat().st_mode & 0o777 == 0o600
    assert (stack.workdir / "secrets").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (stack.workdir / "secrets").iterdir()) == sorted({*SECRETS, *RECEIVER_FILES})
    assert stack.secret("alert_webhook_url") == WEBHOOK_URL  # make up kept what the operator wrote
    env_text = (stack.workdir / ".env").read_text()
    assert not [name for name in SECRETS if stack.secret(name) in env_text]
    poll("every service healthy", lambda: stack_state(stack, replicas(stack)), 240)
    rows = stack.containers()
    services = sorted({r["Service"] for r in rows})
    assert not set(NOT_RUN) & set(services)
    assert [r for r in rows if r["Service"] == "model-sync" and r.get("Health") == "healthy"]
    print(f"\nmake up (env file, build, up --wait): {time.monotonic() - t0:.0f} s; running: {', '.join(services)}")


def secret_forms(value: str) -> set[str]:
    """The value as it could appear: plain, percent-encoded (in a URL), base64 (in an auth header)."""
    import base64
    from urllib.parse import quote

    return {value, quote(value, safe=""), base64.b64encode(value.encode()).decode()}


def test_no_container_shows_a_secret_in_docker_inspect(stack: Stack) -> None:
    """Environment, command, entrypoint, labels, mounts, health checks: whatever `docker inspect` shows of every
    container of the stack holds none of the secrets; each service still has its own at /run/secrets."""
    ids = stack.labelled("container")
    assert len(ids) >= 8
    shown = stack.engine.run("inspect", *ids).stdout
    leaked = [name for name in SECRETS if any(form in shown for form in secret_forms(stack.secret(name)))]
    assert not leaked, f"docker inspect shows {leaked}"
    # ... nor the environment of any process in the containers that have a shell.
    for service in ("gateway", "redis", "postgres", "redis-exporter"):
        environ = stack.exec(service, "sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
        assert environ.strip(), service
        leaked = [name for name in SECRETS if stack.secret(name) in environ]
        assert not leaked, f"{service}: a process environment holds {leaked}"
    assert stack.exec("redis-exporter", "cat", "/run/secrets/redis_password") == stack.secret("redis_password")
    mounted = stack.exec("gateway", "ls", "/run/secrets").split()
    assert sorted(mounted) == sorted(set(SECRETS) - {"grafana_admin_password", "alert_webhook_url"})
    print(f"\ndocker inspect of {len(ids)} containers: no secret; gateway mounts {mounted}")


def test_the_openai_sdk_answers_through_nginx(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        client(stack, "sk-not-a-key").models.list()
    assert err.value.status_code == 401
    assert httpx.get(f"{stack.base_url}/models", timeout=10).status_code == 401  # no key at all
    admin = client(stack, stack.secret("gateway_admin_key"))
    msgs: Any = [{"role": "user", "content": "Say hello in five words."}]
    plain = admin.chat.completions.create(model=MODEL, messages=msgs)
    assert plain.choices[0].message.content and plain.choices[0].finish_reason
    assert plain.usage and plain.usage.total_tokens > 0
    chunks = list(admin.chat.completions.create(model=MODEL, messages=msgs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and len(chunks) >= 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    as_json = admin.chat.completions.create(model=MODEL, messages=msgs, response_format={"type": "json_object"})
    assert as_json.choices[0].message.content  # its format check runs in the gateway's checking process


def test_the_review_console_signs_in_and_loads_through_nginx(stack: Stack) -> None:
    edge = httpx.Client(base_url=f"http://127.0.0.1:{stack.api_port}", timeout=10)
    form = edge.get("/console/login")
    assert form.status_code == 200 and "Sign in" in form.text
    assert form.headers.get_list("content-security-policy") == [CONSOLE_CSP]
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    signed = edge.post("/console/login", data={"csrf": token.group(1), "key": stack.secret("gateway_admin_key")})
    assert signed.status_code == 303 and signed.headers["location"] == "/console/review", signed.text[:500]
    for path in ("/console/review", "/console/inferences", "/console/rollouts", "/console/datasets", "/console/keys"):
        page = edge.get(path)
        assert page.status_code == 200 and "Sign out" in page.text, (path, page.text[:500])


def test_a_key_made_with_the_cli_works_and_is_limited(stack: Stack) -> None:
    KEYS["load"] = make_key(stack, "ctest-load", 100000)
    answer = client(stack, KEYS["load"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    limited = make_key(stack, "ctest-limited", 2)
    codes = [chat_status(stack, limited, f"Hello {i}") for i in range(5)]
    assert codes[0] == 200 and 429 in codes, codes


def prometheus(stack: Stack, path: str) -> Any:
    return json.loads(stack.exec("prometheus", "wget", "-qO-", f"http://127.0.0.1:9090{path}"))["data"]


def test_prometheus_scrapes_every_target_and_loads_the_rules(stack: Stack) -> None:
    def all_up() -> Any:
        targets = prometheus(stack, "/api/v1/targets")["activeTargets"]
        jobs = Counter(t["labels"]["job"] for t in targets)
        down = [f"{t['labels']['job']} {t['scrapeUrl']} {t['lastError'][:60]}" for t in targets if t["health"] != "up"]
        wanted = ("nginx", "redis", "prometheus", "alertmanager")
        if down or jobs["gateway"] != replicas(stack) or not all(jobs[j] for j in wanted):
            return Pending(f"jobs {dict(jobs)}, down: {down}")
        return jobs

    jobs = poll("every Prometheus target up", all_up, 90, every_s=2)

    def format_checked() -> Any:  # the JSON answer got a verdict inside the hardened container
        series = prometheus(stack, "/api/v1/query?query=sum(gateway_format_compliance_total)")["result"]
        return bool(series) and float(series[0]["value"][1]) >= 1 or Pending(f"series: {series}")

    poll("a format verdict scraped", format_checked, 60, every_s=2)
    groups = prometheus(stack, "/api/v1/rules")["groups"]
    assert groups and sum(len(g["rules"]) for g in groups) > 0
    # Prometheus sends to the Alertmanager the project's renderer configured, which runs as its own user.
    (active,) = prometheus(stack, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert active["url"].startswith("http://alertmanager:9093/")
    checked = stack.exec("alertmanager", "amtool", "check-config", "/config/alertmanager.yml")
    assert "SUCCESS" in checked and "receivers" in checked
    # the operators' webhook from secrets/alert_webhook_url, in the file only Alertmanager reads
    assert WEBHOOK_URL in stack.exec("alertmanager", "cat", "/config/alertmanager.yml")
    assert stack.exec("alertmanager", "stat", "-c", "%u %a", "/config/alertmanager.yml").strip() == "65534 600"
    print(f"\nPrometheus targets up: {dict(jobs)}; {len(groups)} rule groups; alerts to {active['url']}")


def test_limits_settings_and_the_nginx_tmpfs_as_deployed(stack: Stack) -> None:
    # conf.d is the tmpfs, owned by nginx's uid on any runc, and the template is in it.
    assert stack.exec("nginx", "stat", "-c", "%u", "/etc/nginx/conf.d").strip() == "101"
    assert "gateway.conf" in stack.exec("nginx", "ls", "/etc/nginx/conf.d")
    # Open files for nginx and the gateways: what `make up` wrote into .env, at most the engine's own limit.
    nofile = int(stack.dotenv("NOFILE_LIMIT"))
    engine_limit = stack.engine.nofile_hard_limit()
    assert nofile > 1024 and (engine_limit is None or nofile == min(engine_limit, 65536)), (nofile, engine_limit)
    assert int(stack.exec("nginx", "sh", "-c", "ulimit -n")) == nofile
    soft = stack.exec(
        "gateway", "python", "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    assert int(soft) == nofile
    # Settings compose passes reach the process (GATEWAY_WORKERS defaults to 1).
    env = stack.exec("gateway", "env")
    assert "GATEWAY_WORKERS=1" in env.splitlines() and "OTEL_TRACES_SAMPLER=parentbased_traceidratio" in env


def test_model_sync_does_not_pull_a_model_already_there(stack: Stack) -> None:
    args = ["--ollama-url=http://ollama:11434", "--runs=/runs", f"--pull={MODEL}", "--every=0"]
    out = stack.compose("run", "--rm", "--no-deps", "model-sync", *args)
    assert "pulled nothing" in out.stdout + out.stderr, out.stdout + out.stderr


def upstreams_since(stack: Stack, since: str) -> Counter[str]:
    logs = stack.compose("logs", "--no-log-prefix", "--since", since, "nginx").stdout
    seen: Counter[str] = Counter()
    for line in logs.splitlines():
        if '"upstream_addr"' in line:
            for addr in json.loads(line[line.index("{") :])["upstream_addr"].replace(",", " ").split():
                seen[addr.rsplit(":", 1)[0]] += 1
    return seen


def test_three_replicas_all_serve(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-deps", "--wait", "--scale", "gateway=3", "gateway")
    poll("3 gateways healthy", lambda: stack_state(stack, 3), 120)
    ids = stack.compose("ps", "-q", "gateway").stdout.split()
    ips = {
        stack.engine.run("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", i).stdout.strip()
        for i in ids
    }
    assert len(ips) == 3
    env = stack.engine.run(
        "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", stack.compose("ps", "-q", "nginx").stdout.strip()
    ).stdout
    note = ""
    if "resolve" not in next(line for line in env.splitlines() if line.startswith("NGINX_GATEWAY_SERVER=")):
        # The stand-in nginx (1.22) has no upstream `resolve`: it saw two replicas at start.
        stack.compose("restart", "nginx")
        poll("nginx back", lambda: answers(f"{stack.base_url}/models") == 401, 60)
        note = " (nginx restarted: the stand-in nginx 1.22 has no upstream `resolve`)"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))

    def all_three() -> Any:
        for i in range(12):
            chat_status(stack, KEYS["load"], f"replica {i} {time.time()}")
        seen = upstreams_since(stack, since)
        return seen if ips <= set(seen) else Pending(f"upstreams {dict(seen)}, replicas {ips}")

    seen = poll("requests on all three replicas", all_three, 60)
    print(f"\nscale 3: upstreams {dict(seen)}{note}")


def admin_get(stack: Stack, path: str) -> Any:
    key = stack.secret("gateway_admin_key")
    r = httpx.get(f"http://127.0.0.1:{stack.api_port}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def ollama_ips(stack: Stack) -> dict[str, str]:
    """Running Ollama container id -> its address on the internal network."""
    ids = stack.compose("ps", "-q", "ollama").stdout.split()
    fmt = '{{(index .NetworkSettings.Networks "' + PROJECT + '_internal").IPAddress}}'
    return {i: stack.engine.run("inspect", "-f", fmt, i).stdout.strip() for i in ids}


def served_by(stack: Stack) -> Counter[str]:
    """Answered requests per Ollama replica, summed over every gateway (each one's /metrics)."""
    seen: Counter[str] = Counter()
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    for gateway in stack.compose("ps", "-q", "gateway").stdout.split():
        text = stack.engine.run("exec", gateway, "python", "-c", script).stdout
        for line in text.splitlines():
            if line.startswith("gateway_llm_requests_total{") and 'outcome="success"' in line and "ollama@" in line:
                backend = line.split('backend="', 1)[1].split('"', 1)[0]
                seen[backend.removeprefix("ollama@")] += int(float(line.rsplit(" ", 1)[1]))
    return seen


def replicas_seen(stack: Stack) -> dict[str, list[str]]:
    """What the gateway nginx picked sees: Ollama replica address -> its models, for replicas that are up."""
    backends = admin_get(stack, "/admin/health")["backends"]
    return {n.removeprefix("ollama@"): b["models"] for n, b in backends.items() if b["up"] and n.startswith("ollama@")}


def every_gateway_sees(stack: Stack, ips: set[str]) -> Any:
    views = [set(replicas_seen(stack)) for _ in range(9)]  # nginx spreads these over the gateways
    return True if all(v == ips for v in views) else Pending(f"gateways see {views}, replicas are {ips}")


def test_ollama_replicas_are_found_by_dns_and_one_stopped_under_load_loses_nothing(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-deps", "--wait", "--scale", "ollama=3", "ollama")
    ips = ollama_ips(stack)
    assert len(set(ips.values())) == 3
    poll("every gateway seeing three Ollama replicas", lambda: every_gateway_sees(stack, set(ips.values())), 60)
    before = served_by(stack)
    for i in range(30):
        assert chat_status(stack, KEYS["load"], f"spread {i} {time.time()}") == 200
    spread = served_by(stack) - before
    assert set(spread) == set(ips.values()) and min(spread.values()) >= 3, spread

    results: list[int | str] = []
    stop = threading.Event()

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            t = time.time()
            try:
                results.append(chat_status(stack, KEYS["load"], f"stop-one {n} {i} {t}"))
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)
            stop.wait(max(0.0, 0.4 - (time.time() - t)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    victim = sorted(ips)[0]
    try:
        poll("load flowing", lambda: len(results) >= 10, 30)
        stack.engine.run("stop", "-t", "5", victim)
        mark = len(results)
        poll("40 requests after the stop", lambda: len(results) >= mark + 40, 90)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    statuses = Counter(str(s) for s in results)
    print(f"\nOllama x3, one stopped under load: {len(results)} requests, statuses {dict(statuses)}; spread {spread}")
    assert set(statuses) == {"200"}, statuses
    poll(
        "the stopped replica dropped",
        lambda: every_gateway_sees(stack, {ip for i, ip in ips.items() if i != victim}),
        60,
    )
    stack.engine.run("rm", victim)  # gone for good: the next scale-up adds a new replica


def test_an_ollama_replica_added_serves_within_a_dns_interval_and_gets_every_version(stack: Stack) -> None:
    """A version in the trainer's registry (as push leaves it) goes to every replica in one model-sync round,
    and to a replica started after that within the next one."""
    version_dir = "/runs/orders/versions/v1"
    blob = b"GGUF" + bytes(60)
    manifest = {
        "name": "orders",
        "version": 1,
        "ollama": {
            "tag": "orders:v1",
            "registry": {
                "name": "orders",
                "file": "model.gguf",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "template": "{{ .Prompt }}",
                "system": None,
                "parameters": {"temperature": 0},
                "adapter": None,
                "adapter_base": None,
                "latest": True,
            },
        },
    }
    write = (
        "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
        "(d / 'model.gguf').write_bytes(bytes.fromhex(sys.argv[2])); (d / 'manifest.json').write_text(sys.argv[3])"
    )
    stack.engine.run(
        "run", "--rm", "--user", "10001:10001", "-v", f"{PROJECT}_trainer-runs:/runs", "--entrypoint", "python",
        "slm-stack/model-sync:0.1.0", "-c", write, version_dir, blob.hex(), json.dumps(manifest),
    )  # fmt: skip
    args = ["--ollama-url=http://ollama:11434", "--runs=/runs", "--every=0"]
    pushed = stack.compose("run", "--rm", "--no-deps", "model-sync", *args)
    print(f"\nmodel-sync round: {(pushed.stdout + pushed.stderr).strip().splitlines()[-1]}")
    running = set(ollama_ips(stack).values())
    poll(
        "orders:v1 on every running replica",
        lambda: all("orders:v1" in m for m in replicas_seen(stack).values()) and set(replicas_seen(stack)) == running,
        60,
    )

    stack.compose("up", "-d", "--no-deps", "--wait", "--scale", f"ollama={len(running) + 1}", "ollama")
    started = time.monotonic()
    new_ip = (set(ollama_ips(stack).values()) - running).pop()
    before = served_by(stack)[new_ip]

    def serving() -> Any:
        for i in range(6):
            chat_status(stack, KEYS["load"], f"newcomer {i} {time.time()}")
        got = served_by(stack)[new_ip] - before
        return got if got > 0 else Pending(f"nothing served by {new_ip} yet")

    poll("the new replica serving", serving, 60, every_s=1)
    serve_s = time.monotonic() - started
    interval = 10.0  # GATEWAY_DNS_INTERVAL_S's default, which the stack keeps
    poll("orders:v1 on the new replica", lambda: "orders:v1" in replicas_seen(stack).get(new_ip, []), 60)
    synced_s = time.monotonic() - started
    print(f"\nnew Ollama replica {new_ip}: serving after {serve_s:.1f} s, orders:v1 there after {synced_s:.1f} s")
    assert serve_s < interval + 5, "the new replica served later than one DNS interval (plus its model discovery)"


def test_a_redis_restart_under_load_fails_no_request(stack: Stack) -> None:
    results: list[tuple[float, float, int | str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                t = time.time()
                try:
                    status: int | str = http.post(
                        f"{stack.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {KEYS['load']}"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": f"load {n} {i} {t}"}]},
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    results.append((t, time.time(), status))
                stop.wait(max(0.0, 0.4 - (time.time() - t)))  # ~10 requests/s in all: under nginx's 20 r/s

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    try:
        poll("the load flowing", lambda: len(results) >= 10, 30)
        t_restart = time.time()
        stack.compose("restart", "redis")
        poll(
            "redis answering",
            lambda: (
                "PONG"
                in stack.compose(
                    "exec",
                    "-T",
                    "redis",
                    "sh",
                    "-c",
                    "redis-cli --askpass ping < /run/secrets/redis_password",
                    check=False,
                ).stdout
            ),
            60,
        )
        t_ready = time.time()
        poll("50 requests after the restart", lambda: sum(1 for t, _, _ in results if t > t_ready) >= 50, 60)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    statuses = Counter(str(s) for _, _, s in results)
    during = sum(1 for t, e, _ in results if e >= t_restart and t <= t_ready)
    print(
        f"\nredis restart: {len(results)} requests, {during} during the restart "
        f"({t_ready - t_restart:.1f} s); statuses {dict(statuses)}"
    )
    assert set(statuses) == {"200"} and during >= 3


def usage_totals(stack: Stack, key: str) -> dict[str, Any] | Pending:
    """The key's usage totals; Pending while the gateway answers 503 (a replica whose Redis circuit is still
    open after Redis restarted: it says "retry shortly", and a client does)."""
    r = httpx.get(f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    if r.status_code == 503:
        return Pending(r.text)
    assert r.status_code == 200, r.text
    totals: dict[str, Any] = r.json()["totals"]
    return totals


def test_backup_destroy_up_restore_keeps_keys_and_usage(stack: Stack) -> None:
    key = make_key(stack, "ctest-backup", 1000)
    # A version manifest in the trainer's volume, written as the trainer would; ollama sees it at /runs.
    manifest = "ctest/versions/v1/manifest.json"
    stack.compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "--volume",
        "trainer-runs:/w",
        "--entrypoint",
        "sh",
        "ollama",
        "-c",
        f"mkdir -p /w/{Path(manifest).parent} && echo '{{\"version\": 1}}' > /w/{manifest}",
    )
    assert json.loads(stack.exec("ollama", "cat", f"/runs/{manifest}")) == {"version": 1}
    for i in range(3):
        assert chat_status(stack, key, f"usage {i}") == 200
    before = poll(
        "usage of 3 requests recorded", lambda: (u := usage_totals(stack, key)) and u["requests"] == 3 and u, 30
    )
    t0 = time.monotonic()
    out = stack.make("backup")
    archive = stack.workdir / out.stdout.strip().splitlines()[-1]
    assert archive.is_file() and archive.name.startswith("slm-stack-") and archive.stat().st_mode & 0o077 == 0
    stack.make("destroy")
    assert not stack.labelled("volume")
    stack.make("up")
    poll("every service healthy again", lambda: stack_state(stack, replicas(stack)), 240)
    assert chat_status(stack, key, "after destroy") == 401  # the fresh stack does not know it
    # An archive is refused under another key pepper (its API-key hashes would all fail): nothing restored.
    pepper = stack.workdir / "secrets" / "gateway_key_pepper"
    kept = pepper.read_text()
    pepper.write_text("another-installations-pepper-0123456789")
    refused = stack.run(["make", "restore", f"BACKUP={archive}"], check=False)
    pepper.write_text(kept)
    assert refused.returncode != 0 and "another key pepper" in refused.stderr, refused.stderr[-600:]
    stack.make("restore", f"BACKUP={archive}")
    poll("the key working again", lambda: chat_status(stack, key, "restored") == 200, 30)
    assert json.loads(stack.exec("ollama", "cat", f"/runs/{manifest}")) == {"version": 1}
    after = poll("usage back", lambda: (u := usage_totals(stack, key)) and u["requests"] >= 4 and u, 30)
    assert after["requests"] == before["requests"] + 1
    assert after["input_tokens"] > before["input_tokens"]
    print(
        f"\nbackup {archive.name} ({archive.stat().st_size} bytes), destroy, up, restore: "
        f"{time.monotonic() - t0:.0f} s; usage before {before}, after one more request {after}"
    )


def test_down_v_leaves_no_container_network_or_volume(stack: Stack) -> None:
    assert stack.labelled("volume")
    # Plain `down -v`, no profiles: the trainer's volume must go too.
    stack.compose("down", "-v")
    left = {k: stack.labelled(k) for k in ("container", "network", "volume")}
    assert left == {"container": [], "network": [], "volume": []}, left
    # Nor a volume outside compose's labels (a one-off `run --volume` that missed the project's).
    stray = set(stack.engine.run("volume", "ls", "-q").stdout.split()) - stack.volumes_before
    assert not stray, stray
