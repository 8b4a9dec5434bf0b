"""Loaded into the gateway process by `python -m bench.critical_path` (via PYTHONPATH); inert elsewhere.

BENCH_PATH_PROBE=segments: timestamps (perf_counter_ns) at the edges of the request path's steps,
one record per inference request, for requests sent one at a time; after the answer's first write,
`after_done` marks the end of the request's own work and `after_next` the arrival of the client's
next request (a next request that arrives first waited for that work). BENCH_PATH_PROBE=calls: counts
Python and C function calls (sys.setprofile) between SIGUSR1 and SIGUSR2. SIGUSR2 writes what was
gathered to BENCH_PATH_PROBE_OUT as JSON. Patches are by name, so an older checkout can be probed.
"""

from __future__ import annotations

import os

MODE = os.environ.get("BENCH_PATH_PROBE")

if MODE in ("segments", "calls"):
    import functools
    import inspect
    import json
    import signal
    import sys
    import time
    from collections import Counter

    OUT = os.environ["BENCH_PATH_PROBE_OUT"]
    sys.path.insert(0, os.environ.get("BENCH_PATH_PROBE_SRC", os.getcwd()))

    def _write(data: object, path: str = OUT) -> None:
        with open(path + ".part", "w") as f:  # then renamed: the harness never reads half a file
            json.dump(data, f)
        os.replace(path + ".part", path)

    if MODE == "calls":
        counts: Counter[str] = Counter()

        if os.environ.get("BENCH_PATH_PROBE_BY_FUNCTION"):  # also per function: where the calls are
            def _profile(frame, event, arg):  # noqa: ANN001, ANN202
                if event == "call":
                    counts["python"] += 1
                    code = frame.f_code  # "package/file.py:LINE Qual.name": the last two path parts are enough
                    where = "/".join(code.co_filename.split("/")[-2:])
                    counts[f"py {where}:{code.co_firstlineno} {code.co_qualname}"] += 1
                elif event == "c_call":
                    counts["c"] += 1
                    counts[f"c {getattr(arg, '__qualname__', repr(arg))}"] += 1
        else:
            def _profile(frame, event, arg):  # noqa: ANN001, ANN202
                if event == "call":
                    counts["python"] += 1
                elif event == "c_call":
                    counts["c"] += 1

        signal.signal(signal.SIGUSR1, lambda *_: (counts.clear(), sys.setprofile(_profile), _write({}, OUT + ".on")))
        signal.signal(signal.SIGUSR2, lambda *_: (sys.setprofile(None), _write(dict(counts))))
    else:
        ns = time.perf_counter_ns
        records: list[dict[str, int]] = []
        current: dict[str, int] = {}

        def mark(tag: str) -> None:
            # The first time only: a step that runs again within the request (the batched accounting
            # write's reply arriving during the backend wait) must not move the request's own mark.
            if "request" in current and tag not in current:
                current[tag] = ns()

        def wrap(owner: object, name: str, tag: str) -> None:
            raw = inspect.getattr_static(owner, name)
            static = isinstance(raw, staticmethod)
            func = raw.__func__ if static else getattr(owner, name)
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def probe(*a, **k):  # noqa: ANN002, ANN003, ANN202
                    mark(tag + ">")
                    result = await func(*a, **k)
                    mark(tag + "<")
                    return result
            else:
                @functools.wraps(func)
                def probe(*a, **k):  # noqa: ANN002, ANN003, ANN202
                    mark(tag + ">")
                    result = func(*a, **k)
                    mark(tag + "<")
                    return result
            setattr(owner, name, staticmethod(probe) if static else probe)

        from gateway import cache, deps, front, limits, policy, redis_wire, server_protocol, serving
        from gateway.backends import http11, ollama, pool
        from gateway.routers import inference

        received = server_protocol.GatewayHttpProtocol.data_received

        def data_received(self, data: bytes) -> None:  # noqa: ANN001
            if data.startswith(b"POST /v1"):
                if records and "after_next" not in records[-1]:  # the previous answer's client sent this one
                    records[-1]["after_next"] = ns()
                current.clear()
                current["request"] = ns()
            received(self, data)

        server_protocol.GatewayHttpProtocol.data_received = data_received
        wrap(front.FrontDoor, "__call__", "front")
        wrap(deps, "authenticated", "auth")
        front.authenticated = deps.authenticated
        wrap(deps, "parse_body", "parse")
        inference.parse_body = deps.parse_body
        wrap(policy.Policy, "serve", "policy")
        wrap(cache, "cache_key", "cache_key")
        policy.cache_key = cache.cache_key
        wrap(limits.KeyRateLimiter, "reserve_and_get", "limits")
        wrap(redis_wire._Connection, "send", "redis_write")
        wrap(redis_wire._Connection, "data_received", "redis_reply")
        wrap(serving.InferenceService, "generate", "generate")
        wrap(pool.BackendPool, "open", "pool")
        wrap(ollama.OllamaBackend, "chat", "ollama_chat")
        wrap(http11._Connection, "start", "backend_write")
        wrap(http11._Connection, "data_received", "backend_reply")
        wrap(http11.Response, "_arrived", "backend_body")  # a stream's first token, after its head
        wrap(front.FrontDoor, "_send_whole", "send_whole")
        wrap(front.FrontDoor, "_stream", "send_stream")
        # Where the answer's first body bytes are written: the cycle's `_write` (which only ever writes
        # body bytes, with the held head), or in checkouts before it a transport wrapper that also saw
        # the head go by.
        owner = getattr(server_protocol, "GatewayCycle", None)
        name = "_write" if owner is not None else "write"
        owner = owner or server_protocol.HeadHoldingTransport
        written = getattr(owner, name)

        def write(self, data: bytes) -> None:  # noqa: ANN001
            first_out = "request" in current and (name == "_write" or not data.startswith(b"HTTP/1.1 "))
            if first_out:
                current["client_write>"] = ns()  # the socket write itself (it wakes the client) is the last step
            written(self, data)
            if first_out:  # the answer's first bytes left
                current["client_write"] = ns()
                records.append(dict(current))
                current.clear()

        setattr(owner, name, write)
        front_call = front.FrontDoor.__call__

        async def front_done(self, scope, receive, send):  # noqa: ANN001, ANN202
            await front_call(self, scope, receive, send)
            if records and "after_done" not in records[-1]:  # its bookkeeping, after the answer went out
                records[-1]["after_done"] = ns()

        front.FrontDoor.__call__ = front_done
        signal.signal(signal.SIGUSR2, lambda *_: _write(records))
