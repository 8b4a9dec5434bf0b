#!/usr/bin/env python3
"""Set up a checkout for docker compose: .env from .env.example, and the secrets as files in secrets/.

    python3 scripts/make_env.py --setup         (what `make up` runs; safe to run again)
    python3 scripts/make_env.py > .env          (.env.example as .env, printed)
    python3 scripts/make_env.py --output .env   (the same, written with mode 0600; never overwritten)
    python3 scripts/make_env.py --gpu on .env   (`make up GPU=1`: the GPU override sticks)

`--setup` writes what is missing and touches nothing that exists:
- .env, when there is none: .env.example with NOFILE_LIMIT fitted to the Docker engine (`ulimit -Hn` in a
  throwaway container of the stack's Redis image; this shell's own limit when the engine does not answer);
- secrets/<name>, one random value per file, for each secret without its file. The folder is 0700 (the
  access check on the host) and the files 0644: compose bind-mounts them as they are, and the services'
  own uids must read them (docker-compose.yml, `secrets:`);
- an older .env holding the secrets as variables: they move into the files once (keeping their values,
  which Postgres, Grafana and the API-key hashes already hold) and leave .env.

Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"
COMPOSE = ROOT / "docker-compose.yml"

# Each secret: the variable it used to be in .env (and the gateway's setting name) -> its file in
# secrets/ and its generator. URL-safe alphabets only: every value may end up in a URL or a config line.
SECRETS: dict[str, tuple[str, Callable[[], str]]] = {
    "GATEWAY_ADMIN_KEY": ("gateway_admin_key", lambda: "sk-admin-" + secrets.token_urlsafe(32)),
    "GATEWAY_JWT_SECRET": ("gateway_jwt_secret", lambda: secrets.token_urlsafe(48)),
    "GATEWAY_KEY_PEPPER": ("gateway_key_pepper", lambda: secrets.token_urlsafe(32)),
    "REDIS_PASSWORD": ("redis_password", lambda: secrets.token_hex(32)),
    "POSTGRES_PASSWORD": ("postgres_password", lambda: secrets.token_hex(32)),
    "GRAFANA_ADMIN_PASSWORD": ("grafana_admin_password", lambda: secrets.token_urlsafe(24)),
}
# Receivers' credentials for Alertmanager (docs/alerting.md): empty until the operator fills one (an empty
# file is that channel off). Created once, never overwritten, like the secrets above.
RECEIVER_FILES: dict[str, str] = {
    "alert_webhook_url": "",
    "alert_slack_webhook_url": "",
    "alert_smtp_password": "",
    "alert_routes": (
        "# A team's alerts to its own channel (docs/alerting.md): one line per channel, `owner channel target`;\n"
        "# the owner is the API keys' owner. Run `make up` after a change.\n"
        "#   search    webhook   https://hooks.example.com/alerts/search\n"
        "#   support   slack     https://hooks.slack.com/services/T000/B000/XXXX  #support-alerts\n"
        "#   billing   email     billing-oncall@example.com\n"
    ),
}
SECRETS_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o644  # readable by the containers' uids; the 0700 folder keeps everyone else out

NOFILE_DEFAULT = 65536  # what nginx and the gateways ask for at most
NOFILE_PROBE_TIMEOUT_S = 300.0  # may include pulling the Redis image, which `up` pulls anyway


class EnvTemplateError(ValueError):
    """.env.example is not what this script expects."""


class SecretConflict(RuntimeError):
    """An old .env and an existing secret file disagree: the operator decides which one is right."""


def env_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if sep:
                pairs[key.strip()] = value
    return pairs


def render_env(example: str, nofile: int | None = None) -> str:
    """`example` as .env: copied line by line, with NOFILE_LIMIT set to `nofile` when given.

    No secret may be declared: they are files now, and a value here would reach .env."""
    declared = sorted(set(env_pairs(example)) & set(SECRETS))
    if declared:
        raise EnvTemplateError(f".env.example declares {', '.join(declared)}: secrets are files in secrets/ now")
    out = []
    for line in example.splitlines():
        if nofile is not None and line.startswith("NOFILE_LIMIT="):
            line = f"NOFILE_LIMIT={nofile}"
        out.append(line)
    return "\n".join(out) + "\n"


def write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only; never overwrite an existing .env."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def replace_private(path: Path, text: str) -> None:
    """Replace `path` at once (a temporary file renamed over it), mode 0600."""
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    write_private(part, text)
    os.replace(part, path)


# ---- secrets ---------------------------------------------------------------------------------


def secrets_dir_ready(folder: Path) -> None:
    """The folder, created 0700, or made 0700 when it is looser."""
    folder.mkdir(mode=SECRETS_DIR_MODE, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != SECRETS_DIR_MODE:
        folder.chmod(SECRETS_DIR_MODE)


def read_secret(path: Path) -> str:
    return path.read_text().removesuffix("\n")


def write_secrets(folder: Path, known: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Write each missing secret file: its value from `known` (an old .env's) else a new one.

    Existing files stay as they are; one that disagrees with `known` is a SecretConflict, raised before any
    file is written. Returns (files written from `known`, files generated)."""
    known = {k: v for k, v in (known or {}).items() if v}
    secrets_dir_ready(folder)
    conflicts = [
        f"{folder / name} differs from {var} in .env"
        for var, (name, _) in SECRETS.items()
        if var in known and (folder / name).exists() and read_secret(folder / name) != known[var]
    ]
    if conflicts:
        raise SecretConflict("; ".join(conflicts) + ": keep the right value in the file and delete the line in .env")
    moved: list[str] = []
    generated: list[str] = []
    for var, (name, generate) in SECRETS.items():
        path = folder / name
        if path.exists():
            continue
        value = known.get(var) or generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), SECRET_FILE_MODE)  # exactly this mode, whatever the umask
            out.write(value)  # no line break: every reader takes the file's bytes as the value
        (moved if var in known else generated).append(name)
    return moved, generated


