"""A backend fast enough not to be the bottleneck: OpenAI /v1 and Ollama /api on one port.

Raw asyncio protocol (no framework) so a request costs it a small fraction of what the gateway
spends (its own CPU is in every report) and the numbers measured through it are the gateway's. Every answer has a fixed
number of tokens; `--token-delay-ms` spaces streamed tokens, `--first-token-ms` delays the
first one, and a non-streamed answer waits `--plain-delay-ms` (default: as long as the stream
would take; 0 lets a benchmark measure pure overhead on plain calls while streams keep gaps).
A prompt containing `BENCH_FAIL` is answered 500, so a soak can mix in errors the backend
caused. `--content` sets a non-streamed answer's text (a document for format checks). GET /_stats
counts the inference calls it received (to verify cache hits).

Run alone: `python -m testkit.mock_backend --port 9000 --tokens 16 --token-delay-ms 1`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

FAIL_MARKER = b"BENCH_FAIL"
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class MockConfig:
    """What every answer looks like and how long it takes."""

    model: str = "bench-model"
    tokens: int = 16
    token_delay_s: float = 0.0
    first_token_s: float = 0.0
    plain_delay_s: float | None = None
    content: str | None = None  # a non-streamed answer's text (default: `tokens` words)

    @property
    def total_s(self) -> float:
        """How long a non-streamed answer takes."""
        if self.plain_delay_s is not None:
            return self.plain_delay_s
        return self.first_token_s + self.token_delay_s * self.tokens


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason.get(status, b"Status")),
            b"content-type: " + content_type + b"\r\n",
            b"content-length: %d\r\n\r\n" % len(body),
            body,
        )
    )


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-transfer frame."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """Pre-rendered bodies: the per-request work is a template fill, not JSON encoding."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        self.inference_calls = 0  # GET /_stats: lets a benchmark see whether a cache answered instead
        text = cfg.content if cfg.content is not None else "tok " * cfg.tokens
        self.models_openai = json.dumps(
            {"object": "list", "data": [{"id": cfg.model, "object": "model", "created": 0, "owned_by": "bench"}]}
        ).encode()
        self.models_ollama = json.dumps(
            {
                "models": [
                    {
                        "name": cfg.model,
                        "model": cfg.model,
                        "modified_at": "2026-01-01T00:00:00Z",
                        "size": 1,
                        "digest": "0" * 64,
                        "details": {
                            "format": "gguf",
                            "family": "llama",
                            "parameter_size": "135M",
                            "quantization_level": "Q4_1",
                        },
                    }
                ]
            }
        ).encode()
        usage = {"prompt_tokens": 8, "completion_tokens": cfg.tokens, "total_tokens": 8 + cfg.tokens}
        self.openai_plain = json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 0,
                "model": cfg.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }
        ).encode()
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": cfg.model}
        self.openai_role = self._sse(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        )
        self.openai_token = self._sse(
            {**base, "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}
        )
        self.openai_stop = self._sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self.openai_usage = self._sse({**base, "choices": [], "usage": usage})
        ns = int(cfg.total_s * 1e9)
        done = {
            "model": cfg.model,
            "created_at": "2026-01-01T00:00:00Z",
            "done": True,
            "done_reason": "stop",
            "total_duration": ns,
            "load_duration": 0,
            "prompt_eval_count": 8,
            "prompt_eval_duration": 0,
            "eval_count": cfg.tokens,
            "eval_duration": ns,
        }
        self.ollama_plain = json.dumps({**done, "message": {"role": "assistant", "content": text}}).encode()
        self.ollama_token = (
            json.dumps(
                {
                    "model": cfg.model,
                    "created_at": "2026-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": "tok "},
                    "done": False,
                }
            ).encode()
            + b"\n"
        )
        self.ollama_done = json.dumps({**done, "message": {"role": "assistant", "content": ""}}).encode() + b"\n"
        self.generate_plain = json.dumps({**done, "response": text}).encode()
        self.generate_token = (
            json.dumps(
                {"model": cfg.model, "created_at": "2026-01-01T00:00:00Z", "response": "tok ", "done": False}
            ).encode()
            + b"\n"
        )
        self.generate_done = json.dumps({**done, "response": ""}).encode() + b"\n"

    @staticmethod
    def _sse(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class MockProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; requests on one connection are answered in order."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes]] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length > MAX_BODY_BYTES:
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            self.queue.put_nowait((method, path.split(b"?", 1)[0], body))

    async def _serve(self) -> None:
        while True:
            method, path, body = await self.queue.get()
            try:
                await self._answer(method, path, body)
            except (ConnectionError, RuntimeError):
                return

    async def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        a, write = self.answers, self.transport.write
        if method == b"GET":
            if path == b"/_stats":
                write(_response(200, b'{"inference_calls":%d}' % a.inference_calls))
                return
            routes = {
                b"/v1/models": a.models_openai,
                b"/api/tags": a.models_ollama,
                b"/api/ps": a.models_ollama,
                b"/api/version": b'{"version":"0.12.0"}',
                b"/": b"Ollama is running",
                b"/health": b'{"status":"ok"}',
            }
            found = routes.get(path)
            write(_response(200, found) if found is not None else _response(404, b'{"error":"not found"}'))
            return
        a.inference_calls += 1
        if FAIL_MARKER in body:
            write(_response(500, b'{"error":{"message":"injected failure","type":"server_error"}}'))
            return
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            write(_response(400, b'{"error":"invalid JSON"}'))
            return
        if path in (b"/v1/chat/completions", b"/chat/completions"):
            await self._openai(request)
        elif path in (b"/api/chat", b"/api/generate"):
            await self._ollama(request, chat=path == b"/api/chat")
        else:
            write(_response(404, b'{"error":"not found"}'))

    async def _openai(self, request: dict) -> None:
        a, cfg, write = self.answers, self.answers.cfg, self.transport.write
        if not request.get("stream"):
            await _sleep(cfg.total_s)
            write(_response(200, a.openai_plain))
            return
        write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n" + _chunk(a.openai_role)
        )
        await self._tokens(a.openai_token)
        tail = a.openai_stop
        if (request.get("stream_options") or {}).get("include_usage"):
            tail += a.openai_usage
        write(_chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def _ollama(self, request: dict, *, chat: bool) -> None:
        a, cfg, write = self.answers, self.answers.cfg, self.transport.write
        if request.get("stream") is False:  # Ollama streams unless told not to
            await _sleep(cfg.total_s)
            write(_response(200, a.ollama_plain if chat else a.generate_plain))
            return
        write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
        await self._tokens(a.ollama_token if chat else a.generate_token)
        write(_chunk(a.ollama_done if chat else a.generate_done) + b"0\r\n\r\n")

    async def _tokens(self, frame: bytes) -> None:
        """Send the fixed token count, each as its own chunk, spaced by the configured delay."""
        cfg, write = self.answers.cfg, self.transport.write
        await _sleep(cfg.first_token_s)
        if cfg.token_delay_s <= 0:
            write(_chunk(frame) * cfg.tokens)  # still separate chunks, one write
            return
        for _ in range(cfg.tokens):
            await asyncio.sleep(cfg.token_delay_s)
            if self.transport.is_closing():
                return
            write(_chunk(frame))


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def serve(cfg: MockConfig, host: str, port: int) -> None:
    answers = Answers(cfg)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(answers), host, port, backlog=1024)
    print(
        f"mock backend on http://{host}:{port} model={cfg.model} tokens={cfg.tokens} "
        f"token_delay={cfg.token_delay_s * 1000:g}ms started={time.time():.0f}",
        flush=True,
    )
    async with server:
        await server.serve_forever()


def install_fast_loop() -> None:
    """uvloop when present (it ships with uvicorn[standard]); asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--model", default="bench-model")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--first-token-ms", type=float, default=0.0)
    p.add_argument("--plain-delay-ms", type=float, default=None)
    p.add_argument("--content", default=None, help="a non-streamed answer's text (default: --tokens words)")
    args = p.parse_args(argv)
    delays = (args.token_delay_ms, args.first_token_ms, args.plain_delay_ms or 0.0)
    if args.tokens < 1 or min(delays) < 0:
        p.error("--tokens must be >= 1 and delays >= 0")
    cfg = MockConfig(
        model=args.model,
        tokens=args.tokens,
        token_delay_s=args.token_delay_ms / 1000,
        first_token_s=args.first_token_ms / 1000,
        plain_delay_s=None if args.plain_delay_ms is None else args.plain_delay_ms / 1000,
        content=args.content,
    )
    install_fast_loop()
    try:
        asyncio.run(serve(cfg, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
