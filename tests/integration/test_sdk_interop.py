"""The official x402 Python SDK (``x402`` 2.25) against our facilitator, unchanged.

The SDK's only configuration is our facilitator's URL and our bearer API key, passed through the SDK's own
auth-provider mechanism (``FacilitatorConfig(auth_provider=...)`` returning ``AuthHeaders``). Everything else
is stock SDK code: the FastAPI/Starlette ``PaymentMiddlewareASGI`` resource server with the ``exact`` EVM
server scheme and its default asset table (Base Sepolia USDC, which the dev chain deploys at the real
address), the ``x402HttpxClient`` (async) and ``wrapRequestsWithPayment`` (sync) paying clients with the
``exact`` EVM client scheme, and the ``HTTPFacilitatorClient`` talking to /supported, /verify and /settle.

The SDK resource server and its hand-written x402 v1 route live in ``tests/support/sdk.py``; see its
docstring for why the server runs in a thread of its own and why v1 needs a route by hand. The direct
``get_supported()`` calls below go through ``asyncio.to_thread`` for the same reason the server has its own
thread: that SDK call blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client, x402ClientSync
from x402.http import (
    HTTPFacilitatorClient,
    HTTPFacilitatorClientSync,
    decode_payment_required_header,
    decode_payment_response_header,
)
from x402.http.clients import wrapRequestsWithPayment, x402HttpxClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.exact.v1.client import ExactEvmSchemeV1
from x402.schemas import PaymentRequired, PaymentRequirements

from shared.devchain.chain import DevChain
from tests.fixtures.facilitator import RunningFacilitator
from tests.support.payments import new_address
from tests.support.sdk import (
    BODY,
    NETWORK,
    PRICE_ATOMIC,
    ROUTE,
    V1_NETWORK,
    V1_ROUTE,
    ResourceServer,
    facilitator_config,
    raise_on_sdk_startup_failure,
    signer,
    start_resource_server,
)

pytestmark = pytest.mark.integration

FUNDS = 1_000_000


@pytest.fixture(autouse=True)
def sdk_startup_failures_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    raise_on_sdk_startup_failure(monkeypatch)


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
