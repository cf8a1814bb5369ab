"""An httpx transport that checks webhook destinations at CONNECT time, closing the DNS-rebinding gap.

Checking a URL's host before the request and letting the HTTP stack resolve it again later is a race:
the name can answer with a public address to the check and with 127.0.0.1 to the connection. Here the
network backend resolves each host exactly once, validates every address, and opens the TCP connection to
a validated IP literal. The URL is untouched, so the Host header and the TLS SNI/certificate check still
use the original name."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from .addresses import AllowList, DestinationRefused, check_resolved

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    def __init__(
        self,
        allow: AllowList,
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolve_timeout: float = 5.0,
    ) -> None:
        self.allow = allow
        self.resolver = resolver
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()
        self.resolve_timeout = resolve_timeout

    async def resolve_checked(self, host: str, port: int) -> list[str]:
        """Resolve once and validate every answer; the addresses connections may use."""
        try:
            async with asyncio.timeout(self.resolve_timeout):
                addresses = await self.resolver(host, port)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return [str(ip) for ip in check_resolved(host, port, addresses, self.allow)]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface passes it by name
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.resolve_checked(host, port)
        except DestinationRefused as exc:
            # A ConnectError so httpx maps it like any unreachable host; the cause says why.
            raise httpcore.ConnectError(f"destination refused: {exc}") from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface passes it by name
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook destinations")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport with its connection pool rebuilt on the guarded backend.

    Replacing ``_pool`` touches an httpx internal, but keeps httpx's request/response and exception
    mapping instead of a copy of it; tests exercise the path so an httpx upgrade that moves it fails
    loudly. Environment proxies are ignored: a proxy would make the connection, bypassing the check."""

    def __init__(
        self,
        allow: AllowList,
        *,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=50, max_keepalive_connections=10)
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self.backend = GuardedNetworkBackend(allow, resolver=resolver)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self.backend,
        )


def refusal_of(exc: BaseException) -> DestinationRefused | None:
    """The DestinationRefused behind an httpx error, if that is why the request failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DestinationRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def guarded_client(
    allow: AllowList, *, resolver: Resolver = system_resolver, timeout: httpx.Timeout | None = None
) -> httpx.AsyncClient:
    """A client for webhook deliveries: guarded connections, no redirects, no environment proxies."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow, resolver=resolver),
        timeout=timeout or httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
        trust_env=False,
    )
