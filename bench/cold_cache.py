"""How much slower the same Python work runs after the process waited, on this host.

    python -m bench.cold_cache [--gaps-ms 0,0.5,1,2,5,10,20] [--repeats 200] [--objects 3000]

Why it exists: at 1 client behind a 20 ms backend the gateway spends 2-3x the CPU on a request that
it spends when requests come back to back (`python -m bench.idle_cost`). This shows the cause apart
from any gateway code. The work is fixed: one attribute read from each of `--objects` small objects
in shuffled order (a cache line each, as scattered as a request's objects), plus parsing a small
JSON document. It is timed back to back and after sleeping each gap, pinned to one CPU, twice:
- with the CPU left idle during the sleep;
- with a busy-looping neighbour process at the lowest priority pinned to the same CPU, so that the
  CPU never idles (the measurement preempts it on waking).

If the work is as slow after a gap with the CPU kept busy as with it idle, what evicts the caches is
not the CPU's idle state (nothing the process could prevent by polling) but the host sharing the
core and its caches with other work while this process waits.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import machine, report

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
_SPIN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.nice(19)\nwhile True: pass"


class _Thing:
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def make_work(objects: int, seed: int = 7):  # noqa: ANN201 - a closure over its data
    """The fixed work: its objects are allocated once, then read in a shuffled order."""
    things = [_Thing(i) for i in range(objects)]
    random.Random(seed).shuffle(things)
    document = json.dumps({f"field{i}": [i, "text" * 4, {"n": i}] for i in range(40)})

    def work() -> int:
        total = 0
        for thing in things:
            total += thing.value
        return total + len(json.loads(document))

    return work


def time_after_gaps(work, gaps_s: list[float], repeats: int) -> list[float]:  # noqa: ANN001
    """Median microseconds of `work()` run `repeats` times after sleeping each gap."""
    medians = []
    for gap in gaps_s:
        took = []
        for _ in range(repeats):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter_ns()
            work()
            took.append(time.perf_counter_ns() - t0)
        medians.append(statistics.median(took) / 1000)
    return medians


def measure(gaps_s: list[float], repeats: int, objects: int, cpu: int) -> dict[str, list[float]]:
    """Both conditions, pinned to `cpu`; the process's affinity is restored afterwards."""
    work = make_work(objects)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        work()
        idle = time_after_gaps(work, gaps_s, repeats)
        spinner = subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu)])
        try:
            time.sleep(0.2)  # pinned and spinning
            busy = time_after_gaps(work, gaps_s, repeats)
        finally:
            spinner.kill()
            spinner.wait()
    finally:
        os.sched_setaffinity(0, before)
    return {"idle": idle, "busy": busy}


def table(gaps_ms: list[float], result: dict[str, list[float]]) -> list[str]:
    lines = ["| gap ms | CPU idle in the gap: us | x back to back | CPU busy in the gap: us | x back to back |",
             "|---|---|---|---|---|"]
    idle0, busy0 = result["idle"][0], result["busy"][0]
    for gap, idle, busy in zip(gaps_ms, result["idle"], result["busy"], strict=True):
        lines.append(f"| {gap:g} | {idle:.1f} | {idle / idle0:.2f} | {busy:.1f} | {busy / busy0:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cold_cache", description=__doc__.split("\n")[0])
    p.add_argument("--gaps-ms", default="0,0.5,1,2,5,10,20", help="comma-separated sleeps; the first must be 0")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per gap")
    p.add_argument("--objects", type=int, default=3000, help="objects the work reads")
    p.add_argument("--cpu", type=int, default=0, help="the CPU both processes are pinned to")
    args = p.parse_args(argv)
    try:
        gaps_ms = [float(g) for g in args.gaps_ms.split(",")]
    except ValueError:
        p.error(f"--gaps-ms must be comma-separated numbers, got {args.gaps_ms!r}")
    if gaps_ms[0] != 0 or min(gaps_ms) < 0:
        p.error("--gaps-ms must start with 0 (back to back, the reference) and be >= 0")
    if args.repeats < 1 or args.objects < 1:
        p.error("--repeats and --objects must be >= 1")
    if args.cpu not in os.sched_getaffinity(0):
        p.error(f"--cpu {args.cpu} is not one this process may run on")
    result = measure([g / 1000 for g in gaps_ms], args.repeats, args.objects, args.cpu)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    info = {**machine.describe(None), "objects read": args.objects, "timed runs per gap": args.repeats,
            "pinned to CPU": args.cpu}
    lines = [f"# The same work after a wait {stamp}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "Median time of the fixed work (bench/cold_cache.py) after sleeping the gap.", ""]
    lines += table(gaps_ms, result)
    text = "\n".join(lines) + "\n"
    report.publish(text, RESULTS_ROOT / f"cold-cache-{stamp}.md")


if __name__ == "__main__":
    main()
