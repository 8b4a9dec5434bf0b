"""Render the shipped nginx templates for a test, the way the nginx image's entrypoint does.

The image runs envsubst over templates/*.template with only NGINX_* variables defined, so
nginx's own `$variables` pass through. This renderer does the same, plus one thing compose
does through DNS instead: the line holding ${NGINX_GATEWAY_SERVER} is repeated once per
replica address, because the Debian nginx here (1.22) has no upstream `resolve`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from testkit.processes import REPO_ROOT

NGINX_DIR = REPO_ROOT / "nginx"
PLACEHOLDER = re.compile(r"\$\{(NGINX_[A-Z0-9_]+)\}")
REPEATED = "NGINX_GATEWAY_SERVER"


class UnrenderedPlaceholder(ValueError):
    """A template uses an NGINX_* variable the caller gave no value for."""


def render_template(text: str, values: Mapping[str, str], gateway_servers: Sequence[str]) -> str:
    """Substitute ${NGINX_*} placeholders; repeat the upstream server line per address."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if "${" + REPEATED + "}" in line:
            out.extend(line.replace("${" + REPEATED + "}", addr) for addr in gateway_servers)
        else:
            out.append(line)
    rendered = "".join(out)
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(rendered)} - set(values))
    if missing:
        raise UnrenderedPlaceholder(f"no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], rendered)


def build_conf_dir(
    dest: Path, values: Mapping[str, str], gateway_servers: Sequence[str], extra_templates: Sequence[Path] = ()
) -> Path:
    """Lay out an nginx conf dir like the image's /etc/nginx; returns the nginx.conf path.

    The static files are symlinks to the repository's own, so nginx reads the shipped bytes.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("nginx.conf", "api_server.conf", "security_headers.conf"):
        (dest / name).symlink_to(NGINX_DIR / name)
    conf_d = dest / "conf.d"
    conf_d.mkdir()
    for template in [*sorted((NGINX_DIR / "templates").glob("*.template")), *extra_templates]:
        name = template.name.removesuffix(".example").removesuffix(".template")
        (conf_d / name).write_text(render_template(template.read_text(), values, gateway_servers))
    return dest / "nginx.conf"
