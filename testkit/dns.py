"""A real DNS server for tests: dnsmasq on a loopback port, answering for the names a test sets.

with running_dns() as dns:                       # dns.server is "127.0.0.1:PORT"
    dns.set("models.test", ["127.0.0.2", "127.0.0.3"])
    ...                                          # point GATEWAY_DNS_SERVERS at dns.server
    dns.set("models.test", ["127.0.0.3"])        # the answer changes at once (SIGHUP rereads the file)

Names (under `.test`) come from a hosts file of the test's own (`--addn-hosts`), never the machine's /etc/hosts or its
upstream servers; answers carry a TTL of 0, so nothing caches an old one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testkit.processes import Service, find_binary, free_port


class DnsServer:
    def __init__(self, workdir: Path) -> None:
        self.hosts = workdir / "hosts"
        self.hosts.write_text("")
        self.port = free_port()
        argv = [
            find_binary("dnsmasq"),
            "--keep-in-foreground",
            "--no-daemon",
            "--log-facility=-",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            "--local-ttl=0",
            "--local=/test/",  # names under .test are answered here only: NODATA/NXDOMAIN, never REFUSED
            f"--addn-hosts={self.hosts}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            f"--pid-file={workdir / 'dnsmasq.pid'}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")  # as root dnsmasq would switch to `nobody`, who cannot read the file
        self.service = Service(name="dnsmasq", argv=argv, port=self.port)
        self.names: dict[str, list[str]] = {}

    @property
    def server(self) -> str:
        """What GATEWAY_DNS_SERVERS takes: host:port."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self.service.start()
        self.service.wait_port(timeout=10)  # dnsmasq answers over TCP too: listening means ready
        return self

    def set(self, name: str, addresses: list[str]) -> None:
        """From now on `name` resolves to `addresses` (none: the name does not exist)."""
        self.names[name] = addresses
        lines = [f"{address} {host}" for host, found in self.names.items() for address in found]
        self.hosts.write_text("\n".join(lines) + "\n")
        assert self.service.proc is not None
        os.kill(self.service.proc.pid, signal.SIGHUP)  # reread the hosts file, drop the cache

    def stop(self) -> None:
        self.service.stop()


@contextlib.contextmanager
def running_dns() -> Iterator[DnsServer]:
    with tempfile.TemporaryDirectory(prefix="dns-") as workdir:
        server = DnsServer(Path(workdir)).start()
        try:
            yield server
        finally:
            server.stop()
