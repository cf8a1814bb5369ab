"""The official x402 Python SDK (``x402`` 2.25) against our facilitator, unchanged.

The SDK's only configuration is our facilitator's URL and our bearer API key, passed through the SDK's own
auth-provider mechanism (``FacilitatorConfig(auth_provider=...)`` returning ``AuthHeaders``). Everything else
is stock SDK code: the FastAPI/Starlette ``PaymentMiddlewareASGI`` resource server with the ``exact`` EVM
server scheme and its default asset table (Base Sepolia USDC, which the dev chain deploys at the real
address), the ``x402HttpxClient`` (async) and ``wrapRequestsWithPayment`` (sync) paying clients with the
``exact`` EVM client scheme, and the ``HTTPFacilitatorClient`` talking to /supported, /verify and /settle.

How the pieces run
------------------
The SDK's resource server runs in its own thread with its own event loop (uvicorn), like a separate service.
That is required, not cosmetic: ``HTTPFacilitatorClient.get_supported()`` is synchronous by design (it uses
a blocking ``httpx.Client``) and ``PaymentMiddlewareASGI`` calls it from inside the event loop when
Starlette builds the middleware stack on the first request. On the test's loop, where our facilitator is
also served, that blocking call would wait for a facilitator that can no longer run. (Same reason the
direct ``get_supported()`` calls below go through ``asyncio.to_thread``.)

A failed SDK start-up (``RouteConfigurationError`` / ``FacilitatorCapabilityError``, e.g. if our /supported
stopped listing eip155:84532) makes the SDK call ``os._exit(1)``; ``x402.http.background_init._process_exit``
is the hook the SDK documents for tests, and is replaced here so such a failure fails the test instead of
killing pytest.

x402 v1
-------
SDK 2.25 keeps v1 only on the client and facilitator-client side: ``x402Client.register_v1`` with
``ExactEvmSchemeV1`` (legacy network names, ``X-PAYMENT`` header, 402 body parsing), and
``HTTPFacilitatorClient.verify/settle`` accepting ``PaymentPayloadV1`` / ``PaymentRequirementsV1``. Its
resource server is v2 only: ``x402ResourceServer`` has no ``register_v1``, ``register_exact_evm_server`` is
documented "V2 only (no server-side for V1)", the 402 it builds is always ``x402Version: 2`` in a
``PAYMENT-REQUIRED`` header, and ``_extract_payment`` reads only ``PAYMENT-SIGNATURE``. So the v1 test serves
its 402 from a minimal hand-written route implementing the v1 HTTP transport (402 JSON body, ``X-PAYMENT``
in, ``X-PAYMENT-RESPONSE`` out) built only from SDK models and SDK header codecs, and verifies/settles
through the SDK's ``HTTPFacilitatorClient``; the paying side is the stock SDK v1 client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from x402 import x402Client, x402ClientSync, x402ResourceServer
from x402.http import (
    AuthHeaders,
    FacilitatorConfig,
    HTTPFacilitatorClient,
    HTTPFacilitatorClientSync,
    PaymentOption,
    RouteConfig,
    background_init,
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_response_header,
)
from x402.http.clients import wrapRequestsWithPayment, x402HttpxClient
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmClientScheme, ExactEvmServerScheme
from x402.mechanisms.evm.exact.v1.client import ExactEvmSchemeV1
from x402.schemas import PaymentRequired, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1, PaymentRequirementsV1

from shared.devchain.chain import DevChain
from tests.fixtures.facilitator import API_KEY, RunningFacilitator, free_port
from tests.support.payments import new_address

pytestmark = pytest.mark.integration

NETWORK = "eip155:84532"
V1_NETWORK = "base-sepolia"
PRICE = "$0.01"
PRICE_ATOMIC = 10_000  # $0.01 in 6-decimal USDC
FUNDS = 1_000_000
ROUTE = "/weather"
V1_ROUTE = "/v1/weather"
BODY = {"report": "sunny", "temperature": 21}


class BearerAuth:
    """The SDK's AuthProvider protocol: our static bearer key on /verify and /settle."""

    def get_auth_headers(self) -> AuthHeaders:
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        return AuthHeaders(verify=dict(bearer), settle=dict(bearer))


