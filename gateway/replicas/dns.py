"""The addresses a backend's host name resolves to: one replica each, for `discover: dns` backends.

A Kubernetes headless Service answers with the address of every ready pod behind it, Docker's DNS with
every container of a `--scale`d service; both change as replicas come and go, so the pool asks again
on an interval. By default the system's resolver answers (what every other client on the host sees:
/etc/hosts, /etc/resolv.conf with its search domains); GATEWAY_DNS_SERVERS names servers to ask
instead (dnspython), for a service registry such as Consul's DNS interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import dns.asyncresolver
import dns.exception
import dns.resolver


class NameNotFound(Exception):
    """The name has no address (any more): every replica it named is gone."""


class LookupFailed(Exception):
    """The resolver could not answer (timeout, server failure): the replicas known so far are kept."""


def _server(entry: str) -> tuple[str, int]:
    """`host` or `host:port` (`[v6]:port` for IPv6) -> (address, port)."""
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]:")
        return host, int(port or 53)
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, 53


class AddressBook:
    """Resolves host names to the sorted list of their IPv4 and IPv6 addresses."""

    def __init__(self, servers: list[str] | None = None, *, timeout_s: float = 3.0) -> None:
        self.timeout_s = timeout_s
        self._resolver: dns.asyncresolver.Resolver | None = None
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            pairs = [_server(s) for s in servers]
            resolver.nameservers = [host for host, _ in pairs]
            resolver.nameserver_ports = {host: port for host, port in pairs}
            resolver.lifetime = timeout_s
            self._resolver = resolver

    async def addresses(self, host: str) -> list[str]:
        """Every address of `host` (an IP literal is its own); NameNotFound when it has none, LookupFailed
        when the resolver gave no answer."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found = await (self._ask_servers(host) if self._resolver is not None else self._ask_system(host))
        if not found:
            raise NameNotFound(f"{host} has no address")
        return sorted(found, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))

    async def _ask_system(self, host: str) -> set[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise NameNotFound(f"{host}: {exc.strerror}") from None
            raise LookupFailed(f"{host}: {exc.strerror}") from None
        except TimeoutError:
            raise LookupFailed(f"{host}: no answer within {self.timeout_s:g} s") from None
        return {str(info[4][0]) for info in infos}

    async def _ask_servers(self, host: str) -> set[str]:
        assert self._resolver is not None
        found: set[str] = set()
        missing = 0
        for kind in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, kind, search=True)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                missing += 1
                continue
            except dns.exception.DNSException as exc:
                raise LookupFailed(f"{host}: {exc}") from None
            found.update(record.to_text() for record in answer)
        if missing == 2:
            raise NameNotFound(f"{host} has no A or AAAA record")
        return found


def replica_name(label: str, address: str) -> str:
    """The name a replica found by DNS has in metrics and logs: its backend's label and its address."""
    return f"{label}@{address}"
