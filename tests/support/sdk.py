"""A resource server built with the official x402 Python SDK (``x402`` 2.25), pointed at our facilitator.

The SDK's only configuration is our facilitator's URL and our bearer API key, passed through the SDK's own
auth-provider mechanism (``FacilitatorConfig(auth_provider=...)`` returning ``AuthHeaders``). Everything else
is stock SDK code: the FastAPI/Starlette ``PaymentMiddlewareASGI`` resource server with the ``exact`` EVM
server scheme and its default asset table (Base Sepolia USDC, which the dev chain deploys at the real
address), and the ``HTTPFacilitatorClient`` talking to /supported, /verify and /settle.

How the pieces run
------------------
The SDK's resource server runs in its own thread with its own event loop (uvicorn), like a separate service.
That is required, not cosmetic: ``HTTPFacilitatorClient.get_supported()`` is synchronous by design (it uses
a blocking ``httpx.Client``) and ``PaymentMiddlewareASGI`` calls it from inside the event loop when
Starlette builds the middleware stack on the first request. On the test's loop, where our facilitator is
also served, that blocking call would wait for a facilitator that can no longer run.

A failed SDK start-up (``RouteConfigurationError`` / ``FacilitatorCapabilityError``, e.g. if our /supported
stopped listing eip155:84532) makes the SDK call ``os._exit(1)``; ``x402.http.background_init._process_exit``
is the hook the SDK documents for tests: ``raise_on_sdk_startup_failure`` replaces it so such a failure fails
the test instead of killing pytest (call it from an autouse fixture).

x402 v1
-------
SDK 2.25 keeps v1 only on the client and facilitator-client side; its resource server is v2 only (no
``register_v1``, the 402 is always ``x402Version: 2`` in a ``PAYMENT-REQUIRED`` header, and it reads only
``PAYMENT-SIGNATURE``). So ``V1_ROUTE`` is a minimal hand-written route implementing the v1 HTTP transport
(402 JSON body, ``X-PAYMENT`` in, ``X-PAYMENT-RESPONSE`` out) built only from SDK models and SDK header
codecs, verifying and settling through the SDK's ``HTTPFacilitatorClient``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from x402 import x402ResourceServer
from x402.http import (
    AuthHeaders,
    FacilitatorConfig,
    HTTPFacilitatorClient,
    PaymentOption,
    RouteConfig,
    background_init,
    decode_payment_signature_header,
    encode_payment_response_header,
)
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1, PaymentRequirementsV1

from tests.fixtures.facilitator import API_KEY, RunningFacilitator, free_port
from tests.support.payments import new_address

NETWORK = "eip155:84532"
V1_NETWORK = "base-sepolia"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # Base Sepolia USDC, where the dev chain deploys it
PRICE = "$0.01"
PRICE_ATOMIC = 10_000  # $0.01 in 6-decimal USDC
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


def raise_on_sdk_startup_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(code: int) -> None:
        raise RuntimeError(f"x402 SDK resource server refused to start (would have called os._exit({code}))")

    monkeypatch.setattr(background_init, "_process_exit", fail)


@dataclass(frozen=True)
class PaidRoute:
    """One more GET route behind the SDK middleware (the default ``ROUTE`` is always there)."""

    path: str
    price: str = PRICE
    network: str = NETWORK
    extra: dict[str, Any] | None = None  # merged by the SDK into the requirements' `extra`
    body: dict[str, Any] = field(default_factory=lambda: dict(BODY))


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
        asset=USDC,
        extra={"name": "USDC", "version": "2"},
    )


def build_app(
    facilitator: RunningFacilitator, pay_to: str, extra_routes: Sequence[PaidRoute] = ()
) -> FastAPI:
    client = HTTPFacilitatorClient(facilitator_config(facilitator))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)
    paid_routes = [PaidRoute(ROUTE), *extra_routes]
    for route in paid_routes:
        app.add_api_route(route.path, _constant(route.body), methods=["GET"])

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
    for network in {r.network for r in paid_routes}:
        # The SDK server scheme does not type-check against its own SchemeNetworkServer protocol (SDK typing).
        server.register(network, ExactEvmServerScheme())  # type: ignore[arg-type]
    routes = {
        f"GET {r.path}": RouteConfig(
            accepts=PaymentOption(
                scheme="exact", pay_to=pay_to, price=r.price, network=r.network, extra=r.extra
            ),
            description="weather report",
            mime_type="application/json",
        )
        for r in paid_routes
    }
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


def _constant(body: dict[str, Any]) -> Any:
    async def handler() -> dict[str, Any]:
        return body

    return handler


async def start_resource_server(
    facilitator: RunningFacilitator, *, extra_routes: Sequence[PaidRoute] = ()
) -> ResourceServer:
    pay_to = new_address()
    port = free_port()
    config = uvicorn.Config(
        build_app(facilitator, pay_to, extra_routes),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
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
