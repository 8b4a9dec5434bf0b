"""Gateway overhead over the Ollama API called directly, one gateway.

The backend is the bench mock speaking Ollama's native API (/api/chat, NDJSON). The direct rows call
its /api/chat; the gateway rows call the gateway's /v1/chat/completions, which reaches the same mock
through its Ollama backend. The targets (`TARGETS` below) bound the added p50 at 1 client and
the added p50 and p99 at 50 clients against a double answering in `--backend-ms`, for non-streamed
latency and for the time to first token of streamed requests.

The issue gives the backend delay only for the 50-client targets, so the 1-client target is measured
as stated, against the double answering at once (scenarios "plain-instant", "stream-instant"), and
also against the `--backend-ms` double, the stricter reading. Between two requests of one client
the host has time to evict the gateway's code and data from the CPU caches, so the same request
costs more behind a slow backend (bench/README.md has the figures).

    python -m bench.overhead [--requests 1000] [--no-redis] [--blocks 5]

The 1-client points alternate direct and gateway in `--blocks` blocks (bench.point.measure_alternating):
measured one after the other, two runs of the same code differed on this shared host by as much as
the effect being measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import machine, report
from bench.point import SCENARIOS, kind_for, measure, measure_alternating
from bench.stack import (
    BenchSetupError,
    MockOptions,
    direct_target,
    exit_cleanly_on_sigterm,
    smoke_check,
    start_gateway,
    start_mock,
)
from bench.stats import PointSummary

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
INSTANT = "-instant"  # scenario suffix of the points measured against the double answering at once
# (scenario suffix, clients, added p50 limit ms, added p99 limit ms or None)
TARGETS = ((INSTANT, 1, 1.0, None), ("", 1, 1.0, None), ("", 50, 3.0, 15.0))


def block_added(direct: list[float], gateway: list[float]) -> list[float]:
    """Added ms block by block: each gateway block's p50 less the direct block run just before it."""
    return [g - d for d, g in zip(direct, gateway, strict=True)]


def _block_spread(idx: dict, scenario: str, clients: int, attr: str) -> str:
    """ " (blocks: lo to hi)" for a point measured in alternating blocks, else ""."""
    blocks = {"p50_ms": "block_p50_ms", "ttft_p50_ms": "block_ttft_p50_ms"}.get(attr)
    direct, gateway = idx.get((scenario, report.DIRECT, clients)), idx.get((scenario, report.GATEWAY, clients))
    if blocks is None or direct is None or gateway is None or not getattr(gateway, blocks):
        return ""
    each = block_added(getattr(direct, blocks), getattr(gateway, blocks))
    return f" (blocks: {min(each):.3f} to {max(each):.3f})"


def checks(points: list[PointSummary], backend_ms: float = 20.0) -> list[tuple[str, str, bool | None]]:
    idx = report.index(points)
    out: list[tuple[str, str, bool | None]] = []
    for base, attrs, label in (
        ("plain", ("p50_ms", "p99_ms"), "latency"),
        ("stream", ("ttft_p50_ms", "ttft_p99_ms"), "TTFT"),
    ):
        for suffix, clients, p50_max, p99_max in TARGETS:
            scenario = base + suffix
            if (scenario, report.GATEWAY, clients) not in idx:
                continue
            backend = "backend answering at once" if suffix == INSTANT else f"backend answering in {backend_ms:g} ms"
            for attr, limit in zip(attrs, (p50_max, p99_max), strict=False):
                if limit is None:
                    continue
                got = report.added(idx, scenario, report.GATEWAY, clients, attr)
                q = "p99" if "99" in attr else "p50"
                out.append(
                    (
                        f"added {label} {q} at {clients} client{'s' if clients > 1 else ''}, {backend} <= {limit:g} ms",
                        f"{got:.3f} ms{_block_spread(idx, scenario, clients, attr)}",
                        None if got != got else got <= limit,
                    )
                )
    return out


