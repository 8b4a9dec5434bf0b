"""Where one request's time goes inside the gateway, step by step, when requests come one at a time.

    python -m bench.critical_path [--backend-ms 20] [--requests 300] [--scenario plain|stream]
                                  [--gateway-dir PATH ...] [--rounds 2] [--mode segments|calls] [--top N]

A 1-client latency target is a sum of small steps, each slower after the process sat idle while
the backend answered. This runs the gateway with a probe (bench/path_probe/sitecustomize.py, put
on its PYTHONPATH) that timestamps the edges of those steps: request read, front layer, auth, body
parse, policy, the Redis write and reply, the backend write and reply, the answer's first write,
then the end of the request's own work and the arrival of the client's next request.
It prints the median time between consecutive marks per checkout (`--gateway-dir` more than once,
e.g. a base and this checkout, alternated `--rounds` times), and end-to-end p50s direct and through
the gateway. `--mode calls` instead counts Python and C function calls per request (a deterministic
measure of interpreter work, unaffected by a noisy host). The probe's own marks add ~1 us each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

from bench.stack import (
    BenchSetupError,
    MockOptions,
    Target,
    direct_target,
    exit_cleanly_on_sigterm,
    smoke_check,
    start_gateway,
    start_mock,
)

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = Path(__file__).resolve().parent / "path_probe"
WARMUP = 50
PROMPTS = itertools.count()


def one_client(target: Target, *, stream: bool, n: int) -> list[float]:
    """`n` chat requests one after another on one keep-alive connection; seconds each, sorted.
    A raw socket: the client's own cost stays small and the same for both targets. Every prompt is
    new (temperature 0 makes the request cacheable: the gateway reads the cache, misses, calls the
    backend and stores the answer, as `python -m bench.overhead` has it do)."""
    auth = "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", target.port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            body = json.dumps({"model": MockOptions.model, "stream": stream, "max_tokens": 16, "temperature": 0,
                               "messages": [{"role": "user", "content": f"Say something short. {next(PROMPTS)}"}]})
            message = (f"POST {target.chat_path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            started = time.perf_counter()
            s.sendall(message)
            _read_answer(s)
            times.append(time.perf_counter() - started)
    return sorted(times)


def _read_answer(s: socket.socket) -> None:
    buf = b""
    while True:
        piece = s.recv(65536)
        if not piece:
            raise ConnectionError("the server closed the connection mid-answer")
        buf += piece
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            continue
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchSetupError(f"request failed: {head.splitlines()[0].decode(errors='replace')}")
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                if len(rest) >= int(line.split(b":")[1]):
                    return
                break
        else:
            if rest.endswith(b"0\r\n\r\n"):
                return


def segments(records: list[dict[str, int]]) -> tuple[list[tuple[str, float]], float]:
    """Median microseconds between consecutive marks (pairs seen in most records, in path order), and
    the median time inside the gateway less the backend's answer time."""
    gaps: dict[str, list[float]] = defaultdict(list)
    offsets: dict[str, list[int]] = defaultdict(list)  # where a step starts, from the request's arrival
    for record in records:
        marks = sorted(record.items(), key=lambda kv: kv[1])
        for i in range(1, len(marks)):
            key = f"{marks[i - 1][0]} -> {marks[i][0]}"
            gaps[key].append((marks[i][1] - marks[i - 1][1]) / 1000)
            offsets[key].append(marks[i - 1][1] - record["request"])
    rows = [(k, statistics.median(v)) for k, v in sorted(gaps.items(), key=lambda kv: statistics.median(offsets[kv[0]]))
            if len(v) > len(records) / 2]
    inside = [(r["client_write"] - r["request"] - (r["backend_reply>"] - r["backend_write<"])) / 1000
              for r in records if "backend_reply>" in r and "backend_write<" in r]
    return rows, statistics.median(inside) if inside else float("nan")


