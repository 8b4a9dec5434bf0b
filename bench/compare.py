"""The gateway against the floor and against LiteLLM's proxy, in one run.

Starts on loopback: the mock backend, the gateway (production settings, API key, Redis;
`--workers` uvicorn workers, one by default) and LiteLLM's proxy (one worker, master key, Redis
cache), then sends the same load to each and to
the mock directly, point by point (scenario x clients x target, interleaved so drift in the
machine's load hits every target alike). Writes results.md, results.json and plot.png under
bench/results/<UTC time>/.

    python -m bench                      # the full run (make bench)
    python -m bench --requests 500 --targets gateway --clients 1,10
    python -m bench --workers 2          # the gateway with GATEWAY_WORKERS=2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import machine, report
from bench.point import SCENARIOS, kind_for, measure
from bench.stack import (
    BenchSetupError,
    MockOptions,
    Target,
    direct_target,
    exit_cleanly_on_sigterm,
    routed_target,
    smoke_check,
    start_gateway,
    start_litellm,
    start_mock,
)
from bench.stats import PointSummary

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Gateway vs direct vs LiteLLM proxy.")
    p.add_argument(
        "--gateway-dir", type=Path, default=None, help="run the gateway package of another checkout (default: this one)"
    )
    p.add_argument("--requests", type=int, default=2000, help="measured requests per point")
    p.add_argument("--warmup", type=int, default=100, help="unmeasured requests before each point")
    p.add_argument("--clients", default="1,10,50", help="comma-separated concurrency levels")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"any of {','.join(SCENARIOS)}")
    p.add_argument("--tokens", type=int, default=16, help="tokens (stream chunks) per answer")
    p.add_argument("--token-delay-ms", type=float, default=1.0, help="gap between streamed tokens")
    p.add_argument("--plain-delay-ms", type=float, default=0.0, help="how long a non-streamed answer takes")
    p.add_argument(
        "--gateway-backend",
        choices=("openai", "ollama"),
        default="openai",
        help="API the gateway uses to reach the mock (LiteLLM always uses openai)",
    )
    p.add_argument(
        "--targets",
        default="direct,gateway,routed,litellm",
        help="which of direct,gateway,routed,litellm to measure (direct is always measured: it is the "
        "floor; routed is the gateway called through a model route, so it needs gateway)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="the gateway's uvicorn worker processes (passed as GATEWAY_WORKERS)"
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<time>)")
    args = p.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        p.error("--clients must be comma-separated integers, e.g. 1,10,50")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    args.targets = {t for t in args.targets.split(",") if t} | {"direct"}
    if args.targets - {"direct", "gateway", "routed", "litellm"}:
        p.error("--targets takes direct, gateway, routed and/or litellm")
    if "routed" in args.targets and "gateway" not in args.targets:
        p.error("--targets routed needs gateway too (it is the same gateway, called through a route)")
    if args.requests < 1 or args.warmup < 0 or min(args.clients) < 1 or args.workers < 1:
        p.error("--requests, --workers and every --clients level must be >= 1, --warmup >= 0")
    return args


def run_points(
    targets: list[Target],
    mock_pid: int,
    mock_url: str,
    args: argparse.Namespace,
    model: str,
    workdir: Path,
    dead: dict[str, str],
) -> list[PointSummary]:
    """Every point, target by target; a target whose process died is skipped from then on
    and recorded in `dead` (so the report says so instead of counting refused connections)."""
    points: list[PointSummary] = []
    total = len(args.scenarios) * len(args.clients) * len(targets)
    for scenario_name in args.scenarios:
        scenario = SCENARIOS[scenario_name]
        for clients in args.clients:
            for target in targets:
                if target.name in dead:
                    continue
                if gone := target.exited():
                    dead[target.name] = f"{target.name} stopped before {scenario_name} at {clients} clients: {gone}"
                    print(dead[target.name], flush=True)
                    continue
                extra = {} if target.name == "direct" else {"mock": mock_pid}
                p = measure(
                    target=target,
                    kinds=[kind_for(scenario, target, target.model or model)],
                    scenario=scenario_name,
                    concurrency=clients,
                    requests=args.requests,
                    warmup=args.warmup,
                    workdir=workdir,
                    mock_url=mock_url,
                    extra_pids=extra,
                )
                points.append(p)
                cpu = p.cpu_s_per_1k.get(target.name if target.name != "direct" else "mock", float("nan"))
                print(
                    f"[{len(points)}/{total}] {scenario_name:9s} {target.name:8s} c={clients:<3d} "
                    f"p50 {p.p50_ms:8.2f} p99 {p.p99_ms:8.2f} ttft50 {p.ttft_p50_ms:8.2f} ms  "
                    f"{p.rps:7.0f} req/s  cpu {cpu:.2f} s/1k  backend calls/req {p.backend_calls_per_request:.2f}  "
                    f"non-2xx {p.requests - p.ok}",
                    flush=True,
                )
    return points


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or RESULTS_ROOT / stamp
    out.mkdir(parents=True, exist_ok=True)
    opts = MockOptions(tokens=args.tokens, token_delay_ms=args.token_delay_ms, plain_delay_ms=args.plain_delay_ms)
    info = machine.describe(args.gateway_dir)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            mock = start_mock(stack, opts)
            targets = [direct_target(mock)]
            if "gateway" in args.targets:
                targets.append(
                    start_gateway(
                        stack,
                        mock,
                        backend_kind=args.gateway_backend,
                        workers=args.workers,
                        source_dir=args.gateway_dir,
                    )
                )
                if "routed" in args.targets:
                    targets.append(routed_target(targets[-1], opts.model))
            if "litellm" in args.targets:
                targets.append(start_litellm(stack, mock, model=opts.model, workdir=Path(tmp)))
            for t in targets:
                smoke_check(t, t.model or opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"benchmark setup failed: {exc}") from None
        print(f"targets up: {', '.join(t.name for t in targets)}; writing to {out}", flush=True)
        dead: dict[str, str] = {}
        points = run_points(targets, mock.proc.pid, mock.url, args, opts.model, Path(tmp), dead)
        rss = {t.name: t.peak_rss() for t in targets}
    info["load_average_at_end"] = machine.load_average()
    settings = {
        "requests per point": args.requests,
        "warm-up per point": f"max({args.warmup}, 10 per client)",
        "mock": f"{opts.tokens} tokens, {opts.token_delay_ms} ms between streamed tokens, "
        f"plain answer after {opts.plain_delay_ms} ms",
        "gateway backend API": args.gateway_backend,
        "LiteLLM backend API": "openai",
        "gateway workers (GATEWAY_WORKERS)": args.workers,
    }
    notes = [
        "Every process (load generator, mock, gateway, LiteLLM, two redis-servers) shares this "
        "machine's cores; at high concurrency the numbers include that contention.",
        "LiteLLM authenticates with its master key: virtual keys need its Postgres database, "
        "which this harness does not run.",
    ]
    notes += [f"NOT MEASURED FURTHER: {why}" for why in dead.values()]
    checks = report.target_checks(points, rss)
    title = f"Gateway benchmark {stamp}"
    (out / "results.md").write_text(
        report.markdown(
            title=title,
            machine=info,
            settings=settings,
            points=points,
            rss=rss,
            scenarios={n: s.description for n, s in SCENARIOS.items()},
            checks=checks,
            notes=notes,
        )
    )
    (out / "results.json").write_text(
        json.dumps(
            {
                "machine": info,
                "settings": settings,
                "points": [p.as_dict() for p in points],
                "peak_rss": rss,
                "checks": checks,
            },
            indent=1,
        )
    )
    report.plot(points, out / "plot.png", title)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, {out / 'plot.png'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()
