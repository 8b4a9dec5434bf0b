"""Gateway overhead over the Ollama API called directly (issue 2), one uvicorn worker.

The backend is the bench mock speaking Ollama's native API (/api/chat, NDJSON), answering in
`--backend-ms` (20 ms by default). The direct rows call its /api/chat; the gateway rows call the
gateway's /v1/chat/completions, which reaches the same mock through its Ollama backend.
Targets (issue 2): 1 client, added p50 <= 1 ms; 50 clients, added p50 <= 3 ms and p99 <= 15 ms,
for non-streamed latency and for the time to first token of streamed requests.

    python -m bench.overhead [--requests 1000] [--no-redis] [--blocks 5]

The 1-client points alternate direct and gateway in `--blocks` blocks (bench.point.measure_alternating):
measured one after the other, the same code's added p50 moved by up to 0.7 ms between runs on this
host, as much as the target itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import machine, report
from bench.point import SCENARIOS, kind_for, measure, measure_alternating
from bench.stack import (BenchSetupError, MockOptions, direct_target, exit_cleanly_on_sigterm, smoke_check,
                         start_gateway, start_mock)
from bench.stats import PointSummary

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
# (clients, added p50 limit ms, added p99 limit ms or None)
TARGETS = ((1, 1.0, None), (50, 3.0, 15.0))


def block_added(direct: list[float], gateway: list[float]) -> list[float]:
    """Added ms block by block: each gateway block's p50 less the direct block run just before it."""
    return [g - d for d, g in zip(direct, gateway, strict=True)]


def _block_spread(idx: dict, scenario: str, clients: int, attr: str) -> str:
    """" (blocks: lo to hi)" for a point measured in alternating blocks, else ""."""
    blocks = {"p50_ms": "block_p50_ms", "ttft_p50_ms": "block_ttft_p50_ms"}.get(attr)
    direct, gateway = idx.get((scenario, report.DIRECT, clients)), idx.get((scenario, report.GATEWAY, clients))
    if blocks is None or direct is None or gateway is None or not getattr(gateway, blocks):
        return ""
    each = block_added(getattr(direct, blocks), getattr(gateway, blocks))
    return f" (blocks: {min(each):.3f} to {max(each):.3f})"


def checks(points: list[PointSummary]) -> list[tuple[str, str, bool | None]]:
    idx = report.index(points)
    out: list[tuple[str, str, bool | None]] = []
    for scenario, attrs, label in (("plain", ("p50_ms", "p99_ms"), "latency"),
                                   ("stream", ("ttft_p50_ms", "ttft_p99_ms"), "TTFT")):
        for clients, p50_max, p99_max in TARGETS:
            for attr, limit in zip(attrs, (p50_max, p99_max)):
                if limit is None:
                    continue
                got = report.added(idx, scenario, report.GATEWAY, clients, attr)
                q = "p99" if "99" in attr else "p50"
                out.append((f"added {label} {q} at {clients} client{'s' if clients > 1 else ''} <= {limit:g} ms",
                            f"{got:.3f} ms{_block_spread(idx, scenario, clients, attr)}",
                            None if got != got else got <= limit))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--gateway-dir", type=Path, default=None,
                   help="run the gateway package of another checkout (default: this one)")
    p.add_argument("--requests", type=int, default=1000, help="measured requests per point")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--backend-ms", type=float, default=20.0, help="how long the mock takes to answer")
    p.add_argument("--no-redis", action="store_true", help="gateway with in-process stores (no REDIS_URL)")
    p.add_argument("--blocks", type=int, default=5,
                   help="1-client points: direct and gateway take turns in this many blocks (1: one run each)")
    p.add_argument("--block-warmup", type=int, default=20, help="warm-up requests before each block")
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.requests < 1 or args.warmup < 0 or args.backend_ms < 0 or args.blocks < 1 or args.block_warmup < 0:
        p.error("--requests and --blocks must be >= 1; --warmup, --block-warmup and --backend-ms >= 0")
    if args.blocks > args.requests:
        p.error("--blocks cannot exceed --requests")
    opts = MockOptions(token_delay_ms=0.0, first_token_ms=args.backend_ms, plain_delay_ms=args.backend_ms)
    info = machine.describe(args.gateway_dir)
    points: list[PointSummary] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        try:
            mock = start_mock(stack, opts)
            gateway = start_gateway(stack, mock, backend_kind="ollama", with_redis=not args.no_redis,
                                    source_dir=args.gateway_dir)
            direct = direct_target(mock, path="/api/chat")
            for t in (direct, gateway):
                smoke_check(t, opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"overhead benchmark setup failed: {exc}") from None
        for name in ("plain", "stream"):
            for clients, _, _ in TARGETS:
                kinds = {t.name: [kind_for(SCENARIOS[name], t, opts.model)] for t in (direct, gateway)}
                if clients == 1 and args.blocks > 1:  # see measure_alternating: host drift, paired away
                    pair = measure_alternating(targets=[direct, gateway], kinds=kinds, scenario=name,
                                               concurrency=clients, requests=args.requests, blocks=args.blocks,
                                               warmup=args.block_warmup, workdir=Path(tmp), mock_url=mock.url)
                else:
                    pair = [measure(target=t, kinds=kinds[t.name], scenario=name, concurrency=clients,
                                    requests=args.requests, warmup=args.warmup, workdir=Path(tmp), mock_url=mock.url)
                            for t in (direct, gateway)]
                for pt in pair:
                    points.append(pt)
                    print(f"{name:6s} {pt.target:8s} c={clients:<3d} p50 {pt.p50_ms:7.2f} p99 {pt.p99_ms:7.2f} "
                          f"ttft50 {pt.ttft_p50_ms:7.2f} ms non-2xx {pt.requests - pt.ok}", flush=True)
        rss = {"gateway": gateway.peak_rss()}  # while the processes still run
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    info["load_average_at_end"] = machine.load_average()
    settings = {"requests per point": args.requests, "warm-up per point": f"max({args.warmup}, 10 per client)",
                "1-client points": (f"direct and gateway alternating in {args.blocks} blocks, {args.block_warmup} "
                                    "warm-up requests before each" if args.blocks > 1 else "one run each"),
                "backend answers in": f"{args.backend_ms} ms",
                "gateway": "one uvicorn worker, Ollama backend, " + ("no Redis" if args.no_redis else "Redis")}
    text = report.markdown(title=f"Gateway overhead over Ollama's API {stamp}", machine=info, settings=settings,
                           points=points, rss=rss,
                           scenarios={n: SCENARIOS[n].description for n in ("plain", "stream")},
                           checks=checks(points), notes=["direct = the mock's /api/chat; gateway = its "
                                                         "/v1/chat/completions on the same mock."])
    RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
    out = RESULTS_ROOT / f"overhead-{stamp}.md"
    out.write_text(text)
    print(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
