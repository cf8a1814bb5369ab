"""Gateway mode: the pricing file in front of an upstream HTTP API, through a streaming reverse proxy.

The upstream is a small Starlette app served over HTTP; the gateway charges only for its answers below 400,
settling when the upstream's response headers arrive, before the body streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from client.signing import pay_v1, pay_v2
from shared.devchain.chain import DevChain
from shared.x402.codec import decode_model_header, encode_json_header
from shared.x402.models import PaymentRequiredV1, PaymentRequiredV2, SettleResponse
from tests.fixtures.facilitator import RunningFacilitator, free_port
from tests.fixtures.resource_server import (
    RunningResourceServer,
    Served,
    StartResourceServer,
    pricing_defaults,
    serve_asgi,
)
from tests.support.payments import new_address

pytestmark = pytest.mark.integration

FUNDS = 1_000_000
PRICE = 1_000


def pricing_toml(pay_to: str) -> str:
    return (
        pricing_defaults(pay_to, "eip155:84532")
        + """
[[routes]]
method = "GET"
path = "/stream"
price = "$0.001"

[[routes]]
method = "GET"
path = "/broken"
price = "$0.001"

[[routes]]
method = "POST"
path = "/echo"
price = "$0.001"
"""
    )


class Upstream:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen_headers: dict[str, str] = {}

    async def stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk;"
            # Held until the test has read the first chunk through the gateway: a buffering proxy deadlocks.
            await asyncio.wait_for(self.release.wait(), 10)
            yield b"second chunk"

        return StreamingResponse(body(), media_type="text/plain", headers={"x-upstream": "yes"})

    async def broken(self, request: Request) -> Response:
        return JSONResponse({"error": "database on fire"}, status_code=500)

    async def echo(self, request: Request) -> Response:
        self.seen_headers = dict(request.headers)
        received = bytearray()
        async for chunk in request.stream():
            received += chunk
        return Response(
            bytes(received), media_type=request.headers.get("content-type", "application/octet-stream")
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/stream", self.stream),
                Route("/broken", self.broken),
                Route("/echo", self.echo, methods=["POST"]),
                Route("/free", lambda r: JSONResponse({"free": True})),
            ]
        )


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, Served]]:
    up = Upstream()
    served = await serve_asgi(up.app(), lifespan="off")
    yield up, served
    await served.stop()


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


@pytest.fixture
def pay_to() -> str:
    return new_address()


@pytest.fixture
async def gateway(
    start_resource_server: StartResourceServer, facilitator: RunningFacilitator, upstream, pay_to
) -> RunningResourceServer:
    return await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], upstream=upstream[1].url
    )


async def pay_header(
    gateway: RunningResourceServer, payer: LocalAccount, method: str, path: str
) -> dict[str, str]:
    response = await gateway.request(method, path)
    assert response.status_code == 402, response.text
    required = decode_model_header(response.headers["payment-required"], PaymentRequiredV2)
    return {
        "PAYMENT-SIGNATURE": encode_json_header(pay_v2(payer.key.hex(), payer.address, required.accepts[0]))
    }


async def test_paid_upstream_success_is_charged_and_streamed(dev_chain, gateway, upstream, payer, pay_to):
    up, _ = upstream
    headers = await pay_header(gateway, payer, "GET", "/stream")

    async with gateway.http.stream("GET", gateway.url + "/stream", headers=headers) as response:
        assert response.status_code == 200
        # Settled as the upstream's headers arrived, before any of the body was passed on.
        settled = decode_model_header(response.headers["payment-response"], SettleResponse)
        assert settled.success, settled
        assert dev_chain.balance_of(pay_to) == PRICE
        assert response.headers["x-upstream"] == "yes"
        chunks = response.aiter_bytes()
        first = await anext(chunks)
        assert first.startswith(b"first chunk;")
        up.release.set()
        rest = b"".join([c async for c in chunks])
    assert first + rest == b"first chunk;second chunk"
    assert dev_chain.balance_of(payer.address) == FUNDS - PRICE


async def test_upstream_error_passes_through_uncharged(dev_chain, gateway, payer, pay_to):
    headers = await pay_header(gateway, payer, "GET", "/broken")
    response = await gateway.get("/broken", headers=headers)
    assert response.status_code == 500
    assert response.json() == {"error": "database on fire"}
    assert "payment-response" not in response.headers
    assert dev_chain.balance_of(pay_to) == 0
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_request_body_and_safe_headers_are_forwarded(dev_chain, gateway, upstream, payer, pay_to):
    up, _ = upstream
    headers = await pay_header(gateway, payer, "POST", "/echo")

    async def body() -> AsyncIterator[bytes]:
        for part in (b"part one, ", b"part two"):
            yield part

    response = await gateway.post(
        "/echo",
        content=body(),
        headers={
            **headers,
            "content-type": "text/csv",
            "authorization": "Bearer client-secret",
            "x-custom": "kept",
            "connection": "keep-alive, x-hop",
            "x-hop": "dropped",
        },
    )
    assert response.status_code == 200, response.text
    assert response.content == b"part one, part two"
    assert response.headers["content-type"].startswith("text/csv")
    seen = up.seen_headers
    assert seen["x-custom"] == "kept" and seen["content-type"] == "text/csv"
    for dropped in ("authorization", "payment-signature", "x-payment", "x-hop"):
        assert dropped not in seen, dropped
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-forwarded-proto"] == "http"
    assert dev_chain.balance_of(pay_to) == PRICE


async def test_v1_client_pays_through_the_gateway(dev_chain, gateway, payer, pay_to):
    challenge = await gateway.get("/broken")
    legacy = PaymentRequiredV1.model_validate(challenge.json())
    payment = {"X-PAYMENT": encode_json_header(pay_v1(payer.key.hex(), payer.address, legacy.accepts[0]))}
    response = await gateway.get("/broken", headers=payment)
    assert response.status_code == 500 and dev_chain.balance_of(pay_to) == 0

    challenge = await gateway.post("/echo", content=b"x")
    legacy = PaymentRequiredV1.model_validate(challenge.json())
    payment = {"X-PAYMENT": encode_json_header(pay_v1(payer.key.hex(), payer.address, legacy.accepts[0]))}
    response = await gateway.post("/echo", content=b"hello", headers=payment)
    assert response.status_code == 200 and response.content == b"hello"
    assert decode_model_header(response.headers["x-payment-response"], SettleResponse).success
    assert dev_chain.balance_of(pay_to) == PRICE


async def test_unpriced_paths_pass_and_gateway_endpoints_answer(gateway):
    assert (await gateway.get("/free")).json() == {"free": True}
    assert (await gateway.get("/health")).json() == {"status": "ok"}
    listing = (await gateway.get("/pricing")).json()
    assert [r["path"] for r in listing["routes"]] == ["/stream", "/broken", "/echo"]


async def test_unreachable_upstream_is_502_and_uncharged(
    dev_chain, start_resource_server, facilitator, payer, pay_to
):
    gateway = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], upstream=f"http://127.0.0.1:{free_port()}"
    )
    headers = await pay_header(gateway, payer, "GET", "/stream")
    response = await gateway.get("/stream", headers=headers)
    assert response.status_code == 502 and response.json()["error"] == "upstream_unavailable"
    assert dev_chain.balance_of(payer.address) == FUNDS
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


# -- paths: priced as forwarded --------------------------------------------------------------------------


async def raw_request(url: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request sent as written: HTTP clients resolve `..` themselves before anything is sent."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Content-Type: text/plain\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest


async def test_dot_segments_cannot_reach_a_priced_route_unpaid(dev_chain, gateway, upstream, payer, pay_to):
    up, _ = upstream
    # Priced on the path the upstream gets: /free/../echo is /echo, which costs.
    status, rest = await raw_request(gateway.url, "POST", "/free/../echo", b"hello")
    assert status == 402, rest
    assert b"payment-required:" in rest.lower()
    status, rest = await raw_request(gateway.url, "POST", "/free/./..//echo", b"hello")
    assert status == 402, rest
    for target in ("/../echo", "/free/%2e%2e/echo", "/free/..%2Fecho", "/free\\..\\echo"):
        status, rest = await raw_request(gateway.url, "POST", target, b"hello")
        assert status == 400 and b'"error":"invalid_path"' in rest, (target, rest)
    assert up.seen_headers == {}  # nothing reached the upstream
    # A payment for /echo is good for the same path however it is spelled, and charged once.
    headers = await pay_header(gateway, payer, "POST", "/echo")
    response = await gateway.post("/free/../echo", content=b"paid", headers=headers)
    assert (response.status_code, response.content) == (200, b"paid")
    assert dev_chain.balance_of(pay_to) == PRICE


async def test_the_gateway_says_where_the_request_came_from(dev_chain, gateway, upstream, payer, pay_to):
    up, _ = upstream
    headers = await pay_header(gateway, payer, "POST", "/echo")
    # X-Forwarded-For/-Proto of an untrusted client never reach the scope (uvicorn honours them from trusted
    # proxies only, 127.0.0.1 here, which this test client is): the rest is the gateway's to drop.
    spoofed = {
        "x-forwarded-host": "trusted.internal",
        "forwarded": "for=10.9.9.9;proto=https",
        "x-real-ip": "10.9.9.9",
        "cookie": "session=abc",
    }
    response = await gateway.post("/echo", content=b"x", headers={**headers, **spoofed})
    assert response.status_code == 200, response.text
    seen = up.seen_headers
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == gateway.url.removeprefix("http://")
    assert "forwarded" not in seen and "x-real-ip" not in seen
    assert seen["cookie"] == "session=abc"  # an upstream API may need its cookies
    for payment_header in ("payment-signature", "x-payment"):
        assert payment_header not in seen
    assert dev_chain.balance_of(pay_to) == PRICE


async def test_a_settlement_the_database_did_not_take_still_streams_the_answer(
    dev_chain, gateway, payer, pay_to, monkeypatch
):
    headers = await pay_header(gateway, payer, "POST", "/echo")
    store = gateway.runtime.store

    async def lost(*args: object, **kwargs: object) -> bool:
        raise OSError("connection to the database lost")

    monkeypatch.setattr(store, "transition", lost)
    response = await gateway.post("/echo", content=b"paid for", headers=headers)
    # Charged on-chain: served with its receipt, the challenge left verified for the reconciler.
    assert (response.status_code, response.content) == (200, b"paid for")
    assert decode_model_header(response.headers["payment-response"], SettleResponse).success
    assert dev_chain.balance_of(pay_to) == PRICE
    statuses = await store.pool.fetch("SELECT status FROM rs_challenges WHERE status <> 'issued'")
    assert [r["status"] for r in statuses] == ["verified"]
