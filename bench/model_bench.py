"""Real-model benchmark: nginx -> gateway -> 2 llama.cpp replicas serving SmolLM2 on CPU, against
the same replicas called directly, least_in_flight against prefix_affinity, openai SDK as the client.

    python -m bench.model_bench                # the default run (`make bench-model`)
    python -m bench.model_bench --rounds 1 --conversations 8 --single 8   # a quick look

Workloads: single-turn unrelated prompts; chats that each carry their own long ticket history; the same
chats behind one long system prompt shared by all. Each round runs every (target, policy) block once,
rounds alternate the order, so drift of a shared host weighs on every configuration alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import httpx2  # the pinned openai SDK's HTTP client
import openai

from bench.machine import REPO_ROOT, describe, load_average
from bench.model_client import Target, run_chats, run_single
from bench.model_report import POLICIES, Block, configs, markdown, plot
from bench.model_stack import (
    MODEL,
    ServerOptions,
    replica_names,
    requests_per_replica,
    server_version,
    start_mock_replicas,
    start_replicas,
    start_stack,
)
from bench.model_workload import conversations, single_prompts
from bench.procs import CpuSnapshot
from bench.stack import exit_cleanly_on_sigterm
from testkit.llama import smollm2_gguf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="rounds of single-turn blocks (order alternates)")
    p.add_argument("--chat-rounds", type=int, default=1, help="rounds of chat blocks (the first rounds)")
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument(
        "--history-words",
        type=int,
        default=430,
        help="each chat's own history (160 words: about 300 tokens; 430: about 800)",
    )
    p.add_argument(
        "--shared-system-words",
        type=int,
        default=160,
        help="the shared-system-prompt workload's system prompt; 0 skips that workload",
    )
    p.add_argument("--single", type=int, default=32, help="single-turn requests per block")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--think-s",
        type=float,
        default=2.0,
        help="mean seconds a chat's user takes before the next turn (exponential, seeded; 0: at once)",
    )
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--load-factor", type=float, default=1.25)
    p.add_argument("--move-factor", type=float, default=2.0, help="GATEWAY_AFFINITY_MOVE_FACTOR")
    p.add_argument(
        "--affinity-memory",
        type=int,
        default=16384,
        help="GATEWAY_AFFINITY_MEMORY: conversations remembered (0: the ring alone decides)",
    )
    p.add_argument("--threads", type=int, default=1, help="threads per replica (2 replicas on 2 cores: 1 each)")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--cache-ram", type=int, default=8192, help="llama-server --cache-ram MiB (0: off)")
    p.add_argument("--sps", type=float, default=0.8, help="llama-server --slot-prompt-similarity")
    p.add_argument("--cache-reuse", type=int, default=0, help="llama-server --cache-reuse")
    p.add_argument("--workloads", default="single,chats,chats-shared-system")
    p.add_argument("--targets", default="direct,stack", help="targets of single-turn blocks")
    p.add_argument("--chat-targets", default="stack", help="targets of chat blocks")
    p.add_argument(
        "--replicas",
        choices=("llama", "mock"),
        default="llama",
        help="mock: testkit.mock_backend instead of llama-server (checks the plumbing, measures nothing)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--label", default="", help="suffix of the report's file names")
    p.add_argument(
        "--log-dir", type=Path, default=None, help="keep the servers' logs here (default: a temporary folder)"
    )
    return p.parse_args(argv)


def _client(base_url: str, headers: dict[str, str]) -> openai.AsyncOpenAI:
    key = headers.get("Authorization", "Bearer none").removeprefix("Bearer ")
    # A new connection per request, to either target: llama-server (cpp-httplib) may close a kept-alive
    # connection just after a streamed answer, and a request sent on it then fails ("Server disconnected
    # without sending a response", 1-3 per direct block); the gateway retries that case itself, the SDK
    # does not without a backoff sleep. A local connect costs ~0.1 ms against TTFTs of hundreds.
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)
    return openai.AsyncOpenAI(
        base_url=base_url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=600,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )


async def run_block(args: argparse.Namespace, workload: str, target: Target, seed: int) -> tuple[list, float]:
    if workload == "single":
        return await run_single(target, single_prompts(seed, args.single), args.concurrency)
    chats = conversations(
        seed,
        count=args.conversations,
        turns=args.turns,
        history_words=args.history_words,
        system_words=args.shared_system_words if workload == "chats-shared-system" else 0,
    )
    return await run_chats(target, chats, args.concurrency, think_s=args.think_s, seed=seed)


async def settled_split(gateway_port: int, before: dict[str, float], expected: int) -> dict[str, float]:
    """Requests per replica in this block, from the gateway's metrics (booked just after each answer)."""
    deadline = time.monotonic() + 10
    while True:
        now = requests_per_replica(gateway_port)
        split = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in now}
        if sum(split.values()) >= expected or time.monotonic() > deadline:
            return split
        await asyncio.sleep(0.1)


