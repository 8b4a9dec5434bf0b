"""The console's test bench: a gateway process (Redis, an SQLite inference log, the Ollama double), keys
made through the admin API, traffic sent through the real API, and a browser-like HTTP client that signs in
through the sign-in form."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.store.queries import add_feedback
from testkit.processes import Service, wait_until
from tests.store.support import ADMIN, MODEL, chat, create_key, inference_rows, on_db

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# Markup and script a captured prompt, answer, comment or key name may hold: shown as text, never run.
PAYLOADS = (
    "<script>window.__pwned = 'script'; fetch('/console/pwned?script')</script>",
    "<img src=x onerror=\"window.__pwned='img'; fetch('/console/pwned?img')\">",
    '<svg onload="window.__pwned=\'svg\'"><a href="javascript:alert(1)">click</a></svg>',
    '"><b>bold</b><iframe src="/console/pwned?iframe"></iframe>',
)


@dataclass
class Bench:
    gateway: Service
    database_url: str
    reviewer: str
    reviewer_id: str
    app: str
    sent: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=ADMIN, timeout=10, **kw)

    def send(self, content: str, **extra: Any) -> str:
        request_id = chat(self.gateway, self.app, content, **extra).headers["x-request-id"]
        self.sent.append(request_id)
        wait_until(
            lambda: request_id in {r["request_id"] for r in inference_rows(self.database_url)},
            timeout=15,
            what="the answer captured",
        )
        return request_id


def make_bench(gateway: Service, database_url: str) -> Bench:
    reviewer, reviewer_id = create_key(gateway, "support-lead", ("reviewer",))
    app, _ = create_key(gateway, "app")
    return Bench(gateway, database_url, reviewer, reviewer_id, app)


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, f"no CSRF token in {page.url}: {page.text[:300]}"
    return found.group(1)


def signed_in(bench: Bench, key: str) -> httpx.Client:
    """A client that signed in with `key` through the form, as a browser does (cookies kept)."""
    client = httpx.Client(base_url=bench.url, timeout=10)
    form = client.get("/console/login")
    assert form.status_code == 200, form.text
    done = client.post("/console/login", data={"csrf": csrf_of(form), "key": key})
    assert done.status_code == 303 and done.headers["location"] == "/console/review", done.text
    return client


def flagged_route(bench: Bench, route: str, canary: str, *, answers: int, min_requests: int) -> None:
    """A guarded route (the double's two models, 90 / 10) with `answers` plain answers, then one answer per
    markup payload as its prompt; the first answer rated down by its owner with a markup comment, the second
    scored low by a judge with a markup reason."""
    spec = {
        "variants": [{"model": MODEL, "weight": 90}, {"model": canary, "weight": 10}],
        "guard": {"min_requests": min_requests},
    }
    assert bench.admin("PUT", f"/admin/routes/{route}", json=spec).status_code == 200
    for i in range(answers):
        bench.send(f"My internet stops every evening ({i}). What should I do?", model=route)
    for payload in PAYLOADS:
        bench.send(payload, model=route)
    down = httpx.post(
        f"{bench.url}/v1/feedback",
        json={"request_id": bench.sent[0], "rating": "down", "comment": PAYLOADS[1]},
        headers={"Authorization": f"Bearer {bench.app}"},
    )
    assert down.status_code == 201, down.text
    judged = {"request_id": bench.sent[1], "kind": "judge", "value": 0.1, "text": PAYLOADS[0], "source": "judge"}
    on_db(bench.database_url, lambda e: add_feedback(e, **judged))
