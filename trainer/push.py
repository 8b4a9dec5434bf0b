"""The push stage: register the exported GGUF with Ollama through its API, then record the version.

Order matters for safety: blobs are uploaded (skipped when Ollama already has them: HEAD first),
then NAME:vN is created, and only then is NAME:latest moved to it with a copy. A failure at any
point leaves NAME:latest, and so whatever clients use, on the previous version.

With a `deploy` section, NAME:latest is left alone: NAME:vN goes onto a gateway route as a canary
instead (trainer/deploy.py). The gateway is asked first, so a wrong key fails before anything is
pushed; a refused route change after the create leaves NAME:vN in Ollama and its manifest says so.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trainer.adapter_push import ADAPTER_TARGETS, publish_adapter
from trainer.config import RunConfig
from trainer.errors import DeployError, GateRefused, StageOrderError
from trainer.export import load_export
from trainer.manifest import local_versions, utc_iso, write_manifest
from trainer.ollama_replicas import (
    Blob,
    OllamaVersion,
    keep_in_registry,
    publish,
    replica_urls,
    with_retries,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
T = TypeVar("T")


def next_version(output_dir: Path, existing_tags: list[str], name: str) -> int:
    """One more than the highest vN known locally or in Ollama, so versions never collide."""
    pattern = re.compile(rf"^{re.escape(name)}:v(\d+)$")
    remote = [int(m.group(1)) for t in existing_tags if (m := pattern.match(t))]
    return max([0, *local_versions(output_dir), *remote]) + 1


def push(cfg: RunConfig, report: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Publish to each of `push.targets`, then write the version's manifest. Returns the manifest.

    `ollama`: upload, create NAME:vN, move NAME:latest. `llamacpp` / `vllm`: the adapter into the shared
    adapters folder and the gateway's adapter registry (trainer/adapter_push.py). With evaluation.baseline
    route:NAME, NAME:vN goes on the deploy route only if it beat the deployed variant through the gateway
    (trainer/vs_deployed.py), or `force`. The manifest records `forced` when `force` pushed a model that
    lost to its base (`report`'s gate)."""
    from trainer import deploy

    forced = force and not report["gate"]["passed"]

    targets = cfg.push.targets
    info: dict[str, Any] | None
    if cfg.deploy:  # a wrong key or gateway, or no route to compare with, fails before anything is pushed
        deploy.preflight(cfg.deploy, cfg.evaluation.baseline_route)
    if "ollama" in targets:
        info = load_export(cfg.output_dir)
        ollama_part = push_to_ollama(cfg, info)
        version = ollama_part["version"]
    else:
        info = load_export(cfg.output_dir) if "llamacpp" in targets else None
        version = next_version(cfg.output_dir, [], cfg.ollama.model)
        ollama_part = {"version": version, "tag": None, "latest": None, "uploaded": False, "adapter_tag": None}
    adapters = publish_adapter(cfg, info, version) if set(ADAPTER_TARGETS) & set(targets) else None
    manifest = build_manifest(
        cfg,
        report,
        info or {},
        version=version,
        tag=ollama_part["tag"],
        latest=ollama_part["latest"],
        uploaded=ollama_part["uploaded"],
        adapter_tag=ollama_part["adapter_tag"],
        forced=forced,
    )
    manifest["adapters"] = adapters
    manifest["ollama"]["replicas"] = ollama_part.get("replicas", [])
    manifest["ollama"]["registry"] = ollama_part.get("registry")  # what trainer.sync publishes from
    tag = ollama_part["tag"]
    failure: DeployError | GateRefused | None = None
    if cfg.deploy and tag:
        try:
            if cfg.evaluation.baseline_route:
                manifest["vs_deployed"], refusal = checked_against_deployed(cfg, tag, force=force)
                if refusal:
                    raise refusal
            manifest["deploy"] = deploy.deploy_version(cfg.deploy, tag)
        except (DeployError, GateRefused) as exc:
            failure = exc
            manifest["deploy"] = {
                "route": cfg.deploy.route,
                "gateway_url": cfg.deploy.gateway_url,
                "model": tag,
                "error": str(exc),
            }
    path = write_manifest(cfg.output_dir, version, manifest)
    for extra in ("report.json", "summary.md", *(("deployed.json",) if "vs_deployed" in manifest else ())):
        src = cfg.output_dir / "eval" / extra
        if src.exists():
            (path.parent / extra).write_bytes(src.read_bytes())
    if isinstance(failure, GateRefused):
        assert cfg.deploy is not None  # a failure is only recorded on the deploy path above
        raise GateRefused(
            f"{failure}; {tag} stays pushed in Ollama but is not on route {cfg.deploy.route}: "
            f"`python -m trainer deploy --config ... --version {version} --force` ships it anyway"
        )
    if failure:
        raise DeployError(
            f"{failure}; {tag} stays pushed in Ollama: fix this and run "
            f"`python -m trainer deploy --config ... --version {version}`"
        ) from None
    log.info(
        "pushed version %d to %s%s; manifest %s",
        version,
        ", ".join(targets),
        f" (canary on route {cfg.deploy.route})" if cfg.deploy else "",
        path,
    )
    return manifest