def top_functions(rounds: list[dict[str, int]], requests: int, n: int) -> list[tuple[str, float]]:
    """The `n` functions with the most calls per request (median over rounds), most first. Keys of the
    probe's counts are "py FILE:LINE NAME" or "c NAME"; the "python" and "c" totals are left out."""
    names = {k for data in rounds for k in data if k not in ("python", "c")}
    per_request = {k: statistics.median(data.get(k, 0) / requests for data in rounds) for k in names}
    return sorted(per_request.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    """Until the probe wrote `path` (it writes under another name and renames: the file is whole)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchSetupError(f"the probe wrote no {path.name} (is {PROBE_DIR} on the gateway's PYTHONPATH?)")
        time.sleep(0.02)


def probe_once(source: Path, *, mode: str, backend_ms: float, requests: int, stream: bool,
               by_function: bool = False) -> dict:
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-path-") as tmp:
        out = Path(tmp) / "probe.json"
        opts = MockOptions(first_token_ms=backend_ms, plain_delay_ms=backend_ms)
        mock = start_mock(stack, opts)
        env = {"PYTHONPATH": str(PROBE_DIR), "BENCH_PATH_PROBE": mode, "BENCH_PATH_PROBE_OUT": str(out),
               "BENCH_PATH_PROBE_SRC": str(source)}
        if by_function:
            env["BENCH_PATH_PROBE_BY_FUNCTION"] = "1"
        gateway = start_gateway(stack, mock, backend_kind="ollama", extra_env=env,
                                source_dir=None if source == ROOT else source)
        direct = direct_target(mock, path="/api/chat")
        for target in (direct, gateway):
            smoke_check(target, opts.model)
        pid = gateway.pids()["gateway"]
        one_client(gateway, stream=stream, n=WARMUP)
        direct_times = one_client(direct, stream=stream, n=requests)
        if mode == "calls":
            os.kill(pid, signal.SIGUSR1)
            _wait_for(out.with_name(out.name + ".on"))  # counting has started
        gateway_times = one_client(gateway, stream=stream, n=requests)
        os.kill(pid, signal.SIGUSR2)
        _wait_for(out)
        data = json.loads(out.read_text())
    return {"data": data, "direct_p50_ms": direct_times[len(direct_times) // 2] * 1000,
            "gateway_p50_ms": gateway_times[len(gateway_times) // 2] * 1000}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.critical_path", description=__doc__.split("\n")[0])
    p.add_argument("--backend-ms", type=float, default=20.0)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--scenario", choices=("plain", "stream"), default="plain")
    p.add_argument("--gateway-dir", type=Path, action="append", default=None,
                   help="a checkout whose gateway package to probe; repeat to compare (default: this one)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--mode", choices=("segments", "calls"), default="segments")
    p.add_argument("--top", type=int, default=0, metavar="N",
                   help="with --mode calls: also the N functions called most per request, per checkout")
    args = p.parse_args(argv)
    if args.requests < 10 or args.rounds < 1 or args.backend_ms < 0 or args.top < 0:
        p.error("--requests must be >= 10, --rounds >= 1, --backend-ms >= 0 and --top >= 0")
    if args.top and args.mode != "calls":
        p.error("--top counts calls per function: it needs --mode calls")
    exit_cleanly_on_sigterm()
    dirs = [d.resolve() for d in (args.gateway_dir or [ROOT])]
    for d in dirs:
        if not (d / "gateway" / "__main__.py").exists():
            p.error(f"{d} has no gateway package (gateway/__main__.py)")
    results: dict[Path, list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        for d in dirs:  # alternated, so a noisy minute hits every checkout alike
            try:
                results[d].append(probe_once(d, mode=args.mode, backend_ms=args.backend_ms,
                                             requests=args.requests, stream=args.scenario == "stream",
                                             by_function=args.top > 0))
            except BenchSetupError as exc:
                raise SystemExit(f"critical-path probe failed for {d}: {exc}") from None
    names = [str(d) for d in dirs]
    print(f"# {args.scenario}, 1 client, backend {args.backend_ms:g} ms, {args.requests} requests x "
          f"{args.rounds} round(s)\n")
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, key in (("direct p50 ms", "direct_p50_ms"), ("gateway p50 ms", "gateway_p50_ms")):
        print(f"| {label} | " + " | ".join(" / ".join(f"{r[key]:.3f}" for r in results[d]) for d in dirs) + " |")
    if args.mode == "calls":
        for kind in ("python", "c"):
            print(f"| {kind} calls / request | " + " | ".join(
                f"{statistics.median(r['data'].get(kind, 0) / args.requests for r in results[d]):.0f}"
                for d in dirs) + " |")
        for d in dirs if args.top else ():
            print(f"\n## {d}: the {args.top} functions called most per request\n\n| calls | function |\n|---|---|")
            per_function = top_functions([r["data"] for r in results[d]], args.requests, args.top)
            for name, calls in per_function:
                print(f"| {calls:.1f} | `{name}` |")
        return
    table = {d: segments([rec for r in results[d] for rec in r["data"]]) for d in dirs}
    keys = list(dict.fromkeys(k for d in dirs for k, _ in table[d][0]))
    if args.scenario == "plain":  # a stream's head arrives before its first token: the wait is in a later step
        print("| in the gateway, less the backend's time (us) | " + " | ".join(f"{table[d][1]:.0f}" for d in dirs)
              + " |")
    for key in keys:
        cells = [dict(table[d][0]).get(key) for d in dirs]
        print(f"| {key} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