def facilitator_config(facilitator: RunningFacilitator, *, auth: bool = True) -> FacilitatorConfig:
    return FacilitatorConfig(url=facilitator.url, timeout=30.0, auth_provider=BearerAuth() if auth else None)


def signer(payer: LocalAccount) -> EthAccountSigner:
    """The SDK's EVM client signer, from the payer's private key."""
    return EthAccountSigner(Account.from_key(payer.key))


@pytest.fixture(autouse=True)
def sdk_startup_failures_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(code: int) -> None:
        raise RuntimeError(f"x402 SDK resource server refused to start (would have called os._exit({code}))")

    monkeypatch.setattr(background_init, "_process_exit", fail)


# ----------------------------------------------------------------------------------------------------
# The SDK resource server, served by uvicorn in a thread of its own
# ----------------------------------------------------------------------------------------------------


@dataclass
class ResourceServer:
    url: str
    pay_to: str
    server: uvicorn.Server
    thread: threading.Thread

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)


def v1_requirements(pay_to: str, resource: str) -> PaymentRequirementsV1:
    return PaymentRequirementsV1(
        scheme="exact",
        network=V1_NETWORK,
        max_amount_required=str(PRICE_ATOMIC),
        resource=resource,
        description="weather report",
        mime_type="application/json",
        pay_to=pay_to,
        max_timeout_seconds=300,
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        extra={"name": "USDC", "version": "2"},
    )


def build_app(facilitator: RunningFacilitator, pay_to: str) -> FastAPI:
    client = HTTPFacilitatorClient(facilitator_config(facilitator))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get(ROUTE)
    async def weather() -> dict[str, Any]:
        return BODY

    # x402 v1: the SDK has no v1 resource server, so this route is the v1 HTTP transport by hand, from SDK
    # models and codecs, verifying and settling through the SDK's facilitator client (see module docstring).
    @app.get(V1_ROUTE)
    async def weather_v1(request: Request) -> JSONResponse:
        requirements = v1_requirements(pay_to, str(request.url))

        def payment_required(error: str, headers: dict[str, str] | None = None) -> JSONResponse:
            body = PaymentRequiredV1(error=error, accepts=[requirements])
            return JSONResponse(
                body.model_dump(by_alias=True, exclude_none=True), status_code=402, headers=headers
            )

        header = request.headers.get("x-payment")
        if not header:
            return payment_required("X-PAYMENT header is required")
        payload = decode_payment_signature_header(header)
        if not isinstance(payload, PaymentPayloadV1):
            return payment_required("expected an x402 v1 payment")
        verified = await client.verify(payload, requirements)
        if not verified.is_valid:
            return payment_required(verified.invalid_reason or "invalid payment")
        settled = await client.settle(payload, requirements)
        headers = {"X-PAYMENT-RESPONSE": encode_payment_response_header(settled)}
        if not settled.success:
            return payment_required(settled.error_reason or "settlement failed", headers)
        return JSONResponse(BODY, headers=headers)

    server = x402ResourceServer(client)
    # The SDK's server scheme does not type-check against its own SchemeNetworkServer protocol (SDK typing).
    server.register(NETWORK, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
    routes = {
        f"GET {ROUTE}": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=pay_to, price=PRICE, network=NETWORK),
            description="weather report",
            mime_type="application/json",
        )
    }
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


