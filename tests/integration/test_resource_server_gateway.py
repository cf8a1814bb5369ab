"""Gateway mode: the pricing file in front of an upstream HTTP API, through a streaming reverse proxy.

The upstream is a small Starlette app served over HTTP; the gateway charges only for its answers below 400,
settling when the upstream's response headers arrive, before the body streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
