#!/usr/bin/env python3
"""Back up the stack's state into one timestamped archive, and restore it.

    python3 scripts/backup.py backup [--output-dir backups] [--models]   (`make backup [MODELS=1]`)
    python3 scripts/backup.py restore FILE                               (`make restore BACKUP=FILE`)

Run from the project directory: it drives the stack through `docker compose` (so .env and its
COMPOSE_FILE apply). Standard library only, like make_env.py. Each store is one `Store` with a
backup and a restore step.

- redis: a consistent snapshot taken while Redis serves (BGSAVE, the fork's point-in-time RDB);
  restored by loading that RDB into a one-off Redis on the volume and switching AOF on there
  (Redis ignores an RDB while an AOF exists), then starting the service again.
- postgres: `pg_dump --format=custom` (one transaction: a consistent snapshot while the gateways write);
  restored with `pg_restore --clean` into the freshly started service.
- trainer: every run's version manifests (`*/versions/vN/manifest.json` in the trainer's volume).
- ollama (only with --models, they are large): Ollama's model store (manifests and blobs).

Secrets are not in the archive. API keys are stored as hashes peppered with secrets/gateway_key_pepper: the
archive records a SHA-256 fingerprint of that pepper, and restore refuses an archive made under another one
(copy the old installation's secrets/gateway_key_pepper into place first). The other secrets need not travel:
the restored stack's own Redis and Postgres passwords work, JWTs are short-lived, Grafana is not backed up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = 1
DEADLINE_S = 300.0
PEPPER = Path("secrets") / "gateway_key_pepper"  # from the project directory, as compose reads it


class BackupError(RuntimeError):
    """A step failed; the message says which and why."""


def compose(args: Sequence[str], *, stdin: Path | None = None, stdout: Path | None = None, check: bool = True) -> str:
    """Run `docker compose ARGS`; stdin/stdout may be files (binary-safe), else text is returned."""
    src = stdin.open("rb") if stdin else subprocess.DEVNULL
    dst = stdout.open("wb") if stdout else subprocess.PIPE
    try:
        done = subprocess.run(["docker", "compose", *args], stdin=src, stdout=dst, stderr=subprocess.PIPE)
    finally:
        for f in (src, dst):
            if hasattr(f, "close"):
                f.close()
    if check and done.returncode != 0:
        raise BackupError(f"docker compose {' '.join(args[:4])}... failed: {done.stderr.decode().strip()[-400:]}")
    return done.stdout.decode() if done.stdout else ""


def running(service: str) -> bool:
    return bool(compose(["ps", "-q", "--status", "running", service]).strip())


def wait_for(what: str, ready: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not ready():
        if time.monotonic() > end:
            raise BackupError(f"timed out waiting for {what}")
        time.sleep(0.5)


# ---- Redis ---------------------------------------------------------------------------------
# The password stays out of argv and out of every environment: redis-cli --askpass reads it from its
# stdin, the service's secret file.
REDIS_CLI = ["sh", "-c", 'exec redis-cli --askpass "$@" < /run/secrets/redis_password', "redis-cli"]

# Runs in a one-off container of the redis service (its volume, user and password): load the
# RDB with AOF off, switch AOF on (Redis rewrites the AOF from the loaded data), shut down.
REDIS_LOAD = r"""
set -e
umask 077
cat > /data/restore.rdb.part
rm -rf /data/appendonlydir /data/dump.rdb
mv /data/restore.rdb.part /data/dump.rdb
printf 'requirepass %s\n' "$(cat /run/secrets/redis_password)" > /tmp/auth.conf
redis-server /tmp/auth.conf --dir /data --dbfilename dump.rdb --appendonly no --bind 127.0.0.1 \
  --daemonize yes --pidfile /tmp/redis.pid --logfile /tmp/redis.log
redis_cli() { redis-cli --askpass "$@" < /run/secrets/redis_password; }
i=0
until redis_cli ping 2>/dev/null | grep -q PONG; do i=$((i+1)); [ $i -lt 600 ] || exit 3; sleep 0.5; done
redis_cli config set appendonly yes >/dev/null
i=0
until [ -f /data/appendonlydir/appendonly.aof.manifest ] && redis_cli info persistence |
      grep -q '^aof_rewrite_in_progress:0' && redis_cli info persistence | grep -q '^aof_rewrite_scheduled:0'; do
  i=$((i+1)); [ $i -lt 600 ] || exit 4; sleep 0.5
