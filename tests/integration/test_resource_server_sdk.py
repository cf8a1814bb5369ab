"""Stock x402 SDK clients (``x402`` 2.25: the async httpx transport and the sync requests adapter) pay our
resource server unchanged, with x402 v2 and v1, and the money moves on-chain.

The server sends both generations at once: the v2 ``PAYMENT-REQUIRED`` header and the v1 JSON body. The
SDK clients always prefer the header when present (``x402HTTPClientBase.get_payment_required_response``),
so an SDK client registered for v1 only would fail on our 402. The v1 tests therefore run the stock SDK
client over an inner transport that hides the v2 header, which is exactly what a v1-era client sees; the
SDK's own code still parses the v1 body, selects, signs with ``ExactEvmSchemeV1``, sends ``X-PAYMENT`` and
reads ``X-PAYMENT-RESPONSE``. The transport hook is public SDK API (``x402_httpx_transport(client,
transport=...)``); for requests it is an ``x402HTTPAdapter`` subclass that drops the header in
``build_response``, the standard requests adapter extension point."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client, x402ClientSync
from x402.http import decode_payment_response_header
from x402.http.clients import wrapRequestsWithPayment, x402_httpx_transport
from x402.http.clients.requests import x402HTTPAdapter
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.exact.v1.client import ExactEvmSchemeV1

from resource_server.demo import DEMO_ROUTES
from shared.devchain.chain import DevChain
from tests.fixtures.facilitator import RunningFacilitator
from tests.fixtures.resource_server import RunningResourceServer, StartResourceServer, pricing_defaults
from tests.support.payments import new_address

pytestmark = pytest.mark.integration

NETWORK = "eip155:84532"
V1_NETWORK = "base-sepolia"
FUNDS = 1_000_000
RENDER_PRICE = 13_880  # 0.0004 × 12 × 2.25 × 1.1 + 0.002 dollars
PARAMS: dict[str, Any] = {"duration": 12, "resolution": "1080p"}


def pricing_toml(pay_to: str) -> str:
    return (
        pricing_defaults(pay_to, NETWORK)
        + """
[[routes]]
method = "POST"
path = "/render"
[routes.params.duration]
type = "integer"
min = 1
[routes.params.resolution]
type = "enum"
values = ["720p", "1080p"]
[routes.price]
base = "$0.0004"
factors = [
  { param = "duration" },
  { param = "resolution", table = { "720p" = "1.5", "1080p" = "2.25" } },
]
markup_percent = "10"
markup = "$0.002"
"""
    )


class HideV2Challenge(httpx.AsyncBaseTransport):
    """What a v1-era client sees of our 402: the JSON body only."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code == 402:
            del response.headers["payment-required"]
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class HideV2ChallengeAdapter(x402HTTPAdapter):
    def build_response(self, req: requests.PreparedRequest, resp: object) -> requests.Response:
        response = super().build_response(req, resp)
        if response.status_code == 402:
            response.headers.pop("PAYMENT-REQUIRED", None)
        return response


@pytest.fixture
def payer(dev_chain: DevChain) -> Iterator[LocalAccount]:
    yield dev_chain.new_payer(FUNDS)


@pytest.fixture
def pay_to() -> str:
    return new_address()


@pytest.fixture
async def rs(
    start_resource_server: StartResourceServer, facilitator: RunningFacilitator, pay_to: str
) -> RunningResourceServer:
    return await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], handlers=DEMO_ROUTES
    )


def signer(payer: LocalAccount) -> EthAccountSigner:
    return EthAccountSigner(Account.from_key(payer.key))


def assert_paid(dev_chain: DevChain, status: int, headers, body, payer, pay_to, network, header: str) -> None:
    assert status == 200, body
    assert body["resolution"] == "1080p"
    settled = decode_payment_response_header(headers[header])
    assert settled.success and settled.network == network, settled
    assert settled.payer is not None and settled.payer.lower() == payer.address.lower()
    assert dev_chain.balance_of(payer.address) == FUNDS - RENDER_PRICE
    assert dev_chain.balance_of(pay_to) == RENDER_PRICE


async def test_sdk_httpx_client_pays_v2(dev_chain, rs, payer, pay_to):
    client = x402Client()
    client.register(NETWORK, ExactEvmClientScheme(signer(payer)))
    async with httpx.AsyncClient(transport=x402_httpx_transport(client), timeout=60.0) as http:
        response = await http.post(rs.url + "/render", json=PARAMS)
    body = response.json()
    assert_paid(
        dev_chain, response.status_code, response.headers, body, payer, pay_to, NETWORK, "payment-response"
    )


