"""Every Ollama replica gets every version: the replicas behind one URL, what a version is made of, and
the registry of versions kept in the runs folder.

An Ollama URL may name many servers: a Kubernetes headless Service, or `docker compose --scale ollama=3`,
resolves to one address per replica. `push` and `deploy` publish a version on each of them, and
`python -m trainer.sync` (trainer/sync.py) gives a replica that started later every version it lacks.
A version is published from the registry: OUTPUT/versions/vN/ keeps the version's GGUF (and adapter) as
hard links to the export (no second copy on disk) with what Ollama's create needs, so the export folder
can move on to the next version.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from trainer.errors import PushError
from trainer.manifest import versions_dir

if TYPE_CHECKING:
    import ollama

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 1 << 20
Retry = Callable[[Callable[[], T], str], T]


def _with_host(url: str, address: str) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _resolve(host: str, dns_servers: Sequence[str]) -> list[str]:
    if dns_servers:
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        pairs = [s.rsplit(":", 1) if s.count(":") == 1 else (s, "53") for s in dns_servers]
        resolver.nameservers = [h for h, _ in pairs]
        resolver.nameserver_ports = {h: int(p) for h, p in pairs}
        try:
            return sorted(r.to_text() for r in resolver.resolve(host, "A", search=True))
        except Exception:  # noqa: BLE001 - no answer: the URL as it is (its call fails with its own error)
            return []
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    found = {str(info[4][0]) for info in infos}
    v4 = sorted(a for a in found if ipaddress.ip_address(a).version == 4)
    return v4 or sorted(found)  # localhost is 127.0.0.1, not also ::1 (one server, not two)


def replica_urls(url: str, dns_servers: Sequence[str] = ()) -> list[str]:
    """`url` once per address its host resolves to (IPv4 ones when there are any); the URL itself for an IP
    literal or a name that does not resolve (calling it then fails with its own, clear error)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return [url]
    except ValueError:
        pass
    addresses = _resolve(host, dns_servers)
    return [_with_host(url, a) for a in addresses] or [url]


@dataclass(frozen=True)
class Blob:
    path: Path
    sha256: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


@dataclass(frozen=True)
class OllamaVersion:
    """What Ollama's create needs for NAME:vN (and NAME-adapter:vN when an adapter base is set)."""

    name: str
    version: int
    model: Blob
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    adapter: Blob | None = None
    adapter_base: str | None = None
    latest: bool = False  # NAME:latest points at it

    @property
    def tag(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def adapter_tag(self) -> str | None:
        return f"{self.name}-adapter:v{self.version}" if self.adapter and self.adapter_base else None

    def record(self) -> dict[str, Any]:
        """How the registry keeps it (the version manifest's `ollama.registry`)."""
        return {
            "name": self.name,
            "file": self.model.path.name,
            "sha256": self.model.sha256,
            "template": self.template,
            "system": self.system,
            "parameters": self.parameters,
            "adapter": {"file": self.adapter.path.name, "sha256": self.adapter.sha256} if self.adapter else None,
            "adapter_base": self.adapter_base,
            "latest": self.latest,
        }

    @classmethod
    def from_record(cls, folder: Path, version: int, record: dict[str, Any]) -> OllamaVersion:
        adapter = record.get("adapter")
        return cls(
            name=record["name"],
            version=version,
            model=Blob(folder / record["file"], record["sha256"]),
            template=record.get("template"),
            system=record.get("system"),
            parameters=record.get("parameters") or {},
            adapter=Blob(folder / adapter["file"], adapter["sha256"]) if adapter else None,
            adapter_base=record.get("adapter_base"),
            latest=bool(record.get("latest")),
        )


def keep_in_registry(output_dir: Path, version: OllamaVersion) -> OllamaVersion:
    """The version's files linked into OUTPUT/versions/vN/ (a copy where the filesystem has no hard links);
    the same version, pointing at them."""
    folder = versions_dir(output_dir) / f"v{version.version}"
    folder.mkdir(parents=True, exist_ok=True)

    def keep(blob: Blob) -> Blob:
        kept = folder / blob.path.name
        if not kept.exists():
            try:
                os.link(blob.path, kept)
            except OSError:
                shutil.copy2(blob.path, kept)
        return Blob(kept, blob.sha256)

    adapter = keep(version.adapter) if version.adapter else None
    return replace(version, model=keep(version.model), adapter=adapter)


def _transient(exc: Exception) -> bool:
    import httpx

    import ollama

    if isinstance(exc, ollama.ResponseError):
        return exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (ConnectionError, httpx.TransportError))


