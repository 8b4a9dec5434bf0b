"""Plain requests/s through the gateway with 1 uvicorn worker against N, in one run.

Starts one mock and, side by side, one gateway per worker count (`python -m gateway` with
GATEWAY_WORKERS set, each with its own Redis), then sends the same plain load (unique prompts:
cache miss + store) at `--clients` clients to each, the gateways taking turns in `--rounds`
rounds so drift in the host's load weighs on all of them alike. Reports requests/s, latency,
the CPU of the gateway's process tree per request, how many processes that tree had while it
served, and the requests/s of each count against the first's.

The process count is the check that the setting took: a gateway that does not know
GATEWAY_WORKERS ignores it and serves from one process, and the ratio then only shows noise.

    python -m bench.workers [--workers 1,2] [--clients 50] [--requests 4000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import machine, report
from bench.point import SCENARIOS, kind_for, measure_alternating
from bench.procs import descendants
from bench.stack import (
    BenchSetupError,
    MockOptions,
    Target,
    exit_cleanly_on_sigterm,
    smoke_check,
    start_gateway,
    start_mock,
)
from bench.stats import PointSummary

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def target_name(workers: int) -> str:
    return f"gateway-{workers}w"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated GATEWAY_WORKERS values, the first the baseline")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=4000, help="measured requests per gateway, over all rounds")
    p.add_argument("--rounds", type=int, default=4, help="the gateways take turns this many times")
    p.add_argument(
        "--warmup", type=int, default=100, help="unmeasured requests before each round (10 per client at least)"
    )
    p.add_argument(
        "--gateway-dir", type=Path, default=None, help="run the gateway package of another checkout (default: this one)"
    )
    args = p.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error("--workers must be comma-separated integers, e.g. 1,2")
    if len(args.workers) < 2 or len(set(args.workers)) != len(args.workers) or min(args.workers) < 1:
        p.error("--workers needs at least two different counts >= 1, e.g. 1,2")
    if min(args.clients, args.requests, args.rounds) < 1 or args.warmup < 0 or args.rounds > args.requests:
        p.error("--clients, --requests and --rounds must be >= 1 (rounds <= requests), --warmup >= 0")
    return args


def serving_processes(target: Target) -> int:
    """Processes in the gateway's tree: 1 for a single process, the supervisor + N workers otherwise."""
    return len(descendants(target.pids()["gateway"]))


def table(points: list[PointSummary], workers: list[int], processes: dict[int, int]) -> list[str]:
    by_name = {p.target: p for p in points}
    base = by_name[target_name(workers[0])].rps
    rows = [
        "| GATEWAY_WORKERS | processes in the gateway's tree | req/s | vs first | p50 ms | p99 ms | "
        "gateway CPU ms / req | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in workers:
        p = by_name[target_name(w)]
        cpu = p.cpu_s_per_1k.get("gateway", float("nan"))
        rows.append(
            f"| {w} | {processes[w]} | {p.rps:.0f} | {p.rps / base:.2f}x | {p.p50_ms:.2f} | {p.p99_ms:.2f} "
            f"| {cpu:.3f} | {p.requests - p.ok} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    opts = MockOptions(token_delay_ms=0.0, plain_delay_ms=0.0)
    info = machine.describe(args.gateway_dir)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        try:
            mock = start_mock(stack, opts)
            gateways = [
                start_gateway(stack, mock, workers=w, source_dir=args.gateway_dir, name=target_name(w))
                for w in args.workers
            ]
            for g in gateways:
                smoke_check(g, opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"workers benchmark setup failed: {exc}") from None
        kinds = {g.name: [kind_for(SCENARIOS["plain"], g, opts.model)] for g in gateways}
        points = measure_alternating(
            targets=gateways,
            kinds=kinds,
            scenario="plain",
            concurrency=args.clients,
            requests=args.requests,
            blocks=args.rounds,
            warmup=args.warmup,
            workdir=Path(tmp),
            mock_url=mock.url,
        )
        processes = {w: serving_processes(g) for w, g in zip(args.workers, gateways, strict=True)}
    info["load_average_at_end"] = machine.load_average()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    lines = [f"# Gateway workers {stamp}: plain requests at {args.clients} clients", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [f"| requests per gateway | {args.requests} in {args.rounds} alternating rounds |", ""]
    lines += table(points, args.workers, processes)
    if any(processes[w] < 2 for w in args.workers if w > 1):
        lines += [
            "",
            "A gateway asked for several workers ran as one process: this gateway version ignores "
            "GATEWAY_WORKERS, so the ratio compares one process with itself.",
        ]
    lines += ["", "Every process (load generator, mock, gateways, redis-servers) shares this machine's cores."]
    report.publish("\n".join(lines) + "\n", RESULTS_ROOT / f"workers-{stamp}.md")


if __name__ == "__main__":
    main()
