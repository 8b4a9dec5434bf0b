"""Every Ollama replica gets every version: push publishes on each address the Ollama host resolves to (a real
dnsmasq answering for `ollama.test`, an Ollama double on each of three loopback addresses), keeps the version
in the registry (OUTPUT/versions/vN/), and `python -m trainer.sync` brings a replica that started later up to
date, base model included."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.dns import DnsServer, running_dns
from testkit.ollama import OllamaDoubleControl, running_ollama_replicas
from testkit.processes import Service, free_port, wait_until
from tests.trainer.conftest import write_config
from tests.trainer.test_push import _fake_earlier_stages, _tiny_gguf
from trainer.config import load_config
from trainer.stages import push_stage

REPO = Path(__file__).resolve().parents[2]
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
BASE = "smollm2:135m"


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def doubles(port: int) -> Iterator[dict[str, Service]]:
    """The third replica starts later, without even the base model."""
    with running_ollama_replicas(ADDRESSES, port, lambda a: [] if a == ADDRESSES[2] else [BASE]) as started:
        yield started


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with running_dns() as server:
        yield server


def created(double: Service) -> set[str]:
    return set(OllamaDoubleControl(double.url).stats()["created"])


def resolves(dns: DnsServer, addresses: list[str]) -> None:
    import dns.resolver as dns_resolver

    dns.set("ollama.test", addresses)
    resolver = dns_resolver.Resolver(configure=False)
    resolver.nameservers, resolver.nameserver_ports = ["127.0.0.1"], {"127.0.0.1": dns.port}
    wait_until(
        lambda: sorted(r.to_text() for r in resolver.resolve("ollama.test", "A")) == sorted(addresses),
        timeout=5,
        what=f"ollama.test -> {addresses}",
    )


def test_push_publishes_on_every_replica_and_sync_catches_up_one_that_started_later(
    tmp_path: Path, dns: DnsServer, doubles: dict[str, Service], port: int
) -> None:
    for double in doubles.values():
        OllamaDoubleControl(double.url).reset()
    late = doubles[ADDRESSES[2]]
    resolves(dns, ADDRESSES[:2])
    config = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "out"),
        ollama={
            "host": f"http://ollama.test:{port}",
            "model": "orders",
            "retries": 1,
            "retry_backoff_s": 0,
            "dns_servers": [dns.server],
        },
    )
    cfg = load_config(config, {})
    (cfg.output_dir / "export").mkdir(parents=True)
    model = _tiny_gguf(cfg.output_dir / "export" / "model-q4_k_m.gguf", fill=0.5)
    _fake_earlier_stages(cfg.output_dir, model)

    manifest = push_stage(cfg)
    for address in ADDRESSES[:2]:
        assert {"orders:v1", "orders:latest"} <= created(doubles[address]), address
    assert created(late) == set()
    assert manifest["ollama"]["replicas"] == [f"http://{a}:{port}" for a in ADDRESSES[:2]]
    kept = cfg.output_dir / "versions" / "v1" / model.name
    assert kept.stat().st_ino == model.stat().st_ino, "the registry should link the export, not copy it"

    # the next export writes new files; the registry keeps v1's
    model.unlink()
    _tiny_gguf(model, fill=0.25)
    digest_v1 = hashlib.sha256(kept.read_bytes()).hexdigest()
    assert digest_v1 == manifest["ollama"]["registry"]["sha256"]

    resolves(dns, ADDRESSES)  # the third replica joins
    sync = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.sync",
            "--ollama-url",
            f"http://ollama.test:{port}",
            "--runs",
            str(tmp_path),
            "--pull",
            BASE,
            "--dns-server",
            dns.server,
            "--ready-file",
            str(tmp_path / "ready"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert (tmp_path / "ready").exists()
    stats = OllamaDoubleControl(late.url).stats()
    assert BASE in stats["models"] and {"orders:v1", "orders:latest"} <= set(stats["created"])
    assert stats["blobs"] == {f"sha256:{digest_v1}": kept.stat().st_size}
    assert "orders:v1 @ http://127.0.0.4" in sync.stderr  # the round says what it did
    again = subprocess.run(  # a second round finds nothing to do
        [sys.executable, "-m", "trainer.sync", "--ollama-url", f"http://ollama.test:{port}", "--runs", str(tmp_path)]
        + ["--dns-server", dns.server],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "published nothing" in again.stderr


def test_sync_says_so_when_a_replica_cannot_be_brought_up_to_date(tmp_path: Path, dns: DnsServer, port: int) -> None:
    resolves(dns, ["127.0.0.9"])  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "trainer.sync", "--ollama-url", f"http://ollama.test:{port}", "--runs", str(tmp_path)]
        + ["--dns-server", dns.server, "--ready-file", str(tmp_path / "ready")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "127.0.0.9" in out.stderr
    assert not (tmp_path / "ready").exists()


def test_deploy_first_publishes_the_version_where_a_replica_lacks_it(
    tmp_path: Path, dns: DnsServer, doubles: dict[str, Service], port: int
) -> None:
    from trainer.manifest import list_versions, versions_dir
    from trainer.ollama_replicas import OllamaVersion, ensure_on_replicas, with_retries

    for double in doubles.values():
        OllamaDoubleControl(double.url).reset()
    resolves(dns, ADDRESSES[:1])
    config = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "out"),
        ollama={"host": f"http://ollama.test:{port}", "model": "orders", "retries": 0, "dns_servers": [dns.server]},
    )
    cfg = load_config(config, {})
    (cfg.output_dir / "export").mkdir(parents=True)
    _fake_earlier_stages(cfg.output_dir, _tiny_gguf(cfg.output_dir / "export" / "model-q4_k_m.gguf", fill=0.5))
    push_stage(cfg)
    resolves(dns, ADDRESSES[:2])
    record = list_versions(cfg.output_dir)[0]["ollama"]["registry"]
    kept = OllamaVersion.from_record(versions_dir(cfg.output_dir) / "v1", 1, record)
    retry = lambda call, what: with_retries(call, what=what, retries=0, backoff_s=0)
    calls_before = OllamaDoubleControl(doubles[ADDRESSES[0]].url).stats()["calls"]["/api/create"]
    assert calls_before == 1  # orders:v1 (orders:latest is a copy of it)
    urls = ensure_on_replicas(cfg.ollama.host, [dns.server], kept, retry, timeout_s=30)
    assert urls == [f"http://{a}:{port}" for a in ADDRESSES[:2]]
    assert "orders:v1" in created(doubles[ADDRESSES[1]])
    after = OllamaDoubleControl(doubles[ADDRESSES[0]].url).stats()["calls"]["/api/create"]
    assert after == calls_before, "the replica that had it was published to again"