done
echo "keys: $(redis_cli dbsize)"
redis_cli shutdown >/dev/null 2>&1 || true
"""


def redis_info(field: str) -> str:
    for line in compose(["exec", "-T", "redis", *REDIS_CLI, "info", "persistence"]).splitlines():
        key, _, value = line.strip().partition(":")
        if key == field:
            return value
    raise BackupError(f"redis INFO persistence has no {field} (Redis 7.0+ needed)")


def redis_backup(dest: Path) -> str:
    if not running("redis"):
        raise BackupError("redis is not running: start the stack (make up) to back it up")
    before = int(redis_info("rdb_saves"))
    out = compose(["exec", "-T", "redis", *REDIS_CLI, "bgsave", "schedule"])
    if "ERR" in out:
        raise BackupError(f"BGSAVE refused: {out.strip()}")
    wait_for(
        "Redis's snapshot",
        lambda: int(redis_info("rdb_saves")) > before and redis_info("rdb_bgsave_in_progress") == "0",
    )
    if redis_info("rdb_last_bgsave_status") != "ok":
        raise BackupError("Redis's snapshot failed (rdb_last_bgsave_status)")
    folder = compose(["exec", "-T", "redis", *REDIS_CLI, "config", "get", "dir"]).split()[-1]
    name = compose(["exec", "-T", "redis", *REDIS_CLI, "config", "get", "dbfilename"]).split()[-1]
    compose(["exec", "-T", "redis", "cat", f"{folder}/{name}"], stdout=dest / "dump.rdb")
    return f"snapshot {(dest / 'dump.rdb').stat().st_size} bytes"


def redis_restore(src: Path) -> str:
    was_running = running("redis")
    if was_running:
        compose(["stop", "redis"])
    out = compose(
        ["run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "redis", "-c", REDIS_LOAD], stdin=src / "dump.rdb"
    )
    if was_running:
        compose(["up", "-d", "--no-deps", "--wait", "redis"])
    return out.strip().splitlines()[-1] if out.strip() else "loaded"


# ---- trainer manifests and Ollama models (tar streams out of and into the ollama service) ---
MANIFESTS = 'cd /runs && find . -path "*/versions/v*/manifest.json" | tar -cf - -T -'


def trainer_backup(dest: Path) -> str:
    compose(["exec", "-T", "ollama", "sh", "-c", MANIFESTS], stdout=dest / "manifests.tar")
    with tarfile.open(dest / "manifests.tar") as tar:
        return f"{sum(m.isfile() for m in tar.getmembers())} version manifests"


def trainer_restore(src: Path) -> str:
    # ollama mounts the volume read-only; a one-off container mounts it writable elsewhere.
    compose(
        [
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--volume",
            "trainer-runs:/runs-restore",
            "--entrypoint",
            "tar",
            "ollama",
            "-C",
            "/runs-restore",
            "-xf",
            "-",
        ],
        stdin=src / "manifests.tar",
    )
    return "version manifests restored"


def ollama_backup(dest: Path) -> str:
    compose(
        ["exec", "-T", "ollama", "tar", "-C", "/home/ollama/.ollama", "-cf", "-", "models"], stdout=dest / "models.tar"
    )
    return f"models {(dest / 'models.tar').stat().st_size} bytes"


def ollama_restore(src: Path) -> str:
    compose(
        ["run", "--rm", "--no-deps", "-T", "--entrypoint", "tar", "ollama", "-C", "/home/ollama/.ollama", "-xf", "-"],
        stdin=src / "models.tar",
    )
    return "models restored"


# ---- Postgres (the inference log, feedback, judge runs) --------------------------------------
# pg_dump reads everything in one transaction: a consistent snapshot while the gateways keep writing.
# Over the container's local socket (trusted there), so no password is on any command line.
PG = ["-U", "slm", "-d", "slm"]


def postgres_backup(dest: Path) -> str:
    if not running("postgres"):
        raise BackupError("postgres is not running: start the stack (make up) to back it up")
    compose(["exec", "-T", "postgres", "pg_dump", *PG, "--format=custom"], stdout=dest / "slm.dump")
    return f"pg_dump {(dest / 'slm.dump').stat().st_size} bytes"


def postgres_restore(src: Path) -> str:
    compose(["up", "-d", "--no-deps", "--wait", "postgres"])
    compose(
        ["exec", "-T", "postgres", "pg_restore", *PG, "--clean", "--if-exists", "--no-owner"], stdin=src / "slm.dump"
    )
    return "database restored"


@dataclass(frozen=True)
class Store:
    name: str
    backup: Callable[[Path], str]
    restore: Callable[[Path], str]
    optional: bool = False  # only with --models (large)


STORES = (
    Store("redis", redis_backup, redis_restore),
    Store("postgres", postgres_backup, postgres_restore),
    Store("trainer", trainer_backup, trainer_restore),
    Store("ollama", ollama_backup, ollama_restore, optional=True),
)


def pepper_fingerprint(path: Path = PEPPER) -> str | None:
    """SHA-256 of the key pepper (a random secret: its hash tells nothing of it), None without the file."""
    try:
        return hashlib.sha256(path.read_bytes().removesuffix(b"\n")).hexdigest()
    except FileNotFoundError:
        return None


def check_pepper(meta: dict[str, Any], archive: Path, path: Path = PEPPER) -> None:
    """Refuse to restore API keys hashed under another pepper: every one of them would stop working."""
    wanted, here = meta.get("key_pepper_sha256"), pepper_fingerprint(path)
    if wanted and "redis" in meta.get("stores", []) and wanted != here:
        raise BackupError(
            f"{archive}: its API keys were hashed with another key pepper than {path} "
            f"({'missing' if here is None else 'a different one'}); put the backed-up installation's "
            f"{path} in place (then `docker compose up -d --force-recreate gateway`) and restore again"
        )


def backup(output_dir: Path, models: bool) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output_dir.mkdir(parents=True, exist_ok=True)
    archive = output_dir / f"slm-stack-{stamp}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="slm-backup-") as tmp:
        root = Path(tmp)
        done = []
        for store in STORES:
            if store.optional and not models:
                continue
            (root / store.name).mkdir()
            print(f"backup: {store.name}: {store.backup(root / store.name)}", file=sys.stderr)
            done.append(store.name)
        meta = {"format": FORMAT, "created": stamp, "stores": done, "key_pepper_sha256": pepper_fingerprint()}
        (root / "backup.json").write_text(json.dumps(meta))
        part = archive.with_suffix(".part")
        with tarfile.open(part, "w:gz") as tar:
            for path in sorted(root.iterdir()):
                tar.add(path, arcname=path.name)
        part.chmod(0o600)  # it holds API-key hashes and usage
        part.rename(archive)
    return archive


def restore(archive: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="slm-restore-") as tmp:
        root = Path(tmp)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        meta = json.loads((root / "backup.json").read_text())
        if meta.get("format") != FORMAT:
            raise BackupError(f"{archive}: backup format {meta.get('format')}, this script reads {FORMAT}")
        check_pepper(meta, archive)
        # A fresh stack: create its containers and volumes (compose's, labelled) without starting them.
        compose(["up", "--no-start"])
        by_name = {s.name: s for s in STORES}
        for name in meta["stores"]:
            print(f"restore: {name}: {by_name[name].restore(root / name)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="write one timestamped archive")
    b.add_argument("--output-dir", type=Path, default=Path("backups"))
    b.add_argument("--models", action="store_true", help="include Ollama's models (large)")
    r = sub.add_parser("restore", help="restore an archive into the running or a fresh stack")
    r.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "backup":
            print(backup(args.output_dir, args.models))
        else:
            restore(args.archive)
            print(f"restore: {args.archive} restored", file=sys.stderr)
    except (BackupError, OSError, tarfile.TarError, KeyError, ValueError) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
