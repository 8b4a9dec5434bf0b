"""Fuzz the gateway's OpenAPI surface with schemathesis: a real gateway (Redis, an Ollama double) and
schemathesis's own runner (`st run`) against its /openapi.json, as an admin.

    with fuzz_stack() as url:
        result = run_schemathesis(url, max_examples=20, seed=1)
        assert result.ok, result.output    # the output carries each failure's curl reproduction

The checks are the contract: no server error, every response in the schema (status code, content type,
body). Used by tests/gateway/test_api_fuzz.py (bounded, in `make test`) and bench/fuzz.py (the longer
run before a release).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.ollama import running_ollama_double
from testkit.processes import free_port, python_service, redis_service

ADMIN_KEY = "sk-fuzz-admin-0123456789abcdef0123456789"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@contextlib.contextmanager
def fuzz_stack(*, env: dict[str, str] | None = None) -> Iterator[str]:
    """redis-server, the Ollama double and a gateway (schema for admins, JWT exchange on), each a real
    process; yields the gateway's URL and stops them all when the block ends."""
    redis = redis_service().start().wait_port()
    try:
        with running_ollama_double(tokens=4) as double, tempfile.TemporaryDirectory(prefix="fuzz-data-") as data:
            port = free_port()
            gateway = python_service(
                "gateway-fuzz",
                ["-m", "gateway"],
                port,
                env={
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_HOST": "127.0.0.1",
                    "GATEWAY_BACKENDS": json.dumps([{"kind": "ollama", "url": double.url}]),
                    "GATEWAY_ADMIN_KEY": ADMIN_KEY,
                    "GATEWAY_API_DOCS": "admin",
                    "GATEWAY_JWT_SECRET": "fuzz-jwt-secret-0123456789abcdef0123456789",
                    "GATEWAY_KEY_PEPPER": "fuzz-pepper-0123456789abcdef",
                    "GATEWAY_DISCOVERY_INTERVAL_S": "1",
                    "GATEWAY_DRAIN_DELAY_S": "0",
                    "GATEWAY_LOG_LEVEL": "warning",
                    "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                    "XDG_DATA_HOME": data,
                    **(env or {}),
                },
            ).start_and_wait_http("/healthz")
            try:
                yield gateway.url
            finally:
                gateway.stop()
                errors = [line for line in gateway.logs().splitlines() if "Traceback" in line or '"ERROR"' in line]
                if errors:  # a server error the checks missed still shows in the log
                    print(f"gateway log has {len(errors)} error line(s); see {gateway.log_path}", file=sys.stderr)
    finally:
        redis.stop()


@dataclass(frozen=True)
class FuzzResult:
    returncode: int
    output: str
    seconds: float
    operations: int | None  # operations in the schema that were tested
    cases: int | None  # test cases generated across the phases

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_schemathesis(
    url: str,
    *,
    max_examples: int,
    seed: int,
    phases: Sequence[str] = PHASES,
    workers: int = 1,
    max_time_s: float | None = None,
    deterministic: bool = True,
    extra: Sequence[str] = (),
) -> FuzzResult:
    """`st run` against `url`/openapi.json with the admin key: the same cases every run (deterministic), or
    cases drawn from `seed`."""
    st = Path(sys.executable).with_name("st")
    argv = [
        str(st),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(phases),
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        *(["--generation-deterministic"] if deterministic else ["--generation-database", "none"]),
        "--workers",
        str(workers),
        "--request-timeout",
        "30",
        "--no-color",
        "--output-truncate",
        "false",
        *(["--max-time", str(int(max_time_s))] if max_time_s else []),
        *extra,
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as scratch:  # its cache, outside the checkout
        done = subprocess.run(
            argv,
            cwd=scratch,
            capture_output=True,
            text=True,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "", "COLUMNS": "200"},
            check=False,
        )
    output = done.stdout + done.stderr
    return FuzzResult(
        returncode=done.returncode,
        output=output,
        seconds=time.monotonic() - started,
        operations=_number(r"(\d+) selected", output) or _number(r"Operations:\s+(\d+)", output),
        cases=_number(r"Test cases:\s+(\d+) generated", output),
    )


def _number(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else None
