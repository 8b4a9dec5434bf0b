"""Soak: 100 000+ mixed requests through the gateway while its RSS is sampled.

Mix: plain (unique prompts: cache miss + store), streamed, cache hits, requests the mock
answers 500 (errors the backend caused; the gateway must answer 5xx) and requests for a model
nobody serves (client errors; 4xx). The gateway's RSS is read every `--sample-every`
requests; growth is measured from the end of the warm-up (the first `--warmup-share` of the
run) to the end. Targets: growth under 10 %, and no failed request except the injected ones.

    python -m bench.soak [--requests 100000] [--clients 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from bench import machine
from bench.loadgen import RequestKind
from bench.point import chat_body
from bench.procs import rss_bytes
from bench.stack import (
    BenchSetupError,
    MockOptions,
    Target,
    exit_cleanly_on_sigterm,
    smoke_check,
    start_gateway,
    start_mock,
)
from bench.stats import percentile

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
MIB = 2**20
# Kinds whose failure is the point, and the status class each must get; every other kind must get 2xx.
EXPECTED_CLASS = {"backend_error": "5", "client_error": "4"}


def mix(target: Target, model: str) -> list[RequestKind]:
    def kind(name: str, *, stream: bool, prompt: str, weight: int) -> RequestKind:
        return RequestKind(
            name=name,
            path=target.chat_path,
            stream=stream,
            headers=target.headers,
            weight=weight,
            body=chat_body(model, stream=stream, prompt=prompt),
        )

    return [
        kind("plain", stream=False, prompt="soak {n}", weight=5),
        kind("stream", stream=True, prompt="soak stream {n}", weight=2),
        kind("cache_hit", stream=False, prompt="soak cached", weight=2),
        kind("backend_error", stream=False, prompt="BENCH_FAIL {n}", weight=1),
        RequestKind(
            name="client_error",
            path=target.chat_path,
            headers=target.headers,
            weight=1,
            body=chat_body("no-such-model", stream=False, prompt="soak {n}"),
        ),
    ]


def _progress(done: int, total: int, sample: tuple[int, float, int]) -> None:
    """A live line on a terminal; one line per tenth of the run in a log file."""
    text = (
        f"{done:>8d}/{total} requests  {done / max(sample[1], 1e-9):6.0f} req/s  gateway RSS {sample[2] / MIB:6.1f} MiB"
    )
    if sys.stderr.isatty():
        print("\r" + text, end="", file=sys.stderr, flush=True)
    elif done % max(total // 10, 1) < 1000 or done == total:
        print(text, file=sys.stderr, flush=True)


def run_sampled(spec: dict, workdir: Path, pid: int) -> tuple[dict, list[tuple[int, float, int]]]:
    """Run the load generator, sampling `pid`'s RSS on each progress line it prints."""
    spec_path, out_path = workdir / "soak.spec.json", workdir / "soak.result.json"
    spec_path.write_text(json.dumps(spec))
    samples = [(0, 0.0, rss_bytes(pid))]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)], stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("progress "):
            done = int(line.split()[1])
            samples.append((done, time.monotonic() - t0, rss_bytes(pid)))
            _progress(done, spec["requests"], samples[-1])
    print(file=sys.stderr)
    if proc.wait() != 0:
        raise SystemExit("load generator failed during the soak")
    return json.loads(out_path.read_text()), samples


def summarize(result: dict, samples: list[tuple[int, float, int]], warmup_share: float) -> dict:
    by_kind: dict[str, dict] = {}
    for kind, status, lat in zip(result["kind"], result["status"], result["latency"], strict=False):
        entry = by_kind.setdefault(kind, {"statuses": {}, "lat": []})
        entry["statuses"][str(status)] = entry["statuses"].get(str(status), 0) + 1
        if status:  # answered (errors included: how fast a failure comes back matters too)
            entry["lat"].append(lat * 1000)
    unexpected = sum(
        n
        for kind, e in by_kind.items()
        for s, n in e["statuses"].items()
        if not s.startswith(EXPECTED_CLASS.get(kind, "2"))
    )
    warm_index = next(i for i, s in enumerate(samples) if s[0] >= warmup_share * samples[-1][0])
    warm_rss, end_rss = samples[warm_index][2], samples[-1][2]
    peak_after = max(s[2] for s in samples[warm_index:])
    return {
        "requests": len(result["status"]),
        "wall_s": result["wall_s"],
        "rps": len(result["status"]) / result["wall_s"],
        "kinds": {
            k: {"statuses": e["statuses"], "p50_ms": percentile(e["lat"], 50), "p99_ms": percentile(e["lat"], 99)}
            for k, e in by_kind.items()
        },
        "unexpected_failures": unexpected,
        "transport_errors": result["errors"],
        "rss_after_warmup_mib": warm_rss / MIB,
        "rss_end_mib": end_rss / MIB,
        "rss_peak_after_warmup_mib": peak_after / MIB,
        "rss_growth_pct": 100 * (end_rss - warm_rss) / warm_rss,
        "rss_peak_growth_pct": 100 * (peak_after - warm_rss) / warm_rss,
    }


