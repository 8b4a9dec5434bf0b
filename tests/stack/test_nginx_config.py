"""The shipped nginx files: the renderer, `nginx -t`, and the TLS switch served for real."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from testkit.nginx_render import NGINX_DIR, UnrenderedPlaceholder, build_conf_dir, render_template
from testkit.processes import find_binary, free_port
from testkit.topology import loopback_nginx_values, start_nginx

TLS_TEMPLATE = NGINX_DIR / "tls" / "api-tls.conf.template.example"


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("nginx"), "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


def test_renderer_repeats_the_server_line_and_keeps_nginx_variables() -> None:
    text = "server ${NGINX_GATEWAY_SERVER} max_fails=2;\nlisten ${NGINX_PUBLIC_PORT};\nset $x $remote_addr;\n"
    out = render_template(text, {"NGINX_PUBLIC_PORT": "81"}, ["a:1", "b:2"])
    assert out == "server a:1 max_fails=2;\nserver b:2 max_fails=2;\nlisten 81;\nset $x $remote_addr;\n"


def test_renderer_refuses_a_missing_value() -> None:
    with pytest.raises(UnrenderedPlaceholder, match="NGINX_REQ_RATE"):
        render_template("rate=${NGINX_REQ_RATE};", {}, ["a:1"])


def test_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    values = loopback_nginx_values(free_port(), free_port(), free_port())
    conf = build_conf_dir(tmp_path / "nginx", values, ["127.0.0.1:1", "127.0.0.1:2"])
    done = nginx_test(conf)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "nginx" / "nginx.conf").resolve() == NGINX_DIR / "nginx.conf"


def test_a_broken_config_fails_nginx_t(tmp_path: Path) -> None:
    values = loopback_nginx_values(free_port(), free_port(), free_port())
    values["NGINX_REQ_BURST"] = "many"
    conf = build_conf_dir(tmp_path / "nginx", values, ["127.0.0.1:1"])
    assert nginx_test(conf).returncode != 0


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
REDIRECT_TEMPLATE = NGINX_DIR / "tls" / "plain-http-redirect.template.example"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")


def make_certificate(folder: Path) -> Path:
    folder.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "tls.key"),
            "-out",
            str(folder / "tls.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder / "tls.crt"


def assert_secure_headers(response: httpx.Response) -> None:
    assert {k: response.headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS, response.headers
    assert response.headers["X-Request-ID"]


def test_the_edges_own_error_answers_carry_the_security_headers(tmp_path: Path) -> None:
    public, status, tls = free_port(), free_port(), free_port()
    values = {
        **loopback_nginx_values(public, status, tls),
        "NGINX_REQ_RATE": "1r/s",
        "NGINX_REQ_BURST": "1",
        "NGINX_MAX_BODY": "1k",
    }
    conf = build_conf_dir(tmp_path / "nginx", values, ["127.0.0.1:9"])  # nothing listens on port 9
    nginx = start_nginx(conf, public)
    try:
        url = f"http://127.0.0.1:{public}/v1/models"
        down = httpx.get(url)  # no gateway replica answers: the edge's 503
        assert down.status_code == 503 and down.json()["error"]["code"] == "edge_upstream_unavailable"
        assert_secure_headers(down)
        too_big = httpx.post(url, content=b"x" * 4096)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "edge_body_too_large"
        assert_secure_headers(too_big)
        limited = [httpx.get(url) for _ in range(6)][-1]
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "edge_rate_limited"
        assert_secure_headers(limited)
        assert "Strict-Transport-Security" not in limited.headers  # plain HTTP: no HSTS
    finally:
        nginx.stop()


@needs_openssl
def test_with_tls_on_https_serves_with_hsts_and_plain_http_redirects(tmp_path: Path) -> None:
    public, status, tls = free_port(), free_port(), free_port()
    conf = build_conf_dir(
        tmp_path / "nginx",
        loopback_nginx_values(public, status, tls),
        ["127.0.0.1:9"],
        extra_templates=[TLS_TEMPLATE, REDIRECT_TEMPLATE],
    )
    certificate = make_certificate(tmp_path / "nginx" / "tls")
    nginx = start_nginx(conf, tls)
    try:
        # /metrics is answered by the edge itself, so no gateway is needed behind it.
        response = httpx.get(f"https://127.0.0.1:{tls}/metrics", verify=ssl.create_default_context(cafile=certificate))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert_secure_headers(response)
        unavailable = httpx.get(
            f"https://127.0.0.1:{tls}/v1/models", verify=ssl.create_default_context(cafile=certificate)
        )
        assert unavailable.status_code == 503 and unavailable.headers["Strict-Transport-Security"].startswith(
            "max-age="
        )
        plain = httpx.post(f"http://127.0.0.1:{public}/v1/chat/completions?x=1", json={})
        assert plain.status_code == 308
        assert plain.headers["Location"] == f"https://127.0.0.1:{tls}/v1/chat/completions?x=1"
        assert_secure_headers(plain)
    finally:
        nginx.stop()


@needs_openssl
def test_with_tls_on_plain_http_can_still_be_served_when_tls_ends_before_nginx(tmp_path: Path) -> None:
    public, status, tls = free_port(), free_port(), free_port()
    values = loopback_nginx_values(public, status, tls, plain_http="serve")
    conf = build_conf_dir(
        tmp_path / "nginx", values, ["127.0.0.1:9"], extra_templates=[TLS_TEMPLATE, REDIRECT_TEMPLATE]
    )
    make_certificate(tmp_path / "nginx" / "tls")
    nginx = start_nginx(conf, tls)
    try:
        plain = httpx.get(f"http://127.0.0.1:{public}/metrics")
        assert plain.status_code == 404 and plain.json()["error"]["code"] == "not_found"  # served, not redirected
    finally:
        nginx.stop()
