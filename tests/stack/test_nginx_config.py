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


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_switch_serves_https_with_hsts(tmp_path: Path) -> None:
    public, status, tls = free_port(), free_port(), free_port()
    conf = build_conf_dir(
        tmp_path / "nginx", loopback_nginx_values(public, status, tls), ["127.0.0.1:9"], extra_templates=[TLS_TEMPLATE]
    )
    certs = tmp_path / "nginx" / "tls"
    certs.mkdir()
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
            str(certs / "tls.key"),
            "-out",
            str(certs / "tls.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    nginx = start_nginx(conf, tls)
    try:
        # /metrics is answered by the edge itself, so no gateway is needed behind it.
        trust = ssl.create_default_context(cafile=str(certs / "tls.crt"))
        response = httpx.get(f"https://127.0.0.1:{tls}/metrics", verify=trust)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        nginx.stop()