def _measure_on(
    opts: MockOptions, plan: list[tuple[str, int]], suffix: str, args: argparse.Namespace, workdir: Path
) -> tuple[list[PointSummary], dict[str, dict[str, int]]]:
    """A fresh mock (answering per `opts`) and gateway; each (scenario, clients) in `plan` measured
    direct and through the gateway, the points' scenarios named with `suffix`. Stops both when done."""
    points: list[PointSummary] = []
    with ExitStack() as stack:
        try:
            mock = start_mock(stack, opts)
            gateway = start_gateway(
                stack,
                mock,
                backend_kind="ollama",
                with_redis=not args.no_redis,
                workers=args.workers,
                source_dir=args.gateway_dir,
            )
            direct = direct_target(mock, path="/api/chat")
            for t in (direct, gateway):
                smoke_check(t, opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"overhead benchmark setup failed: {exc}") from None
        for name, clients in plan:
            kinds = {t.name: [kind_for(SCENARIOS[name], t, opts.model)] for t in (direct, gateway)}
            label = name + suffix
            if clients == 1 and args.blocks > 1:  # see measure_alternating: host drift, paired away
                pair = measure_alternating(
                    targets=[direct, gateway],
                    kinds=kinds,
                    scenario=label,
                    concurrency=clients,
                    requests=args.requests,
                    blocks=args.blocks,
                    warmup=args.block_warmup,
                    workdir=workdir,
                    mock_url=mock.url,
                )
            else:
                pair = [
                    measure(
                        target=t,
                        kinds=kinds[t.name],
                        scenario=label,
                        concurrency=clients,
                        requests=args.requests,
                        warmup=args.warmup,
                        workdir=workdir,
                        mock_url=mock.url,
                    )
                    for t in (direct, gateway)
                ]
            for pt in pair:
                points.append(pt)
                print(
                    f"{label:14s} {pt.target:8s} c={clients:<3d} p50 {pt.p50_ms:7.2f} p99 {pt.p99_ms:7.2f} "
                    f"ttft50 {pt.ttft_p50_ms:7.2f} ms non-2xx {pt.requests - pt.ok}",
                    flush=True,
                )
        rss = {"gateway": gateway.peak_rss()}  # while the processes still run
    return points, rss


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument(
        "--gateway-dir", type=Path, default=None, help="run the gateway package of another checkout (default: this one)"
    )
    p.add_argument("--requests", type=int, default=1000, help="measured requests per point")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--backend-ms", type=float, default=20.0, help="how long the mock takes to answer")
    p.add_argument("--no-redis", action="store_true", help="gateway with in-process stores (no REDIS_URL)")
    p.add_argument(
        "--workers", type=int, default=1, help="the gateway's uvicorn worker processes (passed as GATEWAY_WORKERS)"
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=5,
        help="1-client points: direct and gateway take turns in this many blocks (1: one run each)",
    )
    p.add_argument("--block-warmup", type=int, default=20, help="warm-up requests before each block")
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    if min(args.requests, args.blocks, args.workers) < 1 or min(args.warmup, args.backend_ms, args.block_warmup) < 0:
        p.error("--requests, --blocks and --workers must be >= 1; --warmup, --block-warmup and --backend-ms >= 0")
    if args.blocks > args.requests:
        p.error("--blocks cannot exceed --requests")
    opts = MockOptions(token_delay_ms=0.0, first_token_ms=args.backend_ms, plain_delay_ms=args.backend_ms)
    at_once = dataclasses.replace(opts, first_token_ms=0.0, plain_delay_ms=0.0)
    info = machine.describe(args.gateway_dir)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        points, _ = _measure_on(at_once, [("plain", 1), ("stream", 1)], INSTANT, args, Path(tmp))
        delayed, rss = _measure_on(
            opts, [("plain", 1), ("plain", 50), ("stream", 1), ("stream", 50)], "", args, Path(tmp)
        )
        points += delayed
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    info["load_average_at_end"] = machine.load_average()
    settings = {
        "requests per point": args.requests,
        "warm-up per point": f"max({args.warmup}, 10 per client)",
        "1-client points": (
            f"direct and gateway alternating in {args.blocks} blocks, {args.block_warmup} warm-up requests before each"
            if args.blocks > 1
            else "one run each"
        ),
        "backend answers in": f"{args.backend_ms} ms (scenarios *-instant: at once)",
        "gateway": f"GATEWAY_WORKERS={args.workers}, Ollama backend, " + ("no Redis" if args.no_redis else "Redis"),
    }
    scenarios = {n + INSTANT: SCENARIOS[n].description + "; the backend answers at once" for n in ("plain", "stream")}
    scenarios |= {
        n: f"{SCENARIOS[n].description}; the backend answers in {args.backend_ms:g} ms" for n in ("plain", "stream")
    }
    text = report.markdown(
        title=f"Gateway overhead over Ollama's API {stamp}",
        machine=info,
        settings=settings,
        points=points,
        rss=rss,
        scenarios=scenarios,
        checks=checks(points, args.backend_ms),
        notes=["direct = the mock's /api/chat; gateway = its /v1/chat/completions on the same mock."],
    )
    report.publish(text, RESULTS_ROOT / f"overhead-{stamp}.md")


if __name__ == "__main__":
    main()