def without_secrets(env_text: str) -> tuple[str, dict[str, str]]:
    """`env_text` without the secrets' lines, and the values they held (old installs kept them there)."""
    kept, found = [], {}
    for line in env_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and key.strip() in SECRETS:
            found[key.strip()] = value.strip()
            continue
        kept.append(line)
    return "\n".join(kept) + "\n", found


# ---- the engine's open-file limit ----------------------------------------------------------------


def parse_ulimit(text: str) -> int | None:
    """`ulimit -Hn`'s output as a number (`unlimited` as NOFILE_DEFAULT); None when it is not one."""
    word = text.strip().splitlines()[-1].strip() if text.strip() else ""
    if word == "unlimited":
        return NOFILE_DEFAULT
    return int(word) if word.isdigit() and int(word) > 0 else None


def stack_image(compose_file: Path = COMPOSE, name: str = "redis") -> str | None:
    """The image reference the compose file pins for `name` (the probe runs an image `up` pulls anyway)."""
    try:
        text = compose_file.read_text()
    except OSError:
        return None
    match = re.search(rf"^\s*image:\s*[\"']?({re.escape(name)}:[^\s\"'#]+)", text, re.MULTILINE)
    return match.group(1) if match else None


def probe_nofile(
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run, image: str | None = None
) -> tuple[int | None, str]:
    """(the hard open-file limit a container of this engine gets, or None; how it was found or why not)."""
    image = image or stack_image()
    if image is None:
        return None, "no Redis image named in docker-compose.yml"
    argv = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", "ulimit -Hn"]
    try:
        done = run(argv, capture_output=True, text=True, timeout=NOFILE_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`docker run` failed: {exc}"
    if done.returncode != 0:
        first = (done.stderr or "").strip().splitlines()[:1] or ["no message"]
        return None, f"`docker run {image}` exited {done.returncode}: {first[0]}"
    limit = parse_ulimit(done.stdout)
    if limit is None:
        return None, f"`ulimit -Hn` in {image} printed {done.stdout.strip()!r}"
    return limit, f"the engine's containers get a hard limit of {done.stdout.strip()}"


def fitting_nofile(probe: Callable[[], tuple[int | None, str]] = probe_nofile) -> tuple[int, str]:
    """NOFILE_LIMIT for a new .env, and a note saying where it came from."""
    limit, how = probe()
    if limit is not None:
        chosen = min(limit, NOFILE_DEFAULT)
        return chosen, f"NOFILE_LIMIT={chosen} ({how})"
    own = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    chosen = NOFILE_DEFAULT if own == resource.RLIM_INFINITY else min(own, NOFILE_DEFAULT)
    return chosen, (
        f"NOFILE_LIMIT={chosen} from this shell's own limit: could not ask the Docker engine ({how}). "
        "If containers then fail to start over `ulimit` or `nofile`, lower NOFILE_LIMIT in .env"
    )


# ---- commands -----------------------------------------------------------------------------------


def setup(env_path: Path, folder: Path, example: Path, probe: Callable[[], tuple[int | None, str]]) -> list[str]:
    """What `make up` needs before compose; returns the notes to print."""
    notes = []
    if env_path.exists():
        text, found = without_secrets(env_path.read_text())
        if found:
            moved, _ = write_secrets(folder, found)
            replace_private(env_path, text)
            notes.append(
                f"moved {', '.join(sorted(found))} out of {env_path} into {folder}/ "
                f"({len(moved)} file(s) written, the rest already there); {env_path} holds no secret now"
            )
    else:
        nofile, how = fitting_nofile(probe)
        write_private(env_path, render_env(example.read_text(), nofile))
        notes.append(f"wrote {env_path}; {how}")
    _, generated = write_secrets(folder)
    if generated:
        notes.append(f"generated {', '.join(generated)} in {folder}/")
    created = write_receiver_files(folder)
    if created:
        notes.append(f"created {', '.join(created)} in {folder}/, empty: alerts reach nobody until one is filled")
    return notes


def write_receiver_files(folder: Path) -> list[str]:
    """Create each missing receiver file with its starting content (mode as the secrets'); the names created."""
    created = []
    for name, content in RECEIVER_FILES.items():
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), SECRET_FILE_MODE)
            out.write(content)
        created.append(name)
    return created


