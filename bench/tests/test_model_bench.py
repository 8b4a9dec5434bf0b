"""The real-model benchmark's parts that need no model: its chats keep one routing key per chat, its chat
scheduler interleaves turns, and its checks pass and miss where the numbers say so."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.model_client import Record, run_chats
from bench.model_report import Block, checks, configs, markdown, plot
from bench.model_workload import conversations
from gateway.protocol.requests import ChatCompletionRequest
from gateway.replicas.affinity import affinity_key


def key(messages: list[dict[str, str]]) -> bytes | None:
    return affinity_key(ChatCompletionRequest(model="m", messages=messages), 2048)


def test_every_turn_of_a_chat_has_its_chats_key_even_behind_a_shared_system_prompt() -> None:
    for system_words in (0, 300):
        chats = conversations(7, count=6, turns=3, history_words=200, system_words=system_words)
        assert len({c.messages[0]["content"] for c in chats}) == 1  # the system prompt is shared
        keys = []
        for chat in chats:
            first = key(chat.next_messages())
            while not chat.finished:
                messages = chat.next_messages()
                assert key(messages) == first
                chat.answered(messages, "an answer")
            keys.append(first)
        assert len(set(keys)) == 6


class _Recorder:
    """Stands for a target: answers at once and remembers which chat's turn came when."""

    def __init__(self) -> None:
        self.order: list[str] = []

    async def chat(self, messages: list[dict[str, str]], kind: str) -> Record:
        self.order.append(messages[1]["content"].split(".")[0])  # "Ticket #seed-i"
        await asyncio.sleep(0)
        return Record(kind, 0.01, 0.02, 10, 5, None, text="ok")


def test_chats_interleave_turn_by_turn() -> None:
    chats = conversations(3, count=4, turns=3, history_words=20)
    target = _Recorder()
    records, _ = asyncio.run(run_chats(target, chats, concurrency=2))  # type: ignore[arg-type]
    assert [r.kind for r in records].count("first") == 4 and len(records) == 12
    assert target.order[:4] == [f"Ticket #3-{i}" for i in range(4)]  # every chat's first turn before any second
    assert all(c.finished and len(c.messages) == 7 for c in chats)


def test_think_times_reorder_the_turns_and_every_chat_finishes() -> None:
    lockstep = _Recorder()
    asyncio.run(run_chats(lockstep, conversations(3, count=6, turns=3, history_words=20), concurrency=2))  # type: ignore[arg-type]
    orders = []
    for seed in range(5):
        chats = conversations(3, count=6, turns=3, history_words=20)
        target = _Recorder()
        records, _ = asyncio.run(run_chats(target, chats, concurrency=2, think_s=0.01, seed=seed))  # type: ignore[arg-type]
        assert len(records) == 18 and all(c.finished and len(c.messages) == 7 for c in chats)
        orders.append(target.order)
    assert any(order != lockstep.order for order in orders)  # users come back in their own time
    assert len({tuple(o) for o in orders}) > 1  # and the seed decides how


def _block(workload: str, target: str, policy: str, ttft_s: float, wall: float, split: dict[str, float]) -> Block:
    kind = "single" if workload == "single" else "follow"
    records = [Record(kind, ttft_s, ttft_s + 1, 100, 32, None) for _ in range(20)]
    return Block(workload, target, policy, 0, records, wall, split)


def test_checks_follow_the_numbers(tmp_path: Path) -> None:
    even, skewed = {"a": 10, "b": 10}, {"a": 15, "b": 5}
    good = configs(
        [
            _block("chats", "stack", "least_in_flight", 3.0, 60, even),
            _block("chats", "stack", "prefix_affinity", 0.5, 40, even),
            _block("single", "stack", "least_in_flight", 0.2, 10, even),
            _block("single", "stack", "prefix_affinity", 0.2, 10.2, even),
            _block("single", "direct", "prefix_affinity", 0.199, 10.1, even),
        ]
    )
    assert [p for _, _, p in checks(good)] == [True, True, True, None, True, True, True]
    bad = configs(
        [
            _block("chats", "stack", "least_in_flight", 1.0, 60, even),
            _block("chats", "stack", "prefix_affinity", 0.5, 40, skewed),
            _block("single", "stack", "least_in_flight", 0.2, 10, even),
            _block("single", "stack", "prefix_affinity", 0.2, 12, even),
            _block("single", "direct", "prefix_affinity", 0.15, 8, even),
        ]
    )
    assert [p for _, _, p in checks(bad)] == [False, True, False, None, False, False, False]
    plot(good, tmp_path / "p.png")
    text = markdown(good, title="t", info={"cpu": "x"}, plot_name="p.png")
    assert "| chats | stack | affinity | 1 |" in text and (tmp_path / "p.png").stat().st_size > 1000


def test_the_whole_run_on_mock_replicas_writes_a_report(tmp_path: Path) -> None:
    from bench.model_bench import main

    args = [
        "--replicas",
        "mock",
        "--rounds",
        "1",
        "--chat-targets",
        "direct,stack",
        "--conversations",
        "4",
        "--turns",
        "2",
        "--history-words",
        "40",
        "--shared-system-words",
        "30",
        "--single",
        "16",
        "--concurrency",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    report = next(tmp_path.glob("model-*.md")).read_text()
    for row in (
        "| single | direct | LIF | 1 |",
        "| single | stack | affinity | 1 |",
        "| chats | stack | LIF | 1 |",
        "| chats-shared-system | stack | affinity | 1 |",
    ):
        assert row in report
    rows = [
        line for line in report.splitlines() if line.startswith(("| single |", "| chats |", "| chats-shared-system |"))
    ]
    assert len(rows) == 12 and all(row.endswith("| 0 |") for row in rows)  # no request failed
    assert all(" n/a " not in row for row in rows)  # every block measured TTFT and, through the stack, its split
    assert next(tmp_path.glob("model-*.png")).stat().st_size > 1000
    # the stack's own CPU is counted per request (nginx, gateway and Redis really worked in the stack blocks)
    cpu_rows = [line for line in report.splitlines() if "the stack's CPU" in line]
    assert len(cpu_rows) == 2 and all(float(row.split("| ")[2].split(" ms")[0]) > 0 for row in cpu_rows)