async def test_sdk_requests_client_pays_v2(dev_chain, rs, payer, pay_to):
    client = x402ClientSync()
    client.register(NETWORK, ExactEvmClientScheme(signer(payer)))
    session = wrapRequestsWithPayment(requests.Session(), client)
    try:
        response = await asyncio.to_thread(session.post, rs.url + "/render", json=PARAMS, timeout=60)
    finally:
        session.close()
    body = response.json()
    assert_paid(
        dev_chain, response.status_code, response.headers, body, payer, pay_to, NETWORK, "payment-response"
    )


async def test_sdk_httpx_client_pays_v1(dev_chain, rs, payer, pay_to):
    client = x402Client()
    client.register_v1(V1_NETWORK, ExactEvmSchemeV1(signer(payer)))
    async with httpx.AsyncClient(
        transport=x402_httpx_transport(client, HideV2Challenge()), timeout=60.0
    ) as http:
        response = await http.post(rs.url + "/render", json=PARAMS)
    body = response.json()
    assert "payment-response" not in response.headers
    assert_paid(
        dev_chain,
        response.status_code,
        response.headers,
        body,
        payer,
        pay_to,
        V1_NETWORK,
        "x-payment-response",
    )


async def test_sdk_requests_client_pays_v1(dev_chain, rs, payer, pay_to):
    client = x402ClientSync()
    client.register_v1(V1_NETWORK, ExactEvmSchemeV1(signer(payer)))
    session = requests.Session()
    adapter = HideV2ChallengeAdapter(client)
    session.mount("http://", adapter)
    try:
        response = await asyncio.to_thread(session.post, rs.url + "/render", json=PARAMS, timeout=60)
    finally:
        session.close()
    body = response.json()
    assert_paid(
        dev_chain,
        response.status_code,
        response.headers,
        body,
        payer,
        pay_to,
        V1_NETWORK,
        "x-payment-response",
    )


async def test_sdk_v1_only_client_cannot_read_a_dual_402(rs, payer):
    """Documents the SDK behaviour the v1 tests work around: the header wins, even for a v1-only client."""
    from x402.http.clients.httpx import PaymentError

    client = x402Client()
    client.register_v1(V1_NETWORK, ExactEvmSchemeV1(signer(payer)))
    async with httpx.AsyncClient(transport=x402_httpx_transport(client), timeout=60.0) as http:
        with pytest.raises(PaymentError, match="No payment requirements match"):
            await http.post(rs.url + "/render", json=PARAMS)


async def test_sdk_client_pays_a_fastapi_app_using_the_middleware(
    dev_chain, facilitator, fresh_database, payer
):
    """The middleware on its own, in a FastAPI app of someone else's making: pricing, store, facilitator."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from resource_server.challenges.store import ChallengeStore
    from resource_server.facilitator_client import FacilitatorClient
    from resource_server.middleware import PaymentMiddleware
    from resource_server.pricing.loader import parse_pricing
    from tests.fixtures.facilitator import API_KEY
    from tests.fixtures.resource_server import serve_asgi

    pay_to = new_address()
    store = ChallengeStore()
    fac = FacilitatorClient([facilitator.url], api_key=API_KEY)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await store.open(fresh_database)
        yield
        await store.close()
        await fac.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/joke")
    async def joke() -> dict[str, str]:
        return {"joke": "a priced one"}

    pricing = parse_pricing(
        {
            "defaults": {"pay_to": pay_to, "accepts": [{"network": NETWORK}]},
            "routes": [{"method": "GET", "path": "/joke", "price": "$0.005"}],
        }
    )
    app.add_middleware(PaymentMiddleware, pricing=pricing, store=store, facilitator=fac)
    served = await serve_asgi(app)
    try:
        client = x402Client()
        client.register(NETWORK, ExactEvmClientScheme(signer(payer)))
        async with httpx.AsyncClient(transport=x402_httpx_transport(client), timeout=60.0) as http:
            response = await http.get(served.url + "/joke")
            assert (await http.get(served.url + "/docs")).status_code == 200  # unpriced routes untouched
    finally:
        await served.stop()
    assert response.status_code == 200, response.text
    assert response.json() == {"joke": "a priced one"}
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert dev_chain.balance_of(pay_to) == 5_000
