"""Turn a run's summaries into a Markdown report (tables, target checks) and a PNG plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import PointSummary

MIB = 2**20
GATEWAY, LITELLM, DIRECT = "gateway", "litellm", "direct"
COLORS = {DIRECT: "tab:gray", GATEWAY: "tab:green", LITELLM: "tab:red"}


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def index(points: list[PointSummary]) -> dict[tuple[str, str, int], PointSummary]:
    return {(p.scenario, p.target, p.concurrency): p for p in points}


def added(points: dict, scenario: str, target: str, c: int, attr: str) -> float:
    """The target's percentile minus the direct call's, same scenario and concurrency."""
    mine, floor = points.get((scenario, target, c)), points.get((scenario, DIRECT, c))
    if not mine or not floor:
        return float("nan")
    return getattr(mine, attr) - getattr(floor, attr)


def _cpu_cell(p: PointSummary) -> str:
    return " + ".join(f"{name} {secs:.2f}" for name, secs in p.cpu_s_per_1k.items()) or "n/a"


def scenario_table(points: list[PointSummary], scenario: str) -> list[str]:
    idx = index(points)
    stream = any(p.scenario == scenario and p.chunks_max for p in points)
    head = ["target", "clients", "p50 ms", "p90 ms", "p99 ms", "added p50", "added p99"]
    if stream:
        head += ["TTFT p50", "TTFT p99", "added TTFT p50", "added TTFT p99", "chunks min/max", "gap p50 ms"]
    head += ["req/s", "CPU s / 1000 req", "backend calls / req", "non-2xx"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted((p for p in points if p.scenario == scenario), key=lambda p: (p.concurrency, p.target)):
        cells = [p.target, str(p.concurrency), _f(p.p50_ms), _f(p.p90_ms), _f(p.p99_ms)]
        cells += [
            "-" if p.target == DIRECT else _f(added(idx, scenario, p.target, p.concurrency, a))
            for a in ("p50_ms", "p99_ms")
        ]
        if stream:
            cells += [_f(p.ttft_p50_ms), _f(p.ttft_p99_ms)]
            cells += [
                "-" if p.target == DIRECT else _f(added(idx, scenario, p.target, p.concurrency, a))
                for a in ("ttft_p50_ms", "ttft_p99_ms")
            ]
            cells += [f"{p.chunks_min}/{p.chunks_max}", _f(p.gap_p50_ms)]
        cells += [_f(p.rps, 0), _cpu_cell(p), _f(p.backend_calls_per_request, 3), str(p.requests - p.ok)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _ratio(num: float, den: float) -> float:
    """num / den with a 10 microsecond floor on den: a zero overhead must not divide by zero."""
    if math.isnan(num) or math.isnan(den):
        return float("nan")
    return num / max(den, 0.01)


def target_checks(points: list[PointSummary], rss: dict[str, dict[str, int]]) -> list[tuple[str, str, bool | None]]:
    """(what, measured, passed) for each target the comparison checks; None where it could not be measured."""
    idx = index(points)
    out: list[tuple[str, str, bool | None]] = []
    levels = sorted({p.concurrency for p in points})
    if not {GATEWAY, LITELLM} <= {p.target for p in points}:
        levels = []  # the ratios need both in the same run
    for scenario, attr_pair, label in (
        ("plain", ("p50_ms", "p99_ms"), "plain"),
        ("stream", ("ttft_p50_ms", "ttft_p99_ms"), "TTFT"),
    ):
        for c in levels:
            for attr in attr_pair:
                lite, gw = added(idx, scenario, LITELLM, c, attr), added(idx, scenario, GATEWAY, c, attr)
                r = _ratio(lite, gw)
                q = attr.replace("_ms", "").replace("ttft_", "")
                out.append(
                    (
                        f"added {label} {q} at {c} client{'s' if c > 1 else ''}: LiteLLM / gateway >= 10",
                        f"{_f(lite)} / {_f(gw)} ms = {_f(r, 1)}x",
                        None if math.isnan(r) else r >= 10,
                    )
                )
    for scenario in ("plain", "stream"):
        lite = [p.cpu_s_per_1k.get(LITELLM, math.nan) for p in points if p.scenario == scenario and p.target == LITELLM]
        gw = [p.cpu_s_per_1k.get(GATEWAY, math.nan) for p in points if p.scenario == scenario and p.target == GATEWAY]
        if lite and gw and sum(gw) > 0:
            lm, gm = sum(lite) / len(lite), sum(gw) / len(gw)
            out.append(
                (
                    f"CPU per {scenario} request: LiteLLM / gateway >= 10",
                    f"{lm:.2f} / {gm:.2f} ms = {lm / gm:.1f}x",
                    lm / gm >= 10,
                )
            )
    plain_gw = [p for p in points if p.scenario == "plain" and p.target == GATEWAY]
    if plain_gw:
        best = max(plain_gw, key=lambda p: p.rps)
        cpu_ms = best.cpu_s_per_1k.get(GATEWAY, math.nan)
        capacity = 1000 / cpu_ms if cpu_ms else math.nan
        out.append(
            (
                "gateway plain requests/s per process >= 1000 (CPU-bound capacity = 1000 / CPU ms)",
                f"measured {best.rps:.0f} req/s at {best.concurrency} clients; "
                f"{cpu_ms:.2f} ms CPU/req -> {capacity:.0f} req/s per core",
                capacity >= 1000,
            )
        )
    if GATEWAY in rss and LITELLM in rss:
        g, lite_rss = rss[GATEWAY].get(GATEWAY, 0), rss[LITELLM].get(LITELLM, 0)
        out.append(
            (
                "peak RSS: LiteLLM / gateway >= 3",
                f"{lite_rss / MIB:.0f} / {g / MIB:.0f} MiB = {lite_rss / max(g, 1):.1f}x",
                lite_rss / max(g, 1) >= 3,
            )
        )
    one = added(idx, "plain", GATEWAY, 1, "p50_ms")
    out.append(("gateway added p50 at 1 client <= 1 ms", f"{_f(one, 3)} ms", None if math.isnan(one) else one <= 1))
    return out


def _cpu_ms(p: PointSummary | None) -> float:
    """CPU ms per request of the point's own process (the mock for the direct rows)."""
    if p is None:
        return math.nan
    return p.cpu_s_per_1k.get("mock" if p.target == DIRECT else p.target, math.nan)


