"""CPU and memory accounting from /proc follows a real busy child process."""

from __future__ import annotations

import subprocess
import sys

from bench.procs import CpuSnapshot, cpu_seconds, descendants, peak_rss_bytes, rss_bytes
from testkit.processes import wait_until

BUSY_CHILD = "import subprocess,sys; c=subprocess.Popen([sys.executable,'-c','while True: pass']); c.wait()"


def test_cpu_and_rss_of_a_process_tree() -> None:
    parent = subprocess.Popen([sys.executable, "-c", BUSY_CHILD])
    try:
        wait_until(lambda: len(descendants(parent.pid)) == 2, timeout=10, what="child spawned")
        before = CpuSnapshot.take({"tree": parent.pid})
        wait_until(lambda: cpu_seconds(parent.pid) - before.seconds["tree"] >= 0.2, timeout=20, what="CPU counted")
        assert CpuSnapshot.take({"tree": parent.pid}).since(before)["tree"] >= 0.2
        assert 1 << 20 < rss_bytes(parent.pid) <= peak_rss_bytes(parent.pid)
    finally:
        for pid in reversed(descendants(parent.pid)):
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait(timeout=10)
