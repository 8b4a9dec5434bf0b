"""`python -m gateway`: serve with uvicorn (`GATEWAY_WORKERS` processes); `python -m gateway keys|token ...`:
operator commands."""

from __future__ import annotations

import os
import sys
import tempfile

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.access_log import configure_json_logging
from gateway.settings import Settings


def share_metrics_between_workers(workers: int) -> None:
    """Several workers are one replica to Prometheus: prometheus_client's multiprocess mode keeps each
    process's series in a shared folder and `/metrics` sums them, whichever worker answers the scrape.
    Set before the workers start, so each of them imports prometheus_client in that mode."""
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def serve() -> int:
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        cause = f"\n{exc.__cause__}" if exc.__cause__ else ""
        print(f"gateway: invalid configuration:\n{exc}{cause}", file=sys.stderr)
        return 2
    configure_json_logging(settings.log_level)
    share_metrics_between_workers(settings.workers)
    # The app is built by each worker from the same environment (an import string is what lets
    # uvicorn start several worker processes); all shared state is in Redis.
    # log_config=None: uvicorn's own loggers go through the JSON handler too.
    uvicorn.run("gateway.app:create_app", factory=True, workers=settings.workers, host=settings.host,
                port=settings.port, log_level=settings.log_level, log_config=None, access_log=False,
                timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["routes"]:
        from gateway.routes.cli import main as routes_main  # the admin API's routes, from a shell

        sys.exit(routes_main(sys.argv[2:]))
    if sys.argv[1:2] and sys.argv[1] in ("migrate", "export"):
        from gateway.store.cli import main as store_main  # the inference store's one-shot commands

        sys.exit(store_main(sys.argv[1:]))
    if sys.argv[1:2] == ["judge"]:
        from gateway.judge import main as judge_main  # an LLM judge over a sample of captured answers

        sys.exit(judge_main(sys.argv[2:]))
    if sys.argv[1:2] == ["adapters"]:
        from gateway.adapters.cli import main as adapters_main  # the adapter registry

        sys.exit(adapters_main(sys.argv[2:]))
    if sys.argv[1:2] and sys.argv[1] in ("keys", "token", "-h", "--help", "--json"):
        from gateway.cli import main  # operator commands: keys create|list|..., token

        sys.exit(main(sys.argv[1:]))
    sys.exit(serve())
