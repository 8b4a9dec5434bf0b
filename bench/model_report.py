"""The real-model benchmark's summaries, its checks, a Markdown report and a PNG plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.model_client import Record
from bench.stats import percentile

POLICIES = ("least_in_flight", "prefix_affinity")
SHORT = {"least_in_flight": "LIF", "prefix_affinity": "affinity"}


@dataclass
class Block:
    """One workload run once against one target under one policy."""

    workload: str  # single | chats | chats-shared-system
    target: str  # direct | stack
    policy: str
    round: int
    records: list[Record]
    wall_s: float
    split: dict[str, float] = field(default_factory=dict)  # requests per replica
    # CPU seconds used during the block: `stack` (nginx, the gateway, its Redis; stack blocks only) and
    # `model` (both replicas), read from /proc; on a host where the model's threads fill the cores the
    # stack's CPU is taken from the model, so its share bounds what the stack can cost in tokens/s.
    cpu_s: dict[str, float] = field(default_factory=dict)

    def measured(self) -> list[Record]:
        """The requests the workload's TTFT figures are about: later turns of chats, every single-turn one."""
        want = "single" if self.workload == "single" else "follow"
        return [r for r in self.records if r.kind == want and r.error is None]

    def ttft_ms(self, q: float) -> float:
        return percentile([r.ttft_s * 1000 for r in self.measured()], q)

    def tokens_per_s(self) -> float:
        return sum(r.completion_tokens for r in self.records) / self.wall_s

    def stack_cpu_share(self) -> float:
        """The stack's CPU as a fraction of the model's in this block (NaN where not measured)."""
        stack, model = self.cpu_s.get("stack"), self.cpu_s.get("model")
        return stack / model if stack is not None and model else float("nan")

    def max_share(self) -> float:
        total = sum(self.split.values())
        return max(self.split.values()) / total if total else float("nan")

    def errors(self) -> int:
        return sum(r.error is not None for r in self.records)

    def cached_share(self) -> float:
        """Share of the measured requests' prompt tokens the server took from its cache (`usage.
        prompt_tokens_details.cached_tokens`), NaN where it did not say. Unlike TTFT it ignores the host's load."""
        known = [r for r in self.measured() if r.cached_tokens is not None and r.prompt_tokens]
        total = sum(r.prompt_tokens for r in known)
        return sum(r.cached_tokens for r in known) / total if total else float("nan")


@dataclass
class Config:
    """Every block of one (workload, target, policy), pooled."""

    blocks: list[Block]

    def _pooled(self) -> list[float]:
        return [r.ttft_s * 1000 for b in self.blocks for r in b.measured()]

    def ttft_ms(self, q: float) -> float:
        return percentile(self._pooled(), q)

    def mean(self, what: str) -> float:
        values = [getattr(b, what)() if callable(getattr(b, what)) else getattr(b, what) for b in self.blocks]
        return sum(values) / len(values) if values else float("nan")

    def per_block(self, what: str, *args: Any) -> list[float]:
        return [getattr(b, what)(*args) for b in self.blocks]


def configs(blocks: Sequence[Block]) -> dict[tuple[str, str, str], Config]:
    out: dict[tuple[str, str, str], Config] = {}
    for b in blocks:
        out.setdefault((b.workload, b.target, b.policy), Config([])).blocks.append(b)
    return out


def _f(x: float, digits: int = 0) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _spread(values: Sequence[float], digits: int = 0) -> str:
    return " / ".join(_f(v, digits) for v in values)


def _cache_column(shares: Sequence[float]) -> str:
    """`-` when the server did not report its cache use (the mock replicas)."""
    return "-" if all(math.isnan(x) for x in shares) else _spread([x * 100 for x in shares]) + " %"


