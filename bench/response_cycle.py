"""The response path's own CPU: one streamed answer's head and three body writes, in-process.

    python -m bench.response_cycle [--gateway-dir PATH] [--responses 3000] [--rounds 25]

What uvicorn's response cycle (through gateway/server_protocol.py) costs per response, without
sockets, other processes or the load generator: a head with a gateway answer's headers, then three
body parts, written to a transport that drops them. The best of `--rounds` rounds is reported,
because on a shared host the mean of a round moves with the neighbours by up to 2x while the best
stays put. `--gateway-dir` measures another checkout's gateway package (before/after); a checkout
from before `GatewayCycle` is measured as it ran, uvicorn's cycle behind its head-holding transport.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

# What a streamed gateway answer carries (server and date come from uvicorn's defaults).
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no"), (b"x-cache", b"MISS"), (b"x-ratelimit-limit-requests", b"1000000"),
           (b"x-ratelimit-remaining-requests", b"999999"), (b"x-ratelimit-reset-requests", b"33s"),
           (b"x-request-id", b"0123456789abcdef0123456789abcdef")]
DEFAULT_HEADERS = [(b"server", b"uvicorn"), (b"date", b"Mon, 23 Nov 2026 09:00:00 GMT")]
PARTS = (b"data: {}\n\n" * 2, b"data: {}\n\n" * 140, b"data: {}\n\ndata: [DONE]\n\n")


class NullTransport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle_factory(server_protocol: Any, loop: asyncio.AbstractEventLoop):  # noqa: ANN201
    """A function making one response cycle as the given gateway package serves a request."""
    common = dict(scope={"method": "POST", "http_version": "1.1"}, logger=None, access_logger=None, access_log=False,
                  default_headers=DEFAULT_HEADERS, expect_100_continue=False, keep_alive=True,
                  on_response=lambda: None)
    gateway_cycle = getattr(server_protocol, "GatewayCycle", None)

    def make(transport: NullTransport) -> RequestResponseCycle:
        if gateway_cycle is not None:
            cycle = gateway_cycle(transport=transport, flow=FlowControl(transport), message_event=asyncio.Event(),
                                  **common)
            cycle.loop = loop
            return cycle
        held = server_protocol.HeadHoldingTransport(transport, loop)  # before GatewayCycle
        return RequestResponseCycle(transport=held, flow=FlowControl(held), message_event=asyncio.Event(), **common)

    return make


async def best_us_per_response(server_protocol: Any, responses: int, rounds: int) -> tuple[float, int]:
    """Best microseconds per response over `rounds` rounds, and the bytes one response wrote."""
    make = cycle_factory(server_protocol, asyncio.get_running_loop())
    start = {"type": "http.response.start", "status": 200, "headers": HEADERS}
    bodies = [{"type": "http.response.body", "body": part, "more_body": i < len(PARTS) - 1}
              for i, part in enumerate(PARTS)]
    best = float("inf")
    written = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(responses):
            transport = NullTransport()
            cycle = make(transport)
            await cycle.send(start)
            for body in bodies:
                await cycle.send(body)
            if i % 100 == 99:
                await asyncio.sleep(0)  # the end-of-turn callbacks run, as they would between requests
            written = transport.written
        await asyncio.sleep(0)
        best = min(best, (time.perf_counter() - t0) / responses * 1e6)
    return best, written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.response_cycle", description=__doc__.split("\n")[0])
    p.add_argument("--gateway-dir", type=Path, default=None, help="a checkout whose gateway package to measure")
    p.add_argument("--responses", type=int, default=3000, help="responses per round")
    p.add_argument("--rounds", type=int, default=25)
    args = p.parse_args(argv)
    if args.responses < 1 or args.rounds < 1:
        p.error("--responses and --rounds must be >= 1")
    if args.gateway_dir is not None:
        if not (args.gateway_dir / "gateway" / "server_protocol.py").is_file():
            p.error(f"{args.gateway_dir} has no gateway/server_protocol.py")
        sys.path.insert(0, str(args.gateway_dir.resolve()))
        for name in [m for m in sys.modules if m == "gateway" or m.startswith("gateway.")]:
            del sys.modules[name]
    server_protocol = importlib.import_module("gateway.server_protocol")
    us, written = uvloop.run(best_us_per_response(server_protocol, args.responses, args.rounds))
    print(f"{Path(server_protocol.__file__).parent.parent}: {us:.2f} us per streamed response "
          f"(best of {args.rounds} rounds of {args.responses}; {written} bytes each)")


if __name__ == "__main__":
    main()