def with_retries(call: Callable[[], T], *, what: str, retries: int, backoff_s: float) -> T:
    """Run `call`, retrying transient failures (5xx, 429, connection errors) with exponential backoff."""
    import ollama

    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # classified right below: transient ones are retried, the rest re-raised
            if not _transient(exc):
                if isinstance(exc, ollama.ResponseError):
                    raise PushError(f"{what}: Ollama refused it: {exc}") from None
                raise
            if attempt == retries:
                raise PushError(f"{what} failed after {retries + 1} attempts: {exc}") from None
            delay = backoff_s * 2**attempt
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _file_chunks(path: Path, bar: tqdm) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            bar.update(len(block))
            yield block


def ensure_blob(client: ollama.Client, path: Path, digest: str) -> bool:
    """Upload `path` as blob `digest` unless Ollama has it already; True if it was uploaded."""
    import ollama

    # The client has no call for HEAD /api/blobs (documented in Ollama's API), so use its request path.
    try:
        client._request_raw("HEAD", f"/api/blobs/{digest}")
        return False
    except ollama.ResponseError as exc:
        if exc.status_code != 404:
            raise
    with tqdm(total=path.stat().st_size, desc=f"upload {path.name}", unit="B", unit_scale=True) as bar:
        client._request_raw("POST", f"/api/blobs/{digest}", content=_file_chunks(path, bar))
    return True


def publish(client: ollama.Client, version: OllamaVersion, retry: Retry[Any]) -> bool:
    """Upload what the replica lacks and create the version's tags on it; True if a blob was uploaded."""
    uploaded = retry(lambda: ensure_blob(client, version.model.path, version.model.digest), f"upload {version.tag}")
    retry(
        lambda: client.create(
            model=version.tag,
            files={version.model.path.name: version.model.digest},
            template=version.template,
            system=version.system,
            parameters=version.parameters,
            stream=False,
        ),
        f"create {version.tag}",
    )
    if version.adapter and version.adapter_tag and version.adapter_base:
        adapter, adapter_tag, adapter_base = version.adapter, version.adapter_tag, version.adapter_base
        retry(lambda: ensure_blob(client, adapter.path, adapter.digest), f"upload {adapter_tag}")
        retry(
            lambda: client.create(
                model=adapter_tag,
                from_=adapter_base,
                adapters={adapter.path.name: adapter.digest},
                template=version.template,
                system=version.system,
                parameters=version.parameters,
                stream=False,
            ),
            f"create {adapter_tag}",
        )
    return uploaded


def registry(runs: Path) -> list[OllamaVersion]:
    """Every version kept under `runs` (OUTPUT/versions/vN/ of each run folder in it, or of `runs` itself)
    whose files are there, oldest first per name."""
    import json

    found: list[OllamaVersion] = []
    for manifest in sorted([*runs.glob("versions/v*/manifest.json"), *runs.glob("*/versions/v*/manifest.json")]):
        try:
            data = json.loads(manifest.read_text())
            record = (data.get("ollama") or {}).get("registry")
            if not record:
                continue  # a version pushed before the registry kept its files, or not to Ollama
            version = OllamaVersion.from_record(manifest.parent, int(data["version"]), record)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s", manifest, exc)
            continue
        if version.model.path.is_file():
            found.append(version)
        else:
            log.warning("skipping %s: %s is missing", version.tag, version.model.path)
    return sorted(found, key=lambda v: (v.name, v.version))


def ensure_on_replicas(
    host: str, dns_servers: Sequence[str], version: OllamaVersion, retry: Retry[Any], *, timeout_s: float
) -> list[str]:
    """Publish `version` on every replica behind `host` that lacks it; every replica's URL."""
    import ollama

    urls = replica_urls(host, dns_servers)
    for url in urls:
        client = ollama.Client(host=url, timeout=timeout_s)

        def listed(c: ollama.Client = client) -> list[Any]:
            return list(c.list().models)

        try:
            present = {m.model for m in retry(listed, f"list models at {url}")}
            if version.tag not in present:
                publish(client, version, retry)
                log.info("published %s on %s, which lacked it", version.tag, url)
        finally:
            client.close()
    return urls
