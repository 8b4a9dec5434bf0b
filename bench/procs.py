"""CPU time and memory of a process and its descendants, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may hold spaces; fields resume after ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn or litellm may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process tree rooted at `pid`."""
    total = 0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory now, summed over the tree."""
    return sum(_status_kb(p, "VmRSS") for p in descendants(pid)) * 1024


def peak_rss_bytes(pid: int) -> int:
    """High-water resident memory (VmHWM), summed over the tree."""
    return sum(_status_kb(p, "VmHWM") for p in descendants(pid)) * 1024


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds per named process at one instant, to subtract from a later one."""

    seconds: dict[str, float]

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        return cls({name: cpu_seconds(pid) for name, pid in pids.items()})

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        return {name: self.seconds[name] - earlier.seconds.get(name, 0.0) for name in self.seconds}
