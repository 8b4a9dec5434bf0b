from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.ollama import running_ollama_double
from testkit.processes import Service, redis_service
from tests.console.support import Bench, make_bench
from tests.store.support import gateway_on


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One gateway per module, capturing every answer, with a reviewer key and an application key."""
    database_url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'store.db'}"
    redis = redis_service().start().wait_port()
    try:
        with running_ollama_double(tokens=8) as double:
            gateway: Service = gateway_on(
                double, database_url, GATEWAY_CAPTURE_PERCENT="100", REDIS_URL=f"redis://127.0.0.1:{redis.port}/0"
            )
            try:
                yield make_bench(gateway, database_url)
            finally:
                gateway.stop()
    finally:
        redis.stop()
