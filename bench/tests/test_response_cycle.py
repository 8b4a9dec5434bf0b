"""bench.response_cycle drives the gateway's response cycle the way uvicorn does, and reports its cost."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from bench import response_cycle
from gateway import server_protocol


class _Recording(response_cycle.NullTransport):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.chunks.append(data)


def test_one_response_is_a_whole_chunked_answer_in_three_writes() -> None:
    async def run() -> _Recording:
        transport = _Recording()
        cycle = response_cycle.cycle_factory(server_protocol, asyncio.get_running_loop())(transport)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": response_cycle.HEADERS})
        for i, part in enumerate(response_cycle.PARTS):
            await cycle.send({"type": "http.response.body", "body": part,
                              "more_body": i < len(response_cycle.PARTS) - 1})
        assert cycle.response_complete
        return transport

    transport = uvloop.run(run())
    assert len(transport.chunks) == 3  # the head rides with the first part
    wire = b"".join(transport.chunks)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\n") and b"transfer-encoding: chunked\r\n" in wire
    assert wire.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_the_command_prints_the_best_round(capsys: pytest.CaptureFixture[str]) -> None:
    response_cycle.main(["--responses", "20", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "us per streamed response (best of 2 rounds of 20; 1838 bytes each)" in out
    assert float(out.split(": ")[1].split()[0]) > 0