def checked_against_deployed(cfg: RunConfig, tag: str, *, force: bool) -> tuple[dict[str, Any], GateRefused | None]:
    """The comparison with the route's deployed variant (evaluation.baseline route:NAME) without its per-row
    examples, and the refusal to deploy when `tag` lost (None when it won, or with `force`)."""
    from trainer.vs_deployed import compare_with_deployed

    result = {k: v for k, v in compare_with_deployed(cfg, tag).items() if k != "examples"}
    if result["gate"]["passed"]:
        return result, None
    if force:
        log.warning("deploying %s although it lost to the deployed version, because --force was given", tag)
        result["forced"] = True
        return result, None
    return result, GateRefused(
        f"not deploying: {'; '.join(result['gate']['reasons'])} (see {cfg.output_dir / 'eval' / 'deployed.json'})"
    )


def ollama_version(cfg: RunConfig, info: dict[str, Any], version: int) -> OllamaVersion:
    """The export `info` as Ollama version `version` (its files still in the export folder)."""
    export_dir = cfg.output_dir / "export"
    served = info["files"][cfg.export.serve]
    adapter = info["files"].get("adapter") if cfg.ollama.adapter_base else None
    return OllamaVersion(
        name=cfg.ollama.model,
        version=version,
        model=Blob(export_dir / served["file"], served["sha256"]),
        template=info["template"],
        system=info["system"],
        parameters=info["parameters"],
        adapter=Blob(export_dir / adapter["file"], adapter["sha256"]) if adapter else None,
        adapter_base=cfg.ollama.adapter_base,
        latest=not cfg.deploy,  # with deploy, the route moves instead (trainer/deploy.py)
    )


def push_to_ollama(cfg: RunConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Upload, create NAME:vN (and NAME-adapter:vN), move NAME:latest: on every replica `ollama.host` resolves
    to. The version is kept in the registry first (OUTPUT/versions/vN/), so a replica missed now, or started
    later, gets it from `python -m trainer.sync`."""
    import ollama

    export_dir = cfg.output_dir / "export"
    for entry in info["files"].values():
        if not (export_dir / entry["file"]).is_file():
            raise StageOrderError(f"{export_dir / entry['file']} is missing: run `export` again")
    if cfg.export.serve not in info["files"]:
        raise StageOrderError(
            f"export.serve is {cfg.export.serve} but the export has {', '.join(info['files'])}: run `export` again"
        )
    o = cfg.ollama
    retry = lambda call, what: with_retries(call, what=what, retries=o.retries, backoff_s=o.retry_backoff_s)
    urls = replica_urls(o.host, o.dns_servers)
    clients = {url: ollama.Client(host=url, timeout=o.timeout_s) for url in urls}
    try:
        tags = [
            t
            for url, c in clients.items()
            for t in retry(lambda c=c: [m.model for m in c.list().models], f"list models at {url}")
        ]
        version = keep_in_registry(
            cfg.output_dir, ollama_version(cfg, info, next_version(cfg.output_dir, tags, o.model))
        )
        uploaded = False
        for url, client in clients.items():
            uploaded = publish(client, version, retry) or uploaded
            if version.latest:
                retry(
                    lambda client=client: client.copy(version.tag, f"{o.model}:latest"),
                    f"tag {o.model}:latest at {url}",
                )
    finally:
        for client in clients.values():
            client.close()
    latest = f"{o.model}:latest" if version.latest else None
    log.info("pushed %s (and %s) to %s", version.tag, latest, ", ".join(urls))
    return {
        "version": version.version,
        "tag": version.tag,
        "latest": latest,
        "uploaded": uploaded,
        "adapter_tag": version.adapter_tag,
        "registry": version.record(),
        "replicas": urls,
    }


def _mtime_iso(path: Path) -> str | None:
    return utc_iso(path.stat().st_mtime) if path.exists() else None


def build_manifest(
    cfg: RunConfig,
    report: dict[str, Any],
    info: dict[str, Any],
    *,
    version: int,
    tag: str | None,
    latest: str | None,
    uploaded: bool,
    adapter_tag: str | None,
    forced: bool,
) -> dict[str, Any]:
    out = cfg.output_dir
    prepared = json.loads((out / "data" / "prepare_report.json").read_text())
    trained = json.loads((out / "train_summary.json").read_text()) if (out / "train_summary.json").exists() else {}
    return {
        "name": cfg.ollama.model,
        "version": version,
        "forced": forced,
        "base_model": cfg.base_model.source,
        "config_digest": cfg.digest(),
        "config": cfg.model_dump(mode="json"),
        "data": {
            "sha256": prepared["data_sha256"],
            "train_rows": prepared["train"],
            "eval_rows": prepared["eval"],
            "bad_rows": len(prepared["bad_rows"]),
            "duplicates": prepared["duplicates"],
        },
        "training": trained,
        "metrics": {k: report[k] for k in ("base", "tuned", "gate", "primary_check")},
        "artifacts": info.get("files", {}),
        "export_timings_s": info.get("timings_s"),
        "converter": info.get("converter"),
        "ollama": {
            "host": cfg.ollama.host,
            "tag": tag,
            "latest": latest,
            "adapter_tag": adapter_tag,
            "served_file": info.get("served"),
            "blob_uploaded": uploaded,
        },
        "timestamps": {
            "prepared_at": _mtime_iso(out / "data" / "prepare_report.json"),
            "trained_at": _mtime_iso(out / "train_summary.json"),
            "evaluated_at": _mtime_iso(out / "eval" / "report.json"),
            "exported_at": _mtime_iso(out / "export" / "export.json"),
            "pushed_at": utc_iso(),
        },
    }
