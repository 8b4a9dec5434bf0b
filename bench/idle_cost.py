"""What one client's request costs the gateway as the backend's answer time grows (it sleeps meanwhile).

One client, Ollama API, the full policy path; for each backend delay a fresh mock and gateway,
the direct call and the gateway call measured back to back. The same request that costs the
gateway ~0.5 ms of CPU against an instant backend costs 2-3x that when every request leaves the
process idle for 20 ms: caches and the virtual CPU go cold between requests. This is what the
1-client point of `python -m bench.overhead` (20 ms backend) measures on top of the gateway's work.

    python -m bench.idle_cost [--backend-ms 0,1,5,20] [--requests 500] [--scenario plain|stream]
                              [--gateway-dir PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.point import SCENARIOS, kind_for, measure
from bench.stack import (BenchSetupError, MockOptions, direct_target, exit_cleanly_on_sigterm, smoke_check,
                         start_gateway, start_mock)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle_cost", description=__doc__.split("\n")[0])
    p.add_argument("--backend-ms", default="0,1,5,20", help="comma-separated backend delays")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--scenario", choices=("plain", "stream"), default="plain")
    p.add_argument("--gateway-dir", type=Path, default=None,
                   help="run the gateway package of another checkout (default: this one)")
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    try:
        delays = [float(x) for x in args.backend_ms.split(",")]
    except ValueError:
        p.error("--backend-ms takes numbers separated by commas, e.g. 0,5,20")
    if args.requests < 1 or min(delays) < 0:
        p.error("--requests must be >= 1 and delays >= 0")
    print("| backend ms | gateway CPU ms / request | redis CPU ms / request | added p50 ms | added p90 ms "
          "| added TTFT p50 ms |\n|---|---|---|---|---|---|")
    for ms in delays:
        with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            opts = MockOptions(first_token_ms=ms, plain_delay_ms=ms)
            try:
                mock = start_mock(stack, opts)
                gateway = start_gateway(stack, mock, backend_kind="ollama", source_dir=args.gateway_dir)
                direct = direct_target(mock, path="/api/chat")
                for target in (direct, gateway):
                    smoke_check(target, opts.model)
            except BenchSetupError as exc:
                raise SystemExit(f"idle-cost benchmark setup failed: {exc}") from None
            d, g = (measure(target=t, kinds=[kind_for(SCENARIOS[args.scenario], t, opts.model)],
                            scenario=args.scenario, concurrency=1, requests=args.requests, warmup=100,
                            workdir=Path(tmp), mock_url=mock.url) for t in (direct, gateway))
        print(f"| {ms:g} | {g.cpu_s_per_1k['gateway']:.3f} | {g.cpu_s_per_1k.get('redis', 0.0):.3f} "
              f"| {g.p50_ms - d.p50_ms:.3f} | {g.p90_ms - d.p90_ms:.3f} | {g.ttft_p50_ms - d.ttft_p50_ms:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
