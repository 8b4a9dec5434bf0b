"""The path one request takes through the gateway's modules, measured in a running gateway.

The gateway (this checkout's, or another's with `--gateway-dir`) runs in this process in front of the
mock backend and a redis-server of its own, configured as production runs it (API key with limits,
Redis cache and limits). After a warm-up, one plain and one streamed chat request are sent with a
profiling hook (`sys.setprofile`) on, from the moment the app gets the request until its last
background task (the settling after the answer) ended. Every call into a function of the gateway
package is recorded; the report gives, per request:

- the modules entered, in order of first entry;
- calls from one module into another (each call counted, and the distinct caller -> callee pairs; a
  coroutine resumed after an await is not a new call), and how many of them go from one package into
  another;
- callbacks: calls from one package into another that is already further down the call stack (A
  calls B, which calls back into A), the back-and-forth a readable pipeline does not have (a package
  is `gateway.X`: a folder, or a module in the package's root);
- with `--calls`, every cross-module call in order.

    python -m bench.request_path [--gateway-dir ../other-checkout] [--calls] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.stack import MockOptions, start_mock
from testkit.processes import redis_service


def package(module: str) -> str:
    """`gateway.X`: the layer a module belongs to (its folder, or itself in the package's root)."""
    return ".".join(module.split(".")[:2])


@dataclass
class Trace:
    root: str  # the gateway package's folder
    calls: list[tuple[str, str, str, str]] = field(default_factory=list)  # caller module, func, callee module, func
    modules: list[str] = field(default_factory=list)  # in order of first entry
    callbacks: list[tuple[str, str, str]] = field(default_factory=list)  # (from module, into module, function)
    _stack: list[tuple[str, str] | None] = field(default_factory=list)
    _entered: dict[int, FrameType] = field(default_factory=dict)  # held, so an id is never reused meanwhile

    def module_of(self, frame: FrameType) -> str | None:
        path = frame.f_code.co_filename
        if not path.startswith(self.root):
            return None
        return path[len(self.root) - len("gateway/") :].removesuffix(".py").replace("/", ".")

    def hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            module = self.module_of(frame)
            if module is None:
                self._stack.append(None)
                return
            resumed = self._entered.get(id(frame)) is frame  # a coroutine or generator going on, not a call
            self._entered[id(frame)] = frame
            if resumed:
                self._stack.append((module, frame.f_code.co_qualname))
                return
            if module not in self.modules:
                self.modules.append(module)
            caller = next((entry for entry in reversed(self._stack) if entry is not None), None)
            if caller is not None and caller[0] != module:
                self.calls.append((caller[0], caller[1], module, frame.f_code.co_qualname))
                below = {package(entry[0]) for entry in self._stack if entry is not None and entry is not caller}
                if package(module) != package(caller[0]) and package(module) in below:
                    self.callbacks.append((caller[0], module, frame.f_code.co_qualname))
            self._stack.append((module, frame.f_code.co_qualname))
        elif event == "return" and self._stack:
            self._stack.pop()

    def summary(self) -> dict[str, Any]:
        edges = {(a, f, b, g) for a, f, b, g in self.calls}
        across = [c for c in self.calls if package(c[0]) != package(c[2])]
        return {
            "modules": len(self.modules),
            "cross_module_calls": len(self.calls),
            "distinct_edges": len(edges),
            "cross_package_calls": len(across),
            "callbacks": len(self.callbacks),
            "packages": len({package(m) for m in self.modules}),
            "module_order": self.modules,
            "callback_calls": [f"{a} -> {b}.{f}" for a, b, f in self.callbacks],
        }


@contextmanager
def profiled(trace: Trace) -> Iterator[None]:
    sys.setprofile(trace.hook)
    try:
        yield
    finally:
        sys.setprofile(None)


async def _measure(base_env: dict[str, str], model: str) -> dict[str, Trace]:
    import httpx

    from gateway.app import create_app  # the checkout chosen by --gateway-dir

    os.environ.update(base_env)
    app = create_app()
    root = str(Path(sys.modules["gateway"].__file__).parent) + "/"
    admin = {"Authorization": f"Bearer {base_env['GATEWAY_ADMIN_KEY']}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            made = await client.post("/admin/keys", headers=admin, json={"name": "path", "rpm": 10**6, "tpm": 10**9})
            headers = {"Authorization": f"Bearer {made.json()['key']}"}
            body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
            for _ in range(3):  # warm-up: imports, connection pools, key cache
                (await client.post("/v1/chat/completions", headers=headers, json=body)).raise_for_status()
                (
                    await client.post("/v1/chat/completions", headers=headers, json={**body, "stream": True})
                ).raise_for_status()
            traces: dict[str, Trace] = {}
            for name, request in (("plain", body), ("stream", {**body, "stream": True})):
                trace = traces[name] = Trace(root=root)
                with profiled(trace):
                    response = await client.post("/v1/chat/completions", headers=headers, json=request)
                response.raise_for_status()
    return traces


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.request_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway-dir", type=Path, default=None, help="run the gateway package of this checkout")
    p.add_argument("--calls", action="store_true", help="list every cross-module call in order")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if args.gateway_dir is not None:
        if not (args.gateway_dir / "gateway" / "__init__.py").exists():
            p.error(f"{args.gateway_dir} has no gateway package")
        sys.path.insert(0, str(args.gateway_dir.resolve()))
    with ExitStack() as stack:
        mock = start_mock(stack, MockOptions())
        redis = redis_service().start().wait_port()
        stack.callback(redis.stop)
        env = {
            "GATEWAY_ENV": "production",
            "GATEWAY_LOG_LEVEL": "warning",
            "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "GATEWAY_BACKENDS": json.dumps([{"kind": "openai", "url": mock.url, "name": "mock"}]),
            "GATEWAY_ADMIN_KEY": "sk-admin-" + secrets.token_urlsafe(24),
            "GATEWAY_JWT_SECRET": secrets.token_urlsafe(32),
            "GATEWAY_KEY_PEPPER": secrets.token_urlsafe(32),
        }
        traces = asyncio.run(_measure(env, MockOptions().model))
    if args.json:
        print(json.dumps({name: t.summary() for name, t in traces.items()}, indent=2))
        return 0
    for name, trace in traces.items():
        s = trace.summary()
        print(
            f"{name}: {s['modules']} modules in {s['packages']} packages; {s['cross_module_calls']} calls from "
            f"one module into another ({s['distinct_edges']} distinct), {s['cross_package_calls']} of them from one "
            f"package into another; {s['callbacks']} callbacks into a caller's package"
        )
        print("  modules in order: " + " > ".join(s["module_order"]))
        for line in s["callback_calls"]:
            print(f"  callback: {line}")
        if args.calls:
            for caller, func, callee, target in trace.calls:
                print(f"    {caller}.{func} -> {callee}.{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