def headline(points: list[PointSummary], litellm_label: str = "LiteLLM") -> list[str]:
    """The summary table README.md and bench/README.md quote: added latency and CPU per request at
    the run's lowest and highest concurrency, gateway against LiteLLM, with the floor's own numbers,
    and the plain requests/s of the gateway's process(es)."""
    idx = index(points)
    levels = sorted({p.concurrency for p in points})
    if not levels:
        return []
    lo, hi = levels[0], levels[-1]
    at = f"{lo} / {hi} clients"

    def cell(
        target: str, scenario: str, attr: str, fn: Callable[[PointSummary], float] | None = None, digits: int = 2
    ) -> str:
        get = fn or (lambda p: getattr(p, attr))
        vals = [get(idx[(scenario, target, c)]) if (scenario, target, c) in idx else math.nan for c in (lo, hi)]
        return " / ".join(_f(v, digits) for v in vals)

    def added_cell(target: str, scenario: str, attr: str) -> str:
        return " / ".join(_f(added(idx, scenario, target, c, attr)) for c in (lo, hi))

    def ratio_cell(scenario: str, attr: str, cpu: bool = False) -> str:
        out = []
        for c in (lo, hi):
            if cpu:
                lite, gw = _cpu_ms(idx.get((scenario, LITELLM, c))), _cpu_ms(idx.get((scenario, GATEWAY, c)))
            else:
                lite, gw = added(idx, scenario, LITELLM, c, attr), added(idx, scenario, GATEWAY, c, attr)
            out.append(f"{_f(_ratio(lite, gw), 1)}x")
        return " / ".join(out)

    rows = [
        f"| {at} | direct (floor, its own figure) | gateway | {litellm_label} | {litellm_label} / gateway |",
        "|---|---|---|---|---|",
    ]
    for scenario, attr, label in (
        ("plain", "p50_ms", "added latency p50, plain (ms)"),
        ("plain", "p99_ms", "added latency p99, plain (ms)"),
        ("stream", "ttft_p50_ms", "added time to first token p50, stream (ms)"),
        ("stream", "ttft_p99_ms", "added time to first token p99, stream (ms)"),
    ):
        if any(p.scenario == scenario for p in points):
            rows.append(
                f"| {label} | {cell(DIRECT, scenario, attr)} | {added_cell(GATEWAY, scenario, attr)} | "
                f"{added_cell(LITELLM, scenario, attr)} | {ratio_cell(scenario, attr)} |"
            )
    for scenario in ("plain", "stream"):
        if any(p.scenario == scenario for p in points):
            rows.append(
                f"| CPU per {scenario} request, main process (ms) | {cell(DIRECT, scenario, '', _cpu_ms)} | "
                f"{cell(GATEWAY, scenario, '', _cpu_ms)} | {cell(LITELLM, scenario, '', _cpu_ms)} | "
                f"{ratio_cell(scenario, '', cpu=True)} |"
            )
    if any(p.scenario == "plain" for p in points):
        rows.append(
            f"| plain requests/s (measured, closed loop) | {cell(DIRECT, 'plain', 'rps', digits=0)} | "
            f"{cell(GATEWAY, 'plain', 'rps', digits=0)} | {cell(LITELLM, 'plain', 'rps', digits=0)} | |"
        )
        gw = [p for p in points if p.scenario == "plain" and p.target == GATEWAY]
        if gw:
            busiest = max(gw, key=lambda p: p.rps)
            rows.append(
                f"| plain requests/s the gateway serves per core (1000 / CPU ms at {busiest.concurrency} "
                f"clients) | | {_f(1000 / _cpu_ms(busiest) if _cpu_ms(busiest) else math.nan, 0)} | | |"
            )
    return rows


