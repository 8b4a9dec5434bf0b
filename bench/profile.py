"""Profile the gateway under load with py-spy: where its CPU goes per request.

Starts the mock and the gateway as `python -m bench` does, records the gateway with py-spy
(sampling, from outside the process, so the gateway runs unmodified) while the load generator
sends one scenario, then writes a flame graph (SVG), the collapsed stacks, and prints the
share of samples per package and the functions with the most samples, self and inclusive.

py-spy samples threads that are running *or runnable*: on an overloaded machine a process
preempted inside a send() (the woken peer takes the core) shows as time on that line. Read
socket-write lines as "includes waiting for a core" and trust the CPU figure from /proc.

    python -m bench.profile [--scenario plain] [--clients 10] [--requests 5000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from bench.point import SCENARIOS, kind_for, run_loadgen
from bench.stack import BenchSetupError, MockOptions, exit_cleanly_on_sigterm, smoke_check, start_gateway, start_mock

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (it is in the `bench` extra)")
    return found


def top_functions(collapsed: Path, limit: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """From py-spy's collapsed stacks: (self samples, inclusive samples, total samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own.most_common(limit), inclusive.most_common(limit), total


PACKAGES = (
    "aiohttp/",
    "httpx/",
    "httpcore/",
    "anyio/",
    "ollama/",
    "redis/",
    "pydantic/",
    "prometheus_fastapi_instrumentator/",
    "prometheus_client/",
    "starlette/",
    "fastapi/",
    "uvicorn/",
    "gateway/",
)


def package_shares(collapsed: Path) -> list[tuple[str, float]]:
    """Share of samples whose stack passes through each package (nested packages overlap)."""
    hits: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for pkg in PACKAGES:
            if f"({pkg}" in stack or f"/{pkg}" in stack:
                hits[pkg] += int(count)
    return [(pkg, 100 * hits[pkg] / max(total, 1)) for pkg in PACKAGES]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument(
        "--gateway-dir", type=Path, default=None, help="run the gateway package of another checkout (default: this one)"
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="plain")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument(
        "--gateway-backend",
        choices=("openai", "ollama"),
        default="openai",
        help="API the gateway uses to reach the mock",
    )
    p.add_argument(
        "--backend-ms", type=float, default=0.0, help="how long the mock takes to answer (bench.overhead uses 20)"
    )
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS_ROOT / f"profile-{args.scenario}-{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = MockOptions(token_delay_ms=0.0, first_token_ms=args.backend_ms, plain_delay_ms=args.backend_ms)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        try:
            mock = start_mock(stack, opts)
            gateway = start_gateway(
                stack,
                mock,
                backend_kind=args.gateway_backend,
                with_redis=not args.no_redis,
                source_dir=args.gateway_dir,
            )
            smoke_check(gateway, opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"profile setup failed: {exc}") from None
        pid = gateway.pids()["gateway"]
        spec = {
            "host": "127.0.0.1",
            "port": gateway.port,
            "concurrency": args.clients,
            "requests": args.requests,
            "warmup": 200,
            "kinds": [asdict(kind_for(SCENARIOS[args.scenario], gateway, opts.model))],
            "watch_pids": {"gateway": pid},
        }
        records = []
        for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".collapsed")):
            spy = subprocess.Popen(
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(args.rate),
                    "--format",
                    fmt,
                    "--output",
                    str(out.with_suffix(suffix)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            result = run_loadgen(spec, Path(tmp), f"profile-{fmt}")
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            if spy.wait(timeout=60) != 0:
                raise SystemExit(f"py-spy failed: {spy.stderr.read()[-1000:]}")
            records.append(result)
    n = len(records[-1]["status"])
    cpu_ms = records[-1]["server_cpu_s"]["gateway"] * 1000 / n
    own, inclusive, total = top_functions(out.with_suffix(".collapsed"))
    lines = (
        [
            f"# Gateway profile: {args.scenario}, {args.clients} clients, {n} requests",
            "",
            f"gateway CPU {cpu_ms:.3f} ms/request, {n / records[-1]['wall_s']:.0f} req/s; {total} samples",
            "",
            "## Share of samples by package (inclusive)",
            "",
        ]
        + [f"- {share:5.1f} %  {pkg}" for pkg, share in package_shares(out.with_suffix(".collapsed"))]
        + ["", "## Self time", ""]
        + [f"- {100 * c / total:5.1f} %  {f}" for f, c in own]
        + ["", "## Inclusive time", ""]
        + [f"- {100 * c / total:5.1f} %  {f}" for f, c in inclusive]
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}.md, {out}.svg, {out}.collapsed")


if __name__ == "__main__":
    main()