async def start_resource_server(facilitator: RunningFacilitator) -> ResourceServer:
    pay_to = new_address()
    port = free_port()
    config = uvicorn.Config(
        build_app(facilitator, pay_to), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="sdk-resource-server", daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            return ResourceServer(f"http://127.0.0.1:{port}", pay_to, server, thread)
        if not thread.is_alive():
            break
        await asyncio.sleep(0.025)
    server.should_exit = True
    raise RuntimeError("SDK resource server did not start")


@pytest.fixture
async def resource_server(facilitator: RunningFacilitator) -> AsyncIterator[ResourceServer]:
    running = await start_resource_server(facilitator)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


# ----------------------------------------------------------------------------------------------------
# Assertions shared by the paid flows
# ----------------------------------------------------------------------------------------------------


def describe(status: int, headers: Any, text: str) -> str:
    """A failed response, with its x402 headers decoded, for assertion messages."""
    parts = [f"HTTP {status}: {text[:500]}"]
    for name in ("payment-required", "payment-response", "x-payment-response"):
        value = headers.get(name)
        if value:
            try:
                decoded: Any = (
                    decode_payment_required_header(value)
                    if name == "payment-required"
                    else decode_payment_response_header(value)
                )
            except Exception as exc:  # diagnostics only
                decoded = f"<undecodable: {exc}>"
            parts.append(f"{name}: {decoded!r}")
    return "\n".join(parts)


async def assert_paid(
    dev_chain: DevChain,
    facilitator: RunningFacilitator,
    *,
    status: int,
    headers: Any,
    text: str,
    body: Any,
    payer: LocalAccount,
    pay_to: str,
    network: str,
    settlement_header: str,
) -> str:
    assert status == 200, describe(status, headers, text)
    assert body == BODY

    raw = headers.get(settlement_header)
    assert raw, f"no {settlement_header} header: {dict(headers)}"
    settled = decode_payment_response_header(raw)
    assert settled.success is True, settled
    assert settled.network == network
    assert settled.payer is not None and settled.payer.lower() == payer.address.lower()
    tx = settled.transaction
    assert tx.startswith("0x") and len(tx) == 66, tx

    assert dev_chain.balance_of(payer.address) == FUNDS - PRICE_ATOMIC
    assert dev_chain.balance_of(pay_to) == PRICE_ATOMIC

    receipt = await facilitator.get(f"/receipt/{tx}")
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["receipt"]["status"] == "confirmed", receipt.json()
    return tx


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------


async def test_v2_httpx_client_pays_sdk_resource_server(dev_chain, facilitator, resource_server, payer):
    client = x402Client()
    client.register(NETWORK, ExactEvmClientScheme(signer(payer)))

    async with x402HttpxClient(client, timeout=60.0) as http:
        response = await http.get(resource_server.url + ROUTE)

    body = response.json() if response.status_code == 200 else None
    await assert_paid(
        dev_chain,
        facilitator,
        status=response.status_code,
        headers=response.headers,
        text=response.text,
        body=body,
        payer=payer,
        pay_to=resource_server.pay_to,
        network=NETWORK,
        settlement_header="payment-response",
    )


async def test_v2_unpaid_request_gets_sdk_402_with_our_kind(resource_server):
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.get(resource_server.url + ROUTE)

    assert response.status_code == 402, describe(response.status_code, response.headers, response.text)
    required = decode_payment_required_header(response.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    assert required.x402_version == 2
    [accept] = required.accepts
    assert (accept.scheme, accept.network, accept.amount) == ("exact", NETWORK, str(PRICE_ATOMIC))
    assert accept.asset.lower() == "0x036CbD53842c5426634e7929541eC2318f3dCF7e".lower()
    assert accept.pay_to == resource_server.pay_to
    assert (accept.extra["name"], accept.extra["version"]) == ("USDC", "2"), accept.extra


async def test_v1_client_pays_through_sdk_facilitator_client(dev_chain, facilitator, resource_server, payer):
    client = x402Client()
    client.register_v1(V1_NETWORK, ExactEvmSchemeV1(signer(payer)))

    async with x402HttpxClient(client, timeout=60.0) as http:
        response = await http.get(resource_server.url + V1_ROUTE)

    body = response.json() if response.status_code == 200 else None
    await assert_paid(
        dev_chain,
        facilitator,
        status=response.status_code,
        headers=response.headers,
        text=response.text,
        body=body,
        payer=payer,
        pay_to=resource_server.pay_to,
        network=V1_NETWORK,
        settlement_header="x-payment-response",
    )


async def test_v2_requests_client_pays_sdk_resource_server(dev_chain, facilitator, resource_server, payer):
    client = x402ClientSync()
    client.register(NETWORK, ExactEvmClientScheme(signer(payer)))
    session = wrapRequestsWithPayment(requests.Session(), client)
    try:
        response = await asyncio.to_thread(session.get, resource_server.url + ROUTE, timeout=60)
    finally:
        session.close()

    body = response.json() if response.status_code == 200 else None
    await assert_paid(
        dev_chain,
        facilitator,
        status=response.status_code,
        headers=response.headers,
        text=response.text,
        body=body,
        payer=payer,
        pay_to=resource_server.pay_to,
        network=NETWORK,
        settlement_header="payment-response",
    )


async def test_sdk_facilitator_clients_parse_supported(dev_chain, facilitator):
    async_client = HTTPFacilitatorClient(facilitator_config(facilitator))
    with HTTPFacilitatorClientSync(facilitator_config(facilitator)) as sync_client:
        # get_supported() blocks (both variants): off the loop that serves our facilitator.
        from_async = await asyncio.to_thread(async_client.get_supported)
        from_sync = await asyncio.to_thread(sync_client.get_supported)

    for supported in (from_async, from_sync):
        kinds = {(k.x402_version, k.scheme, k.network) for k in supported.kinds}
        assert (2, "exact", NETWORK) in kinds, supported
        assert (1, "exact", V1_NETWORK) in kinds, supported
        signers = {a.lower() for a in supported.signers.get("eip155:*", [])}
        expected = {Account.from_key(k).address.lower() for k in dev_chain.facilitator_keys}
        assert signers == expected, supported


async def test_sdk_facilitator_client_auth_goes_through_auth_provider(dev_chain, facilitator, payer):
    requirements = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=dev_chain.usdc.address,
        amount=str(PRICE_ATOMIC),
        pay_to=new_address(),
        max_timeout_seconds=300,
        extra={"name": dev_chain.usdc.name, "version": dev_chain.usdc.version},
    )
    client = x402Client()
    client.register(NETWORK, ExactEvmClientScheme(signer(payer)))
    payload = await client.create_payment_payload(PaymentRequired(accepts=[requirements]))

    async with HTTPFacilitatorClient(facilitator_config(facilitator)) as authed:
        verified = await authed.verify(payload, requirements)
    assert verified.is_valid is True, verified
    assert verified.payer is not None and verified.payer.lower() == payer.address.lower()

    async with HTTPFacilitatorClient(facilitator_config(facilitator, auth=False)) as anonymous:
        with pytest.raises(ValueError, match=r"verify failed \(401\)"):
            await anonymous.verify(payload, requirements)
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_refused_payment_yields_sdk_402_and_moves_nothing(dev_chain, facilitator, resource_server):
    broke = Account.create()  # no USDC at all
    client = x402Client()
    client.register(NETWORK, ExactEvmClientScheme(signer(broke)))

    async with x402HttpxClient(client, timeout=60.0) as http:
        response = await http.get(resource_server.url + ROUTE)

    assert response.status_code == 402, describe(response.status_code, response.headers, response.text)
    assert "payment-response" not in response.headers  # refused at verify: nothing was settled
    required = decode_payment_required_header(response.headers["payment-required"])
    assert required.error == "invalid_exact_evm_insufficient_balance", required
    assert [a.pay_to for a in required.accepts] == [resource_server.pay_to]

    assert dev_chain.balance_of(broke.address) == 0
    assert dev_chain.balance_of(resource_server.pay_to) == 0
