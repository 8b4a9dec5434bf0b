"""`python -m gateway` (or `python -m gateway serve`): the gateway under uvicorn, GATEWAY_WORKERS processes."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.access.keys import generate_secret
from gateway.observability.logs import configure_json_logging
from gateway.settings import Settings


def share_metrics_between_workers(workers: int) -> None:
    """Several workers are one replica to Prometheus: prometheus_client's multiprocess mode keeps each
    process's series in a shared folder and `/metrics` sums them, whichever worker answers the scrape.
    Set before the workers start, so each of them imports prometheus_client in that mode."""
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def ensure_admin_key(settings: Settings) -> None:
    """No admin key configured (development; production refuses to start without one): make one for this
    run, print it once on stderr (never to the JSON log), and hand it to every worker through this process's
    environment. With GATEWAY_AUTH=none there is nothing to make."""
    if settings.admin_key is not None or settings.auth == "none":
        return
    key = generate_secret()
    os.environ["GATEWAY_ADMIN_KEY"] = key
    print(
        f"gateway: GATEWAY_ADMIN_KEY is not set; this run's admin key (shown once, gone at restart):\n\n  {key}\n",
        file=sys.stderr,
        flush=True,
    )


def add_parser(sub: Any) -> None:
    sub.add_parser("serve", help="serve the API (the default command)").set_defaults(run=run)


class DrainingSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, closing the listening socket once the drain delay is over.

    The workers share the supervisor's socket. Each worker drains on the SIGTERM the supervisor passes on
    (gateway/api/drain.py) and stops accepting after the delay, but while the supervisor still holds the
    socket the kernel keeps taking connections that nobody answers until the last stream ended: a load
    balancer would wait on them instead of being refused and trying another gateway."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, delay_s: float) -> None:
        super().__init__(config, sockets)
        self.delay_s = delay_s

    def terminate_all(self) -> None:
        super().terminate_all()
        time.sleep(self.delay_s + 0.5)  # the workers serve meanwhile, and stop accepting first
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # on a listening socket: refuse new connections, in every worker


def run(_: argparse.Namespace) -> int:
    settings = Settings()
    configure_json_logging(settings.log_level)
    ensure_admin_key(settings)
    share_metrics_between_workers(settings.workers)
    # The app is built by each worker from the same environment (an import string is what lets
    # uvicorn start several worker processes); all shared state is in Redis.
    # log_config=None: uvicorn's own loggers go through the JSON handler too.
    config = uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        # After the drain delay (gateway/api/drain.py), how long requests in flight may take to finish.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    if config.workers > 1:
        DrainingSupervisor(config, [config.bind_socket()], delay_s=settings.drain_delay_s).run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3  # 3: uvicorn's start-up failure
