"""One manifest per pushed version (OUTPUT/versions/vN/manifest.json), written atomically, and `list`."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_VERSION_DIR = re.compile(r"^v(\d+)$")


def utc_iso(timestamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC) if timestamp else datetime.now(UTC)
    return moment.isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over the target:
    readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions_dir(output_dir: Path) -> Path:
    return output_dir / "versions"


def local_versions(output_dir: Path) -> list[int]:
    root = versions_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(
        int(m.group(1)) for p in root.iterdir() if (m := _VERSION_DIR.match(p.name)) and (p / "manifest.json").exists()
    )


def write_manifest(output_dir: Path, version: int, manifest: dict[str, Any]) -> Path:
    path = versions_dir(output_dir) / f"v{version}" / "manifest.json"
    write_json_atomic(path, manifest)
    return path


def list_versions(output_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads((versions_dir(output_dir) / f"v{v}" / "manifest.json").read_text())
        for v in local_versions(output_dir)
    ]


def _route_cell(deploy: dict[str, Any] | None) -> str:
    """Where push put the version: `-` (NAME:latest moved), `ROUTE canary 10%`, or the failed deploy."""
    if not deploy:
        return "-"
    if "error" in deploy:
        return f"{deploy['route']} NOT DEPLOYED"
    weight = next((v["weight"] for v in deploy["variants"] if v["model"] == deploy["model"]), 0)
    return f"{deploy['route']} {'created' if deploy['action'] == 'created' else 'canary'} {weight}%"


def format_versions(manifests: list[dict[str, Any]]) -> str:
    if not manifests:
        return "no versions pushed yet"
    rows = [("version", "tag", "pushed at", "eval loss base->tuned", "gate score base->tuned", "gate", "route")]
    for m in manifests:
        base, tuned = m["metrics"]["base"], m["metrics"]["tuned"]
        primary = m["metrics"]["primary_check"]
        gate = "passed" if m["metrics"]["gate"]["passed"] else ("FORCED" if m.get("forced") else "failed")
        tag = m["ollama"]["tag"] or ", ".join((m.get("adapters") or {}).get("names", [])[:1]) or "-"
        rows.append(
            (
                f"v{m['version']}",
                tag,
                m["timestamps"]["pushed_at"],
                f"{base['eval_loss']:.3f} -> {tuned['eval_loss']:.3f}",
                f"{primary} {base['scores'][primary]:.2f} -> {tuned['scores'][primary]:.2f}",
                gate,
                _route_cell(m.get("deploy")),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
