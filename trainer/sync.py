"""`python -m trainer.sync`: every Ollama replica gets every version in the registry, and the base models.

    python -m trainer.sync --ollama-url http://ollama:11434 --runs /runs --pull smollm2:135m --every 30

Each round resolves the URL's host to its replicas (trainer/ollama_replicas.py), and on each replica pulls
the `--pull` models it lacks, publishes the registry's versions it lacks (OUTPUT/versions/vN/ under
`--runs`) and points NAME:latest at the newest version that had it, where the replica has no NAME:latest
yet. A replica that joins later is brought up to date by the next round. Nothing is deleted.

`--ready-file` is written once a round left every replica with every `--pull` model (a health check reads
it); `--every 0` runs one round and exits 1 if any replica could not be brought up to date. Only the
`ollama` client and the standard library are needed (the compose stack runs it in a small image).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.ollama_replicas import OllamaVersion, publish, registry, replica_urls, with_retries

log = logging.getLogger("trainer.sync")


@dataclass
class RoundReport:
    replicas: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)  # "model @ url"
    published: list[str] = field(default_factory=list)  # "tag @ url"
    failed: list[str] = field(default_factory=list)  # "url: why"

    @property
    def complete(self) -> bool:
        return bool(self.replicas) and not self.failed


def _newest_latest(versions: list[OllamaVersion]) -> dict[str, OllamaVersion]:
    newest: dict[str, OllamaVersion] = {}
    for version in versions:  # oldest first per name: the last one seen wins
        if version.latest:
            newest[version.name] = version
    return newest


def sync_replica(url: str, versions: list[OllamaVersion], pull: list[str], report: RoundReport) -> None:
    import ollama

    retry = lambda call, what: with_retries(call, what=what, retries=2, backoff_s=1.0)
    client = ollama.Client(host=url, timeout=600)
    try:
        present = {m.model for m in retry(lambda: client.list().models, f"list models at {url}")}
        for model in pull:
            if model not in present and (":" in model or f"{model}:latest" not in present):
                retry(lambda model=model: client.pull(model, stream=False), f"pull {model} at {url}")
                report.pulled.append(f"{model} @ {url}")
        for version in versions:
            if version.tag not in present:
                publish(client, version, retry)
                report.published.append(f"{version.tag} @ {url}")
        for name, version in _newest_latest(versions).items():
            if f"{name}:latest" not in present:
                retry(lambda v=version, n=name: client.copy(v.tag, f"{n}:latest"), f"tag {name}:latest at {url}")
                report.published.append(f"{name}:latest @ {url}")
    finally:
        client.close()


def sync_round(url: str, runs: Path, pull: list[str], dns_servers: list[str]) -> RoundReport:
    report = RoundReport(replicas=replica_urls(url, dns_servers))
    versions = registry(runs)
    for replica in report.replicas:
        try:
            sync_replica(replica, versions, pull, report)
        except Exception as exc:  # noqa: BLE001 - one replica's failure must not stop the others
            report.failed.append(f"{replica}: {exc}")
            log.warning("sync of %s failed: %s", replica, exc)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.sync", description=__doc__.split("\n")[0])
    p.add_argument("--ollama-url", required=True, help="Ollama's URL; its host may resolve to many replicas")
    p.add_argument("--runs", type=Path, required=True, help="the runs folder (each run's versions/vN/)")
    p.add_argument("--pull", action="append", default=[], help="a base model every replica must have (repeat)")
    p.add_argument("--every", type=float, default=0.0, help="seconds between rounds; 0: one round, then exit")
    p.add_argument("--ready-file", type=Path, default=None, help="written once every replica has the --pull models")
    p.add_argument("--dns-server", action="append", default=[], help="host[:port] to resolve the URL with (repeat)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pull = [m for m in args.pull if m]
    while True:
        report = sync_round(args.ollama_url, args.runs, pull, args.dns_server)
        log.info(
            "round: %d replicas; pulled %s; published %s; failed %s",
            len(report.replicas),
            report.pulled or "nothing",
            report.published or "nothing",
            report.failed or "none",
        )
        if report.complete and args.ready_file is not None and not args.ready_file.exists():
            args.ready_file.write_text("ready\n")
        if args.every <= 0:
            return 0 if report.complete else 1
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