def table(cfgs: dict[tuple[str, str, str], Config]) -> list[str]:
    head = [
        "workload",
        "target",
        "policy",
        "blocks",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "TTFT p50 per block",
        "wall s per block",
        "tokens/s per block",
        "req/s",
        "max replica share",
        "prompt from cache",
        "errors",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (workload, target, policy), c in sorted(cfgs.items()):
        n = sum(len(b.records) for b in c.blocks)
        rps = n / sum(b.wall_s for b in c.blocks)
        share = c.per_block("max_share")
        rows.append(
            "| "
            + " | ".join(
                [
                    workload,
                    target,
                    SHORT[policy],
                    str(len(c.blocks)),
                    _f(c.ttft_ms(50)),
                    _f(c.ttft_ms(95)),
                    _spread(c.per_block("ttft_ms", 50)),
                    _spread([b.wall_s for b in c.blocks], 1),
                    _spread(c.per_block("tokens_per_s"), 1),
                    _f(rps, 2),
                    _spread([s * 100 for s in share]) + " %",
                    _cache_column(c.per_block("cached_share")),
                    str(sum(b.errors() for b in c.blocks)),
                ]
            )
            + " |"
        )
    return rows


def _median(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def checks(cfgs: dict[tuple[str, str, str], Config]) -> list[tuple[str, str, bool | None]]:
    """(what, measured, passed) for each figure the benchmark checks; None where it was not measured."""
    out: list[tuple[str, str, bool | None]] = []
    for workload, gate in (("chats", True), ("chats-shared-system", False)):
        lif, aff = cfgs.get((workload, "stack", POLICIES[0])), cfgs.get((workload, "stack", POLICIES[1]))
        if not lif or not aff:
            continue
        for q, need in ((95, 3.0), (50, 1.5)):
            r = _ratio(lif.ttft_ms(q), aff.ttft_ms(q))
            out.append(
                (
                    f"{workload}, follow-up TTFT p{q}: LIF / affinity >= {need:g} (through the stack)",
                    f"{_f(lif.ttft_ms(q))} / {_f(aff.ttft_ms(q))} ms = {_f(r, 2)}x",
                    (r >= need) if gate and not math.isnan(r) else None,
                )
            )
        share = max(aff.per_block("max_share"))
        out.append(
            (
                f"{workload}, affinity: no replica above 60 % of requests",
                f"largest share per block: {_spread([s * 100 for s in aff.per_block('max_share')])} %",
                (share <= 0.6) if gate and not math.isnan(share) else None,
            )
        )
        out.append(
            (
                f"{workload}: total time per block, LIF vs affinity",
                f"{_spread([b.wall_s for b in lif.blocks], 1)} s vs {_spread([b.wall_s for b in aff.blocks], 1)} s",
                None,
            )
        )
    lif, aff = cfgs.get(("single", "stack", POLICIES[0])), cfgs.get(("single", "stack", POLICIES[1]))
    if lif and aff:
        r = _ratio(aff.mean("tokens_per_s"), lif.mean("tokens_per_s"))
        out.append(
            (
                "single-turn tokens/s: affinity within 5 % of LIF (through the stack)",
                f"{_f(aff.mean('tokens_per_s'), 1)} / {_f(lif.mean('tokens_per_s'), 1)} = {_f(r, 3)}",
                None if math.isnan(r) else abs(r - 1) <= 0.05,
            )
        )
    out += overhead_checks(cfgs)
    return out


def overhead_checks(cfgs: dict[tuple[str, str, str], Config]) -> list[tuple[str, str, bool | None]]:
    """Stack vs direct, same workload and policy; blocks of one round ran back to back, so pairs are compared."""
    out: list[tuple[str, str, bool | None]] = []
    for policy in POLICIES:
        stack, direct = cfgs.get(("single", "stack", policy)), cfgs.get(("single", "direct", policy))
        if not stack or not direct:
            continue
        added = _ratio(stack.ttft_ms(50) - direct.ttft_ms(50), direct.ttft_ms(50))
        pairs = [
            _ratio(s - d, d) * 100
            for s, d in zip(stack.per_block("ttft_ms", 50), direct.per_block("ttft_ms", 50), strict=False)
        ]
        out.append(
            (
                f"single-turn, {SHORT[policy]}: stack adds < 2 % to TTFT p50",
                (
                    f"{_f(stack.ttft_ms(50))} vs {_f(direct.ttft_ms(50))} ms direct = {_f(added * 100, 1)} % "
                    f"(per round: {_spread(pairs, 1)} %; their median {_f(_median(pairs), 1)} %)"
                ),
                None if math.isnan(added) else added < 0.02,
            )
        )
        lost = _ratio(direct.mean("tokens_per_s") - stack.mean("tokens_per_s"), direct.mean("tokens_per_s"))
        pairs = [
            _ratio(d - s, d) * 100
            for s, d in zip(stack.per_block("tokens_per_s"), direct.per_block("tokens_per_s"), strict=False)
        ]
        out.append(
            (
                f"single-turn, {SHORT[policy]}: stack costs < 2 % of tokens/s",
                (
                    f"{_f(stack.mean('tokens_per_s'), 1)} vs {_f(direct.mean('tokens_per_s'), 1)} direct = "
                    f"{_f(lost * 100, 1)} % (per round: {_spread(pairs, 1)} %; their median {_f(_median(pairs), 1)} %)"
                ),
                None if math.isnan(lost) else lost < 0.02,
            )
        )
        shares = [x * 100 for x in stack.per_block("stack_cpu_share")]
        known = [x for x in shares if not math.isnan(x)]
        if any("stack" in b.cpu_s for b in stack.blocks):
            cpu_ms = (
                1000 * sum(b.cpu_s.get("stack", 0.0) for b in stack.blocks) / sum(len(b.records) for b in stack.blocks)
            )
            out.append(
                (
                    f"single-turn, {SHORT[policy]}: the stack's CPU (nginx + gateway + Redis) against the replicas'",
                    f"{_f(cpu_ms, 1)} ms per request = {_f(_median(known), 2)} % of the replicas' CPU "
                    f"(median of blocks; per block: {_spread(shares, 2)} %)",
                    None,
                )
            )
    return out


def markdown(
    cfgs: dict[tuple[str, str, str], Config], *, title: str, info: dict[str, Any], plot_name: str | None
) -> str:
    lines = [f"# {title}", "", "## Checks", "", "| check | measured | passed |", "|---|---|---|"]
    for what, measured, passed in checks(cfgs):
        lines.append(f"| {what} | {measured} | {'-' if passed is None else ('yes' if passed else 'NO')} |")
    lines += [
        "",
        "## Results",
        "",
        (
            "TTFT: first content token, client side (openai SDK, streaming). Chats: "
            "follow-up turns only; single: every request. Pooled percentiles over all "
            "blocks; per-block values in block order (rounds alternate the order of "
            "targets and policies)."
        ),
        "",
        *table(cfgs),
    ]
    if plot_name:
        lines += ["", f"![TTFT and tokens/s]({plot_name})"]
    lines += ["", "## Machine and versions", "", "```"]
    lines += [f"{k}: {v}" for k, v in info.items()]
    return "\n".join([*lines, "```", ""])


def plot(cfgs: dict[tuple[str, str, str], Config], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({w for w, _, _ in cfgs})
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(5 * (len(workloads) + 1), 4.5))
    colors = {"least_in_flight": "tab:gray", "prefix_affinity": "tab:green"}
    for ax, workload in zip(axes, workloads, strict=False):
        keys = [k for k in sorted(cfgs) if k[0] == workload]
        for i, key in enumerate(keys):
            c = cfgs[key]
            ax.bar(i - 0.2, c.ttft_ms(50), 0.4, color=colors[key[2]], alpha=0.6)
            ax.bar(i + 0.2, c.ttft_ms(95), 0.4, color=colors[key[2]])
            ax.scatter([i - 0.2] * len(c.blocks), c.per_block("ttft_ms", 50), color="black", s=8, zorder=3)
        ax.set_xticks(range(len(keys)), [f"{k[1]}\n{SHORT[k[2]]}" for k in keys])
        ax.set_title(f"{workload}: TTFT p50 (light) / p95 ms")
    ax = axes[-1]
    keys = [k for k in sorted(cfgs) if k[0] == "single"]
    for i, key in enumerate(keys):
        c = cfgs[key]
        ax.bar(i, c.mean("tokens_per_s"), 0.6, color=colors[key[2]])
        ax.scatter([i] * len(c.blocks), c.per_block("tokens_per_s"), color="black", s=8, zorder=3)
    ax.set_xticks(range(len(keys)), [f"{k[1]}\n{SHORT[k[2]]}" for k in keys])
    ax.set_title("single-turn: output tokens/s (dots: blocks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