def markdown(
    *,
    title: str,
    machine: dict[str, Any],
    settings: dict[str, Any],
    points: list[PointSummary],
    rss: dict[str, dict[str, int]],
    scenarios: dict[str, str],
    checks: list[tuple[str, str, bool | None]],
    notes: list[str],
) -> str:
    lines = [f"# {title}", "", "## Conditions", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**machine, **settings}.items()]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    summary = headline(points)
    if summary and {GATEWAY, LITELLM} <= {p.target for p in points}:
        lines += ["## Summary", ""] + summary + [""]
    lines += [
        "Latencies in ms as the load generator saw them; *added* = the target's percentile minus "
        "the direct call's at the same point. CPU = user+system seconds of each process per "
        "1000 measured requests (warm-up excluded).",
        "",
    ]
    for name, description in scenarios.items():
        if any(p.scenario == name for p in points):
            lines += [f"## {name}: {description}", ""] + scenario_table(points, name) + [""]
    lines += ["## Peak memory (RSS high-water mark)", "", "| target | process | MiB |", "|---|---|---|"]
    lines += [f"| {t} | {proc} | {b / MIB:.0f} |" for t, procs in rss.items() for proc, b in procs.items()]
    floor = [p for p in points if p.target == DIRECT]
    if floor:
        lines += [
            "",
            "## Load generator floor",
            "",
            "The direct rows are the floor: load generator + mock only. Load generator CPU per 1000 "
            "requests: "
            + ", ".join(f"{p.scenario}@{p.concurrency} {p.loadgen_cpu_s_per_1k:.2f} s" for p in floor)
            + ".",
        ]
    if checks:
        lines += ["", "## Targets (ratios from this run)", "", "| target | measured | result |", "|---|---|---|"]
        lines += [
            f"| {what} | {got} | {'n/a' if ok is None else ('PASS' if ok else 'MISS')} |" for what, got, ok in checks
        ]
    return "\n".join(lines) + "\n"


def publish(text: str, path: Path) -> None:
    """Write a markdown result (creating its folder), then print it and where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written: {path}")


def plot(points: list[PointSummary], path: Path, title: str) -> None:
    """Four panels: added plain p50/p99, added TTFT p50, req/s and CPU per request, by target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = index(points)
    levels = sorted({p.concurrency for p in points})
    targets = [t for t in (GATEWAY, LITELLM) if any(p.target == t for p in points)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        (axes[0][0], "plain", "p50_ms", "added latency p50, plain (ms)"),
        (axes[0][1], "stream", "ttft_p50_ms", "added time to first token p50 (ms)"),
    ]
    for ax, scenario, attr, label in panels:
        if not any(p.scenario == scenario and p.target in targets for p in points):
            ax.set_axis_off()
            continue
        for t in targets:
            ys = [max(added(idx, scenario, t, c, attr), 0.01) for c in levels]
            ax.plot(levels, ys, marker="o", label=f"{t} p50", color=COLORS[t])
            ys99 = [max(added(idx, scenario, t, c, attr.replace("50", "99")), 0.01) for c in levels]
            ax.plot(levels, ys99, marker="x", linestyle="--", label=f"{t} p99", color=COLORS[t])
        ax.set_yscale("log"), ax.set_xscale("log"), ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_title(label), ax.set_xlabel("concurrent clients"), ax.legend(), ax.grid(True, alpha=0.3)
    ax = axes[1][0]
    if not any(p.scenario == "plain" for p in points):
        ax.set_axis_off()
    for t in [DIRECT, *targets]:
        ax.plot(
            levels,
            [idx[("plain", t, c)].rps if ("plain", t, c) in idx else math.nan for c in levels],
            marker="o",
            label=t,
            color=COLORS[t],
        )
    if any(p.scenario == "plain" for p in points):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_title("plain requests per second"), ax.set_xlabel("concurrent clients"), ax.legend()
    ax.grid(True, alpha=0.3)
    ax = axes[1][1]
    scenarios = sorted({p.scenario for p in points})
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        ms = []
        for s in scenarios:
            vals = [p.cpu_s_per_1k.get(t, math.nan) for p in points if p.scenario == s and p.target == t]
            ms.append(sum(vals) / len(vals) if vals else math.nan)
        ax.bar([j + i * width for j in range(len(scenarios))], ms, width, label=t, color=COLORS[t])
    ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(scenarios))], scenarios)
    ax.set_yscale("log"), ax.set_title("CPU ms per request (main process)"), ax.legend()
    ax.grid(True, alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
