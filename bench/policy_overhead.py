"""Added latency of the access and traffic policy, end to end over HTTP.

Three gateways in front of one Ollama double (no token delay), measured one request at a time
from one keep-alive client, interleaved round-robin so drift hits every variant alike:

  bare    no admin key (anonymous), cache off, no REDIS_URL: the gateway without the policy
  policy  API key from Redis (cached in-process), RPM + TPM limits in Redis, cache miss
          (every prompt unique, so each answer is also written to the cache), usage in Redis
  hit     the policy gateway answering a repeated request from the Redis cache
  floor   GET /healthz on the same gateway: uvicorn + middleware + client, no policy, no backend

Run: python -m bench.policy_overhead [--requests 2000]
Targets (issue 3): policy adds <= 1 ms p50 over bare; a cache hit answers in <= 2 ms p50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import httpx
from tqdm import tqdm

from tests.support.ollama import start_ollama_double
from tests.support.policy_stack import ADMIN_KEY, MODEL, gateway_env, start_gateway
from tests.support.processes import redis_service


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def body(content: str, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
            "temperature": 0, **extra}


def timed(call: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per variant")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    redis = redis_service().start().wait_port()
    double = start_ollama_double(tokens=4)
    bare = start_gateway(gateway_env(redis_port=None, backend_url=double.url, GATEWAY_ADMIN_KEY="",
                                     GATEWAY_CACHE_ENABLED="false"))
    policy = start_gateway(gateway_env(redis_port=redis.port, backend_url=double.url))
    try:
        with httpx.Client(timeout=10) as client:
            created = client.post(f"{policy.url}/admin/keys", json={"name": "bench", "rpm": 10**7, "tpm": 10**9},
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            key = {"X-API-Key": created["key"]}
            client.post(f"{policy.url}/v1/chat/completions", json=body("cached"), headers=key)
            variants = {
                "bare": lambda i: client.post(f"{bare.url}/v1/chat/completions", json=body(f"bare {i}")),
                "policy": lambda i: client.post(f"{policy.url}/v1/chat/completions", json=body(f"miss {i}"),
                                                headers=key),
                "hit": lambda i: client.post(f"{policy.url}/v1/chat/completions", json=body("cached"), headers=key),
                "floor": lambda i: client.get(f"{policy.url}/healthz"),
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            total = args.warmup + args.requests
            for i in tqdm(range(total), desc="rounds (one request per variant)", unit="round"):
                for name, call in variants.items():
                    elapsed = timed(lambda: call(i))
                    if i >= args.warmup:
                        samples[name].append(elapsed)
            hit_header = client.post(f"{policy.url}/v1/chat/completions", json=body("cached"),
                                     headers=key).headers["X-Cache"]
    finally:
        for service in (bare, policy, double, redis):
            service.stop()

    assert hit_header == "HIT", "the hit variant was not served from the cache"
    ms = {name: {"p50": percentile(s, 0.5) * 1000, "p99": percentile(s, 0.99) * 1000,
                 "mean": statistics.fmean(s) * 1000} for name, s in samples.items()}
    added = {"p50": ms["policy"]["p50"] - ms["bare"]["p50"], "p99": ms["policy"]["p99"] - ms["bare"]["p99"]}
    report = {"requests_per_variant": args.requests, "latency_ms": ms, "policy_added_ms": added,
              "targets_met": {"policy_added_p50_le_1ms": added["p50"] <= 1.0, "hit_p50_le_2ms": ms["hit"]["p50"] <= 2.0}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
