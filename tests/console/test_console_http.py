"""The review console over HTTP, as a browser speaks to it: sign-in for a session cookie, CSRF on every form,
the headers every page carries, scopes on the server, captured markup escaped, and the dataset download equal
to what `python -m trainer dataset` writes. A real gateway process with Redis and an SQLite inference log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from gateway.console.web import CSP
from testkit.nginx_render import build_conf_dir
from testkit.ollama import running_ollama_double
from testkit.processes import free_port
from testkit.topology import loopback_nginx_values, start_nginx
from tests.console.support import PAYLOADS, Bench, csrf_of, flagged_route, signed_in
from tests.store.support import ADMIN, MODEL, create_key, feedback_rows, gateway_on
from tests.support.gateway import ADMIN_KEY

PAGES = ("/console/review", "/console/inferences", "/console/datasets")
ADMIN_PAGES = ("/console/rollouts", "/console/keys")
ROUTE = "support"


@pytest.fixture(scope="module")
def routed(bench: Bench) -> Bench:
    """A route with a guarded canary, traffic on it (some of it markup), a thumbs-down and a low judge score."""
    flagged_route(bench, ROUTE, "llama3.2:1b", answers=6, min_requests=5)
    return bench


def test_pages_need_a_sign_in_and_the_key_is_exchanged_for_an_httponly_strict_cookie(routed: Bench) -> None:
    anonymous = httpx.get(f"{routed.url}/console/review")
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"
    for tls, secure in ((None, False), ("https", True)):
        proxied = {"X-Forwarded-Proto": tls} if tls else {}
        form = httpx.get(f"{routed.url}/console/login", headers=proxied)
        signed = httpx.post(
            f"{routed.url}/console/login",
            data={"csrf": csrf_of(form), "key": routed.reviewer},
            headers={**proxied, "Cookie": f"slm_console_login={csrf_of(form)}"},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/console/review"
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("slm_console="))
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert "httponly" in attributes and attributes["samesite"].strip().lower() == "samesite=strict"
        assert attributes["path"].strip() == "Path=/console" and ("secure" in attributes) == secure
        assert routed.reviewer not in cookie
    client = signed_in(routed, routed.reviewer)
    for path in (*PAGES, f"/console/inferences/{routed.sent[0]}"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert routed.reviewer not in page.text and routed.reviewer_id in page.text, path


def test_only_reviewer_and_admin_keys_sign_in(routed: Bench) -> None:
    client = httpx.Client(base_url=routed.url)
    for key, status, says in (
        (routed.app, 403, "neither the reviewer nor the admin scope"),
        ("sk-not-a-key", 401, "not accepted"),
        ("", 401, "not accepted"),
    ):
        form = client.get("/console/login")
        refused = client.post("/console/login", data={"csrf": csrf_of(form), "key": key})
        assert refused.status_code == status and says in refused.text, (key, refused.text[:300])
        assert "slm_console=" not in refused.headers.get("set-cookie", "")
    form = client.get("/console/login")
    forged = client.post("/console/login", data={"csrf": "made-up", "key": routed.reviewer})
    assert forged.status_code == 403 and "slm_console=" not in forged.headers.get("set-cookie", "")


def test_every_answer_carries_a_policy_that_runs_only_the_consoles_own_script(routed: Bench) -> None:
    client = signed_in(routed, ADMIN_KEY)
    for path in ("/console/login", *PAGES, *ADMIN_PAGES, "/console/static/console.js", "/console/inferences/nope"):
        got = client.get(path)
        policy = got.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert got.headers["x-content-type-options"] == "nosniff" and got.headers["cache-control"] == "no-store"
        if got.headers.get("content-type", "").startswith("text/html"):
            assert "<script>" not in got.text and " style=" not in got.text and "onclick" not in got.text
    assert client.get("/console/inferences/nope").status_code == 404
    assert client.get("/console/static/other.js").status_code == 404


def test_forms_without_the_sessions_token_or_from_another_site_change_nothing(routed: Bench) -> None:
    client = signed_in(routed, routed.reviewer)
    token = csrf_of(client.get("/console/review"))
    target = f"/console/inferences/{routed.sent[2]}"
    before = len(feedback_rows(routed.database_url))
    for data, headers in (
        ({"rating": "up"}, {}),
        ({"rating": "up", "csrf": "forged"}, {}),
        ({"rating": "up", "csrf": token}, {"Origin": "https://evil.example"}),
        ({"rating": "up", "csrf": token}, {"Sec-Fetch-Site": "cross-site", "Origin": "null"}),
    ):
        refused = client.post(target, data=data, headers=headers)
        assert refused.status_code == 403, refused.text[:300]
    assert client.post(target, json={"rating": "up", "csrf": token}).status_code == 400  # forms only
    assert len(feedback_rows(routed.database_url)) == before
    saved = client.post(target, data={"rating": "up", "csrf": token, "correction": "", "comment": ""})
    assert saved.status_code == 303 and saved.headers["location"] == f"{target}?saved=1"
    assert len(feedback_rows(routed.database_url)) == before + 1


def test_a_reviewer_reviews_and_corrects_but_gets_403_for_keys_routes_and_promote(routed: Bench) -> None:
    client = signed_in(routed, routed.reviewer)
    token = csrf_of(client.get("/console/review"))
    corrected = client.post(
        f"/console/inferences/{routed.sent[3]}", data={"csrf": token, "correction": "The answer, corrected."}
    )
    assert corrected.status_code == 303
    mine = [f for f in feedback_rows(routed.database_url) if f["request_id"] == routed.sent[3]]
    assert [(f["kind"], f["text"], f["role"], f["key_id"]) for f in mine] == [
        ("correction", "The answer, corrected.", "reviewer", routed.reviewer_id)
    ]
    for path in ADMIN_PAGES:
        page = client.get(path)
        assert page.status_code == 403 and "admin" in page.text, path
    before = routed.admin("GET", f"/admin/routes/{ROUTE}").json()
    promote = client.post(f"/console/rollouts/{ROUTE}/promote", data={"csrf": token, "model": "llama3.2:1b"})
    rollback = client.post(f"/console/rollouts/{ROUTE}/rollback", data={"csrf": token})
    assert promote.status_code == rollback.status_code == 403
    assert routed.admin("GET", f"/admin/routes/{ROUTE}").json() == before
    api = {"Authorization": f"Bearer {routed.reviewer}"}
    for method, path, body in (
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", {"name": "mine", "scopes": ["admin"]}),
        ("GET", "/admin/routes", None),
        ("PUT", f"/admin/routes/{ROUTE}", {"variants": [{"model": MODEL, "weight": 100}]}),
        ("POST", f"/admin/routes/{ROUTE}/promote", {"model": "llama3.2:1b"}),
    ):
        assert httpx.request(method, f"{routed.url}{path}", json=body, headers=api).status_code == 403, path
    assert httpx.get(f"{routed.url}/admin/inferences/{routed.sent[3]}", headers=api).status_code == 200


def test_captured_markup_is_printed_as_text_in_every_page(routed: Bench) -> None:
    named, _ = create_key(routed.gateway, PAYLOADS[3][:90])
    assert named
    client = signed_in(routed, ADMIN_KEY)
    pages = [*PAGES, *ADMIN_PAGES, *(f"/console/inferences/{i}" for i in routed.sent)]
    seen = ""
    for path in pages:
        text = client.get(path).text
        for tag in ("<script>window", "<img src=x", "<svg onload", "<iframe", "<b>bold"):
            assert tag not in text, (path, tag)
        seen += text
    for payload in PAYLOADS:
        assert str(escape(payload)) in seen, payload


def test_signing_out_or_revoking_the_key_ends_the_session_on_the_server(routed: Bench) -> None:
    client = signed_in(routed, routed.reviewer)
    cookie = client.cookies["slm_console"]
    out = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console/review"))})
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    replayed = httpx.get(f"{routed.url}/console/review", cookies={"slm_console": cookie})
    assert replayed.status_code == 303 and replayed.headers["location"] == "/console/login"
    short_lived, key_id = create_key(routed.gateway, "temp-reviewer", ("reviewer",))
    client = signed_in(routed, short_lived)
    assert client.get("/console/review").status_code == 200
    assert routed.admin("DELETE", f"/admin/keys/{key_id}").status_code == 200
    assert client.get("/console/review").headers.get("location") == "/console/login"


def test_the_dataset_download_is_what_trainer_dataset_writes_with_the_consoles_correction(
    routed: Bench, tmp_path: Path
) -> None:
    client = signed_in(routed, routed.reviewer)
    token = csrf_of(client.get("/console/review"))
    fix = "A correction written in the console."
    saved = client.post(f"/console/inferences/{routed.sent[4]}", data={"csrf": token, "correction": fix})
    assert saved.status_code == 303
    out = tmp_path / "rows.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "trainer", "dataset", "--database-url", routed.database_url, "--route", ROUTE]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    written = {"train": out.read_text(), "heldout": out.with_name("rows.heldout.jsonl").read_text()}
    rows = [json.loads(line) for text in written.values() for line in text.splitlines()]
    mine = [r for r in rows if r["request_id"] == routed.sent[4]]
    assert mine and mine[0]["source"] == "correction"
    assert mine[0]["messages"][-1] == {"role": "assistant", "content": fix}
    for part, text in written.items():
        download = client.get(f"/console/datasets/{ROUTE}/{part}.jsonl")
        assert download.status_code == 200 and download.text == text, part
        assert download.headers["content-disposition"].startswith(f'attachment; filename="{ROUTE}-all-{part}')
    listing = client.get("/console/datasets").text
    assert f">{ROUTE}<" in listing


def test_the_console_is_off_with_its_setting(tmp_path: Path) -> None:
    with running_ollama_double() as double:
        gateway = gateway_on(double, f"sqlite:///{tmp_path / 's.db'}", GATEWAY_CONSOLE="false")
        try:
            assert httpx.get(f"{gateway.url}/console/login").status_code == 404
            assert httpx.get(f"{gateway.url}/admin/keys", headers=ADMIN).status_code == 200
        finally:
            gateway.stop()


def test_the_console_works_behind_the_edge_nginx_with_its_own_policy(routed: Bench, tmp_path: Path) -> None:
    public, status, tls = free_port(), free_port(), free_port()
    conf = build_conf_dir(
        tmp_path / "nginx", loopback_nginx_values(public, status, tls), [f"127.0.0.1:{routed.gateway.port}"]
    )
    nginx = start_nginx(conf, public)
    try:
        edge = httpx.Client(base_url=f"http://127.0.0.1:{public}", timeout=10)
        form = edge.get("/console/login")
        assert form.status_code == 200 and "Sign in" in form.text
        assert form.headers.get_list("content-security-policy") == [CSP]  # the console's, not the API's
        assert form.headers["x-request-id"] and form.headers["x-frame-options"] == "DENY"
        signed = edge.post("/console/login", data={"csrf": csrf_of(form), "key": routed.reviewer})
        assert signed.status_code == 303 and signed.headers["location"] == "/console/review"
        queue = edge.get("/console/review")
        assert queue.status_code == 200 and "Review queue" in queue.text
        assert edge.get("/console/static/console.css").headers["content-type"].startswith("text/css")
        api = edge.get("/v1/models")
        assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    finally:
        nginx.stop()
