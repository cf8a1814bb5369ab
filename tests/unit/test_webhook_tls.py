"""HTTPS webhook deliveries through the connect-time address guard: the TCP connection goes to the
validated IP, yet TLS still names and verifies the URL's host (SNI, certificate chain and hostname), and a
refused address is refused before any connection is opened.

The receiver is a local TLS server on 127.0.0.1 for `hooks.example.test` (reserved, never resolvable), so
every connection depends on the guard's resolver seam; certificates come from a throwaway CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from resource_server.generation.webhooks.addresses import AllowList, DestinationRefused
from resource_server.generation.webhooks.guarded_transport import (
    GuardedTransport,
    guarded_client,
    refusal_of,
)
from resource_server.generation.webhooks.sender import SendResult, send
from resource_server.generation.webhooks.signing import SIGNATURE_HEADER, verify_signature
from tests.support.tls_certs import IssuedCert, TestCA

HOST = "hooks.example.test"
SECRET = "whsec_tls_test_secret"
BODY = b'{"id":"e1","type":"job.completed"}'
LOOPBACK = AllowList.parse(["127.0.0.0/8"])


@dataclass
class TlsReceiver:
    """Counts raw TCP accepts (so "never connected" is observable), then upgrades to TLS itself."""

    context: ssl.SSLContext
    port: int = 0
    accepted: int = 0
    server_names: list[str | None] = field(default_factory=list)  # SNI of each handshake attempt
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await writer.start_tls(self.context)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, body))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that refused our certificate hangs up mid-handshake
        finally:
            writer.close()


Serve = Callable[[IssuedCert], Awaitable[TlsReceiver]]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("webhook test CA")


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(cert: IssuedCert) -> TlsReceiver:
        context = cert.server_context(tmp_path, f"server{len(servers)}")
        receiver = TlsReceiver(context)

        def sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            receiver.server_names.append(name)

        context.sni_callback = sni
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        servers.append(server)
        receiver.port = server.sockets[0].getsockname()[1]
        return receiver

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


class Resolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.answers[host]


def client(allow: AllowList, resolver: Resolver, verify: ssl.SSLContext) -> httpx.AsyncClient:
    # guarded_client's settings, with a CA the test controls instead of certifi's.
    return httpx.AsyncClient(
        transport=GuardedTransport(allow, resolver=resolver, verify=verify),
        timeout=httpx.Timeout(5.0),
        follow_redirects=False,
        trust_env=False,
    )


async def deliver(http: httpx.AsyncClient, url: str) -> SendResult:
    return await send(
        http,
        url=url,
        secret=SECRET,
        event_id=uuid4(),
        event_type="job.completed",
        body=BODY,
        max_response_bytes=1024,
        deadline_seconds=5.0,
    )


def cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        current = current.__cause__ or current.__context__
    return None


async def test_https_delivery_through_the_guard_sends_sni_and_host_of_the_url(ca, serve):
    receiver = await serve(ca.issue(HOST))
    resolver = Resolver({HOST: ["127.0.0.1"]})
    url = f"https://{HOST}:{receiver.port}/hook"
    async with client(LOOPBACK, resolver, ca.client_context()) as http:
        result = await deliver(http, url)

    assert result == SendResult(True, 200, None)
    assert resolver.asked == [(HOST, receiver.port)]  # resolved once, by the guard
    assert receiver.accepted == 1
    assert receiver.server_names == [HOST]  # SNI names the URL's host, not the IP connected to
    [(headers, body)] = receiver.requests
    assert headers["host"] == f"{HOST}:{receiver.port}"
    assert body == BODY and verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)


@pytest.mark.parametrize("served_by", ["other_hostname", "untrusted_ca"])
async def test_certificate_verification_stays_on_through_the_guard(ca, serve, served_by):
    cert = ca.issue("other.example.test") if served_by == "other_hostname" else TestCA("rogue").issue(HOST)
    receiver = await serve(cert)
    resolver = Resolver({HOST: ["127.0.0.1"]})
    async with client(LOOPBACK, resolver, ca.client_context()) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.post(f"https://{HOST}:{receiver.port}/hook", content=BODY)

    refused = cert_error(caught.value)
    assert refused is not None, caught.value
    expected = "Hostname mismatch" if served_by == "other_hostname" else "unable to get local issuer"
    assert expected in refused.verify_message
    assert receiver.server_names == [HOST]  # the handshake happened, with the right SNI...
    assert receiver.requests == []  # ...and nothing was sent over the unverified connection


async def test_the_production_client_verifies_against_the_system_trust_store(ca, serve):
    receiver = await serve(ca.issue(HOST))  # valid for the name, but from a CA certifi does not know
    resolver = Resolver({HOST: ["127.0.0.1"]})
    async with guarded_client(LOOPBACK, resolver=resolver, timeout=httpx.Timeout(5.0)) as http:
        result = await deliver(http, f"https://{HOST}:{receiver.port}/hook")

    assert not result.delivered and not result.refused
    assert result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("allow", "answers"),
    [
        (AllowList(), ["127.0.0.1"]),  # no allow-list: loopback is refused
        (LOOPBACK, ["127.0.0.1", "10.0.0.8"]),  # one private answer not allow-listed spoils the lot
    ],
)
async def test_a_refused_address_is_refused_before_connecting(ca, serve, allow, answers):
    receiver = await serve(ca.issue(HOST))
    resolver = Resolver({HOST: answers})
    url = f"https://{HOST}:{receiver.port}/hook"
    async with client(allow, resolver, ca.client_context()) as http:
        result = await deliver(http, url)
        with pytest.raises(httpx.ConnectError) as caught:
            await http.post(url, content=BODY)

    assert not result.delivered and result.refused
    assert result.error is not None and "destination refused" in result.error
    assert isinstance(refusal_of(caught.value), DestinationRefused)
    assert receiver.accepted == 0  # not even a TCP connection, let alone a TLS handshake