GPU_FILES = "docker-compose.yml:docker-compose.gpu.yml"


def set_gpu(env_text: str, on: bool) -> str:
    """`env_text` with COMPOSE_FILE naming the GPU override (on) or no COMPOSE_FILE (off).

    Compose reads COMPOSE_FILE from .env, so every later plain `up`, `--scale` or `run` keeps
    the override; a `-f` on one command line would be lost on the next.
    """
    lines = [line for line in env_text.splitlines() if not line.startswith("COMPOSE_FILE=")]
    if on:
        lines.append(f"COMPOSE_FILE={GPU_FILES}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="template (default: .env.example)")
    parser.add_argument("--output", type=Path, help="write this file (mode 0600) instead of printing")
    parser.add_argument(
        "--setup", action="store_true", help="write .env (when missing) and the missing secret files: `make up`"
    )
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="with --setup (default: .env)")
    parser.add_argument("--secrets-dir", type=Path, default=Path("secrets"), help="with --setup (default: secrets)")
    parser.add_argument(
        "--gpu",
        nargs=2,
        metavar=("on|off", "ENV_FILE"),
        help="set or clear the GPU override (COMPOSE_FILE) in an existing .env, then exit",
    )
    args = parser.parse_args(argv)
    if args.gpu:
        state, env_path = args.gpu[0], Path(args.gpu[1])
        if state not in ("on", "off"):
            parser.error("--gpu takes on or off")
        env_path.write_text(set_gpu(env_path.read_text(), state == "on"))
        print(f"make_env: GPU override {state} in {env_path} (COMPOSE_FILE)", file=sys.stderr)
        return 0
    try:
        if args.setup:
            for note in setup(args.env_file, args.secrets_dir, args.example, probe_nofile):
                print(f"make_env: {note}", file=sys.stderr)
            admin, grafana = SECRETS["GATEWAY_ADMIN_KEY"][0], SECRETS["GRAFANA_ADMIN_PASSWORD"][0]
            print(
                f"make_env: bootstrap admin API key in {args.secrets_dir / admin}; Grafana: user `admin`, "
                f"password in {args.secrets_dir / grafana}",
                file=sys.stderr,
            )
            return 0
        text = render_env(args.example.read_text())
        if args.output:
            write_private(args.output, text)
        else:
            sys.stdout.write(text)
    except FileExistsError as exc:
        print(f"make_env: {exc.filename} exists; remove it first to write a new one", file=sys.stderr)
        return 1
    except (OSError, EnvTemplateError, SecretConflict) as exc:
        print(f"make_env: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