async def run_all(args: argparse.Namespace, stack: ExitStack, workdir: Path) -> list[Block]:
    opts = ServerOptions(
        threads=args.threads,
        slots=args.slots,
        ctx_per_slot=args.ctx_per_slot,
        cache_ram_mib=args.cache_ram,
        slot_similarity=args.sps,
        cache_reuse=args.cache_reuse,
    )
    replicas = start_replicas(stack, 2, opts, workdir) if args.replicas == "llama" else start_mock_replicas(stack, 2)
    gateways = {
        p: start_stack(stack, replicas, p, workdir, args.load_factor, args.affinity_memory, args.move_factor)
        for p in POLICIES
    }
    direct_clients = {name: _client(url, {}) for name, url in replica_names(replicas).items()}
    workloads = args.workloads.split(",")
    blocks: list[Block] = []
    seed = 1000
    for rnd in range(max(args.rounds, args.chat_rounds)):
        for workload in workloads:
            single = workload == "single"
            if rnd >= (args.rounds if single else args.chat_rounds):
                continue
            order = [(t, p) for t in (args.targets if single else args.chat_targets).split(",") for p in POLICIES]
            for target_kind, policy in order if rnd % 2 == 0 else order[::-1]:
                seed += 1
                # CPU is booked per group: `model` (the replicas) and, in stack blocks, `stack` (its processes)
                watched = {f"model:{i}": r.proc.pid for i, r in enumerate(replicas) if r.proc}
                if target_kind == "stack":
                    gw, nginx = gateways[policy]
                    clients = {"stack": _client(nginx.url, gw.headers)}
                    watched |= {f"stack:{name}": pid for name, pid in gw.pids().items()}
                    watched |= {"stack:nginx": nginx.proc.pid} if nginx.proc else {}
                else:
                    clients = direct_clients
                target = Target(
                    name=target_kind,
                    policy=policy,
                    model=MODEL,
                    clients=clients,
                    max_tokens=args.max_tokens,
                    load_factor=args.load_factor,
                    affinity_memory=args.affinity_memory,
                    move_factor=args.move_factor,
                )
                before = requests_per_replica(gateways[policy][0].port) if target_kind == "stack" else {}
                cpu_before = CpuSnapshot.take(watched)
                records, wall = await run_block(args, workload, target, seed)
                cpu: dict[str, float] = {}
                for name, seconds in CpuSnapshot.take(watched).since(cpu_before).items():
                    group = name.split(":")[0]
                    cpu[group] = cpu.get(group, 0.0) + seconds
                if target_kind == "stack":
                    split = await settled_split(gateways[policy][0].port, before, len(records))
                    await clients["stack"].close()
                else:
                    split = {}
                    for r in records:
                        split[r.replica or "?"] = split.get(r.replica or "?", 0) + 1
                block = Block(workload, target_kind, policy, rnd, records, wall, split, cpu)
                blocks.append(block)
                print(
                    f"round {rnd} {workload:20s} {target_kind:6s} {policy:16s} wall {wall:6.1f}s "
                    f"TTFT p50 {block.ttft_ms(50):7.0f} p95 {block.ttft_ms(95):7.0f} ms "
                    f"split {split} errors {block.errors()} load {load_average()}",
                    flush=True,
                )
    await asyncio.gather(*(c.close() for c in direct_clients.values()))
    return blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    info = {
        **describe(),
        "llama_server": server_version() if args.replicas == "llama" else "mock replicas",
        "model_file": smollm2_gguf().name,
        "openai_sdk": openai.__version__,
        "server_args": " ".join(
            ServerOptions(
                threads=args.threads,
                slots=args.slots,
                ctx_per_slot=args.ctx_per_slot,
                cache_ram_mib=args.cache_ram,
                slot_similarity=args.sps,
                cache_reuse=args.cache_reuse,
            ).args()
        ),
        "run": " ".join(sys.argv[1:]) or "(defaults)",
        "args": json.dumps(vars(args), default=str),
    }
    t0 = time.monotonic()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
        blocks = asyncio.run(run_all(args, stack, args.log_dir or Path(tmp)))
    info["duration_s"] = round(time.monotonic() - t0)
    info["load_average_at_end"] = load_average()
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{args.label}" if args.label else "")
    cfgs = configs(blocks)
    png = args.out / f"model-{stamp}.png"
    plot(cfgs, png)
    report = markdown(cfgs, title=f"Real-model benchmark {stamp}", info=info, plot_name=png.name)
    (args.out / f"model-{stamp}.md").write_text(report)
    (args.out / f"model-{stamp}.json").write_text(
        json.dumps(
            [
                {**asdict(b), "records": [{k: v for k, v in asdict(r).items() if k != "text"} for r in b.records]}
                for b in blocks
            ],
            default=str,
        )
    )
    print(report)
    print(f"written: {args.out / f'model-{stamp}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
