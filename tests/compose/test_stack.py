"""`docker compose up` on a real engine, checked as a user would, then torn down.

The tests run in file order against one stack (the `stack` fixture): up, the API through nginx
with the OpenAI SDK, keys made with the CLI, Prometheus, scaling, a Redis restart under load,
backup / destroy / up / restore, and `down -v`. Grafana, Jaeger and the trainer are not run
(no stand-in image; the fixture prints so).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.compose.stack import MODEL, NOT_RUN, Pending, Stack, poll, stack_state

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


def test_make_up_starts_every_service_healthy(stack: Stack) -> None:
    t0 = time.monotonic()
    stack.make("up")
    assert (stack.workdir / ".env").stat().st_mode & 0o777 == 0o600
    poll("every service healthy", lambda: stack_state(stack, replicas(stack)), 240)
    rows = stack.containers()
    services = sorted({r["Service"] for r in rows})
    assert not set(NOT_RUN) & set(services)
    init = [r for r in rows if r["Service"] == "ollama-init"]
    assert init and init[0]["ExitCode"] == 0
    print(f"\nmake up (env file, build, up --wait): {time.monotonic() - t0:.0f} s; running: {', '.join(services)}")


def test_the_openai_sdk_answers_through_nginx(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        client(stack, "sk-not-a-key").models.list()
    assert err.value.status_code == 401
    assert httpx.get(f"{stack.base_url}/models", timeout=10).status_code == 401  # no key at all
    admin = client(stack, stack.dotenv("GATEWAY_ADMIN_KEY"))
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
        if down or jobs["gateway"] != replicas(stack) or not all(jobs[j] for j in ("nginx", "redis", "prometheus")):
            return Pending(f"jobs {dict(jobs)}, down: {down}")
        return jobs

    jobs = poll("every Prometheus target up", all_up, 90, every_s=2)

    def format_checked() -> Any:  # the JSON answer got a verdict inside the hardened container
        series = prometheus(stack, "/api/v1/query?query=sum(gateway_format_compliance_total)")["result"]
        return bool(series) and float(series[0]["value"][1]) >= 1 or Pending(f"series: {series}")

    poll("a format verdict scraped", format_checked, 60, every_s=2)
    groups = prometheus(stack, "/api/v1/rules")["groups"]
    assert groups and sum(len(g["rules"]) for g in groups) > 0
    print(f"\nPrometheus targets up: {dict(jobs)}; {len(groups)} rule groups")


def test_limits_settings_and_the_nginx_tmpfs_as_deployed(stack: Stack) -> None:
    # conf.d is the tmpfs, owned by nginx's uid on any runc, and the template is in it.
    assert stack.exec("nginx", "stat", "-c", "%u", "/etc/nginx/conf.d").strip() == "101"
    assert "gateway.conf" in stack.exec("nginx", "ls", "/etc/nginx/conf.d")
    # Open files for nginx and the gateways.
    nofile = int(stack.env["NOFILE_LIMIT"])
    assert nofile > 1024 and int(stack.exec("nginx", "sh", "-c", "ulimit -n")) == nofile
    soft = stack.exec(
        "gateway", "python", "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    assert int(soft) == nofile
    # Settings compose passes reach the process (GATEWAY_WORKERS defaults to 1).
    env = stack.exec("gateway", "env")
    assert "GATEWAY_WORKERS=1" in env.splitlines() and "OTEL_TRACES_SAMPLER=parentbased_traceidratio" in env


def test_ollama_init_does_not_pull_a_model_already_there(stack: Stack) -> None:
    out = stack.compose("run", "--rm", "--no-deps", "ollama-init")
    assert "already present" in out.stdout + out.stderr


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
                    "exec", "-T", "redis", "sh", "-c", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping', check=False
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


def usage_totals(stack: Stack, key: str) -> dict[str, Any]:
    r = httpx.get(f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["totals"]


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
    before = poll("usage of 3 requests recorded", lambda: (u := usage_totals(stack, key))["requests"] == 3 and u, 30)
    t0 = time.monotonic()
    out = stack.make("backup")
    archive = stack.workdir / out.stdout.strip().splitlines()[-1]
    assert archive.is_file() and archive.name.startswith("slm-stack-") and archive.stat().st_mode & 0o077 == 0
    stack.make("destroy")
    assert not stack.labelled("volume")
    stack.make("up")
    poll("every service healthy again", lambda: stack_state(stack, replicas(stack)), 240)
    assert chat_status(stack, key, "after destroy") == 401  # the fresh stack does not know it
    stack.make("restore", f"BACKUP={archive}")
    poll("the key working again", lambda: chat_status(stack, key, "restored") == 200, 30)
    assert json.loads(stack.exec("ollama", "cat", f"/runs/{manifest}")) == {"version": 1}
    after = poll("usage back", lambda: (u := usage_totals(stack, key))["requests"] >= 4 and u, 30)
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
