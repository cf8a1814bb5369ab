"""Our client (`X402Client` and `x402 pay`) pays a resource server built with the official x402 SDK
middleware, through our facilitator, on the dev chain; balances are read from the chain.

Servers: the SDK's v2 ``PaymentMiddlewareASGI`` (tests/support/sdk.py) with a plain route, a route whose
requirements carry a server-side challenge id in ``extra`` (the SDK refuses a payment whose ``accepted``
drops it), an over-priced route, and the hand-written v1 route (402 JSON body, ``X-PAYMENT``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from client.cli import main
from client.errors import PaymentDeclined
from client.payer import X402Client
from client.selection import SpendingPolicy
from shared.devchain.chain import DevChain
from tests.fixtures.facilitator import RunningFacilitator
from tests.support.sdk import (
    BODY,
    NETWORK,
    PRICE_ATOMIC,
    ROUTE,
    V1_NETWORK,
    V1_ROUTE,
    PaidRoute,
    ResourceServer,
    raise_on_sdk_startup_failure,
    start_resource_server,
)

pytestmark = pytest.mark.integration

FUNDS = 1_000_000
CHALLENGE_ROUTE = "/quote"
CHALLENGE_ID = "q-7f3a9c"
PREMIUM_ROUTE = "/premium"
PREMIUM_ATOMIC = 50_000  # $0.05
KEY_ENV = "TEST_X402_PAYER_KEY"


@pytest.fixture(autouse=True)
def sdk_startup_failures_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    raise_on_sdk_startup_failure(monkeypatch)


@pytest.fixture
async def server(facilitator: RunningFacilitator) -> AsyncIterator[ResourceServer]:
    routes = [
        PaidRoute(CHALLENGE_ROUTE, extra={"challengeId": CHALLENGE_ID}),
        PaidRoute(PREMIUM_ROUTE, price="$0.05"),
    ]
    running = await start_resource_server(facilitator, extra_routes=routes)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


def key_of(account: LocalAccount) -> str:
    return "0x" + bytes(account.key).hex()


async def x402(capsys, *argv: str) -> tuple[int, str, str]:
    # In a thread: our facilitator is served by this test's event loop, which must keep running.
    code = await asyncio.to_thread(main, ["--stack", "/nonexistent/stack.json", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_balances(dev_chain: DevChain, payer: LocalAccount, pay_to: str, paid: int) -> None:
    assert dev_chain.balance_of(payer.address) == FUNDS - paid
    assert dev_chain.balance_of(pay_to) == paid


# -- the library ----------------------------------------------------------------------------------------


async def test_client_pays_sdk_server_v2(dev_chain, server, payer):
    policy = SpendingPolicy(max_usd=Decimal("0.05"), networks=frozenset({NETWORK}))
    async with X402Client(key_of(payer), policy) as client:
        result = await client.get(server.url + ROUTE)

    assert result.response.status_code == 200, result.response.text
    assert result.response.json() == BODY
    assert result.payment is not None and result.payment.header_name == "PAYMENT-SIGNATURE"
    assert result.choice is not None and result.choice.usd == Decimal("0.01")
    settled = result.settlement
    assert settled is not None and settled.success, result
    assert settled.network == NETWORK
    assert settled.payer is not None and settled.payer.lower() == payer.address.lower()
    assert settled.transaction.startswith("0x") and len(settled.transaction) == 66
    assert result.attempts == 1
    assert_balances(dev_chain, payer, server.pay_to, PRICE_ATOMIC)


async def test_challenge_id_in_extra_is_echoed_so_the_sdk_accepts_it(dev_chain, server, payer):
    async with X402Client(key_of(payer), SpendingPolicy(max_usd=Decimal("0.05"))) as client:
        result = await client.get(server.url + CHALLENGE_ROUTE)

    assert result.response.status_code == 200, result.response.text
    assert result.payment is not None
    assert result.payment.wire["accepted"]["extra"]["challengeId"] == CHALLENGE_ID
    assert_balances(dev_chain, payer, server.pay_to, PRICE_ATOMIC)


async def test_client_pays_v1_route_with_x_payment(dev_chain, server, payer):
    # The v1 name and the CAIP-2 id are one network to the allow-list.
    policy = SpendingPolicy(max_atomic=PRICE_ATOMIC, networks=frozenset({NETWORK}))
    async with X402Client(key_of(payer), policy) as client:
        result = await client.get(server.url + V1_ROUTE)

    assert result.response.status_code == 200, result.response.text
    assert result.response.json() == BODY
    assert result.payment is not None and result.payment.header_name == "X-PAYMENT"
    assert result.payment.wire["x402Version"] == 1
    assert result.settlement is not None and result.settlement.success
    assert result.settlement.network == V1_NETWORK
    assert_balances(dev_chain, payer, server.pay_to, PRICE_ATOMIC)


async def test_client_declines_over_limit_before_signing(dev_chain, server, payer):
    async with X402Client(key_of(payer), SpendingPolicy(max_usd=Decimal("0.02"))) as client:
        with pytest.raises(PaymentDeclined, match=r"price \$0.05 exceeds the limit of \$0.02"):
            await client.get(server.url + PREMIUM_ROUTE)
    assert_balances(dev_chain, payer, server.pay_to, 0)


# -- x402 pay -------------------------------------------------------------------------------------------


async def test_cli_pays_and_verifies_the_receipt(dev_chain, facilitator, server, payer, capsys, monkeypatch):
    monkeypatch.setenv("X402_PRIVATE_KEY", key_of(payer))
    code, out, err = await x402(
        capsys,
        "pay",
        server.url + ROUTE,
        "--max-amount",
        "0.05",
        "--network",
        NETWORK,
        "--verify-receipt",
        "--facilitator",
        facilitator.url,
        "--rpc-url",
        dev_chain.rpc_url,
    )
    assert code == 0, out + err
    assert json.loads(out) == BODY  # stdout is the body alone
    assert "HTTP 200 OK" in err
    assert "payment: 0.01 USDC (10000 base units)" in err and "via x402 v2 PAYMENT-SIGNATURE" in err
    assert f"payer: {payer.address} (key from $X402_PRIVATE_KEY)" in err
    assert "settlement: success, tx 0x" in err and f"network {NETWORK}" in err
    assert "our payment" in err and "Receipt verified." in err
    assert_balances(dev_chain, payer, server.pay_to, PRICE_ATOMIC)


async def test_cli_json_with_stack_file_defaults(dev_chain, facilitator, server, payer, capsys, tmp_path):
    stack = tmp_path / "stack.json"
    stack.write_bytes(
        orjson.dumps(
            {
                "payer_private_key": key_of(payer),
                "payer_address": payer.address,
                "facilitator_url": facilitator.url,
                "rpc_url": dev_chain.rpc_url,
            }
        )
    )
    code, out, err = await x402(
        capsys, "pay", server.url + CHALLENGE_ROUTE, "--stack", str(stack), "--verify-receipt", "--json"
    )
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True and report["status"] == 200 and report["body"] == BODY
    assert report["payment"]["amount"] == str(PRICE_ATOMIC)
    assert report["payment"]["payer"] == payer.address
    assert report["payment"]["attempts"] == 1
    assert report["settlement"]["success"] is True
    assert report["receipt"]["ok"] is True
    assert {c["name"] for c in report["receipt"]["checks"]} >= {"signature", "events", "our payment"}
    assert_balances(dev_chain, payer, server.pay_to, PRICE_ATOMIC)


async def test_cli_refuses_over_limit(dev_chain, server, payer, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, key_of(payer))
    code, out, err = await x402(
        capsys, "pay", server.url + PREMIUM_ROUTE, "--key-env", KEY_ENV, "--max-amount", "0.02", "--json"
    )
    assert code == 1, out + err
    report = json.loads(out)
    assert report["error"]["code"] == "amount_over_limit"
    assert "exceeds the limit of $0.02" in report["error"]["message"]
    assert report["payment"] is None
    assert_balances(dev_chain, payer, server.pay_to, 0)

    # --max-atomic: the same price in base units, one unit short.
    code, _, err = await x402(
        capsys,
        "pay",
        server.url + PREMIUM_ROUTE,
        "--key-env",
        KEY_ENV,
        "--max-atomic",
        str(PREMIUM_ATOMIC - 1),
    )
    assert code == 1 and "exceeds the limit of 49999 atomic units" in err
    assert_balances(dev_chain, payer, server.pay_to, 0)


async def test_cli_refuses_a_network_outside_the_allow_list(dev_chain, server, payer, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, key_of(payer))
    code, out, err = await x402(
        capsys, "pay", server.url + ROUTE, "--key-env", KEY_ENV, "--network", "eip155:8453", "--json"
    )
    assert code == 1, out + err
    report = json.loads(out)
    assert report["error"]["code"] == "network_not_allowed"
    assert report["error"]["rejections"][0]["detail"] == (
        f"network {NETWORK} is not in the allowed networks (eip155:8453)"
    )
    assert_balances(dev_chain, payer, server.pay_to, 0)


async def test_cli_reports_the_servers_refusal_and_pays_nothing_more(dev_chain, server, capsys, monkeypatch):
    broke = Account.create()  # no USDC: the SDK server's /verify refuses the payment with a second 402
    monkeypatch.setenv(KEY_ENV, "0x" + bytes(broke.key).hex())
    code, out, err = await x402(capsys, "pay", server.url + ROUTE, "--key-env", KEY_ENV)
    assert code == 1, out + err
    assert "the server refused the payment: invalid_exact_evm_insufficient_balance" in err
    assert "HTTP 402" in err
    assert dev_chain.balance_of(server.pay_to) == 0