def write_report(out: Path, summary: dict, samples: list, info: dict, args: argparse.Namespace) -> None:
    growth_ok = summary["rss_growth_pct"] < 10 and summary["rss_peak_growth_pct"] < 10
    errors_ok = summary["unexpected_failures"] == 0 and not summary["transport_errors"]
    lines = [f"# Gateway soak {out.stem}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [
        f"| requests | {summary['requests']} at {args.clients} clients, {summary['rps']:.0f} req/s |",
        "",
        "| kind | statuses | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {e['statuses']} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} |" for k, e in summary["kinds"].items()]
    lines += [
        "",
        f"Gateway RSS: {summary['rss_after_warmup_mib']:.1f} MiB after warm-up "
        f"({args.warmup_share:.0%} of the run), {summary['rss_end_mib']:.1f} MiB at the end, peak "
        f"{summary['rss_peak_after_warmup_mib']:.1f} MiB: growth {summary['rss_growth_pct']:+.1f} % "
        f"(peak {summary['rss_peak_growth_pct']:+.1f} %) -> {'PASS' if growth_ok else 'MISS'} (< 10 %)",
        "",
        f"Unexpected statuses (a normal request not 2xx, an injected backend error not 5xx, a "
        f"bad request not 4xx): {summary['unexpected_failures']}, transport errors: "
        f"{summary['transport_errors'] or 'none'} -> {'PASS' if errors_ok else 'MISS'}",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "samples": samples, "machine": info}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s[0] for s in samples], [s[2] / MIB for s in samples], marker=".")
    ax.set_xlabel("requests"), ax.set_ylabel("gateway RSS (MiB)"), ax.set_title("gateway RSS during the soak")
    ax.set_ylim(bottom=0), ax.grid(True, alpha=0.3)
    fig.tight_layout(), fig.savefig(out.with_suffix(".png"), dpi=110), plt.close(fig)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument(
        "--gateway-dir", type=Path, default=None, help="run the gateway package of another checkout (default: this one)"
    )
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--sample-every", type=int, default=1000, help="requests between RSS samples")
    p.add_argument("--warmup-share", type=float, default=0.1, help="share of the run counted as warm-up")
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.requests < 10 * args.sample_every or args.clients < 1 or not 0 <= args.warmup_share < 1:
        p.error("--requests must be >= 10 x --sample-every, --clients >= 1, 0 <= --warmup-share < 1")
    opts = MockOptions(token_delay_ms=0.0, plain_delay_ms=0.0)
    info = machine.describe(args.gateway_dir)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        try:
            mock = start_mock(stack, opts)
            gateway = start_gateway(stack, mock, source_dir=args.gateway_dir)
            smoke_check(gateway, opts.model)
        except BenchSetupError as exc:
            raise SystemExit(f"soak setup failed: {exc}") from None
        spec = {
            "host": "127.0.0.1",
            "port": gateway.port,
            "concurrency": args.clients,
            "requests": args.requests,
            "progress_every": args.sample_every,
            "kinds": [asdict(k) for k in mix(gateway, opts.model)],
        }
        result, samples = run_sampled(spec, Path(tmp), gateway.pids()["gateway"])
    info["load_average_at_end"] = machine.load_average()
    RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
    out = RESULTS_ROOT / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    write_report(out, summarize(result, samples, args.warmup_share), samples, info, args)
    print(f"written: {out}.md, {out}.png, {out}.json")


if __name__ == "__main__":
    main()
