"""A network failure of the paid request is retried with the same signed payment, never a second one.

A tiny proxy sits in front of the SDK resource server and spoils the first paid request: it drops the
connection before forwarding (the server never saw the payment), or forwards it and then answers 502 or drops
the connection (the server settled, the answer was lost). In every case the proxy must see the identical
PAYMENT-SIGNATURE twice and the chain must show exactly one transfer.

When the loss happens after forwarding, the retry cannot be served: the SDK server re-verifies the payment,
and its nonce is now used on chain. That 402 is reported with the server's reason; paying again would be
the double charge this client exists to avoid."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from client.cli import main
from client.errors import PaymentRejected
from client.payer import X402Client
from client.retry import RetryPolicy
from client.selection import SpendingPolicy
from shared.devchain.chain import DevChain
from tests.fixtures.chain import usdc_transfer_logs
from tests.fixtures.facilitator import RunningFacilitator
from tests.support.sdk import (
    BODY,
    PRICE_ATOMIC,
    ROUTE,
    ResourceServer,
    raise_on_sdk_startup_failure,
    start_resource_server,
)

pytestmark = pytest.mark.integration

FUNDS = 1_000_000
POLICY = SpendingPolicy(max_usd=Decimal("0.05"))
FAST_RETRY = RetryPolicy(attempts=3, backoff_seconds=0.05)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class FlakyProxy:
    """Forwards to `upstream`; the first request carrying a payment gets `mode`:
    drop_before (close without forwarding), fail_after (forward, then answer 502),
    drop_after (forward, then close without answering)."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream
        self.mode = mode
        self.payments: list[str] = []  # PAYMENT-SIGNATURE of every paid request received
        self.forwarded_payments = 0
        self._spoiled = False
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60.0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        payment = request.headers.get("payment-signature")
        with self._lock:
            spoil = payment is not None and not self._spoiled
            self._spoiled = self._spoiled or spoil
            if payment is not None:
                self.payments.append(payment)
        if spoil and self.mode == "drop_before":
            request.close_connection = True
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = self._http.get(self.upstream + request.path, headers=headers)
        if payment is not None:
            self.forwarded_payments += 1
        if spoil and self.mode == "drop_after":
            request.close_connection = True
            return
        if spoil and self.mode == "fail_after":
            status, body, relayed = 502, b"bad gateway", {}
        else:
            status, body = answer.status_code, answer.content
            relayed = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        request.send_response(status)
        for name, value in relayed.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


@pytest.fixture(autouse=True)
def sdk_startup_failures_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    raise_on_sdk_startup_failure(monkeypatch)


@pytest.fixture
async def server(facilitator: RunningFacilitator) -> AsyncIterator[ResourceServer]:
    running = await start_resource_server(facilitator)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def proxy_factory(server: ResourceServer) -> Iterator[Any]:
    started: list[FlakyProxy] = []

    def make(mode: str) -> FlakyProxy:
        proxy = FlakyProxy(server.url, mode)
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


def key_of(account: LocalAccount) -> str:
    return "0x" + bytes(account.key).hex()


def assert_paid_once(dev_chain: DevChain, payer: LocalAccount, pay_to: str, proxy: FlakyProxy) -> None:
    assert len(proxy.payments) == 2, proxy.payments
    assert proxy.payments[0] == proxy.payments[1]  # the very same signed payment, resent
    [transfer] = usdc_transfer_logs(dev_chain, pay_to)
    assert int(transfer["data"], 16) == PRICE_ATOMIC
    assert dev_chain.balance_of(payer.address) == FUNDS - PRICE_ATOMIC
    assert dev_chain.balance_of(pay_to) == PRICE_ATOMIC


async def test_dropped_before_forwarding_is_retried_and_served(dev_chain, server, proxy_factory, payer):
    proxy = proxy_factory("drop_before")
    async with X402Client(key_of(payer), POLICY, retry=FAST_RETRY) as client:
        result = await client.get(proxy.url + ROUTE)

    assert result.response.status_code == 200, result.response.text
    assert result.response.json() == BODY
    assert result.attempts == 2
    assert result.payment is not None and result.payment.header_value == proxy.payments[0]
    assert result.settlement is not None and result.settlement.success
    assert proxy.forwarded_payments == 1
    assert_paid_once(dev_chain, payer, server.pay_to, proxy)


@pytest.mark.parametrize("mode", ["fail_after", "drop_after"])
async def test_lost_answer_after_settlement_is_not_paid_twice(dev_chain, server, proxy_factory, payer, mode):
    proxy = proxy_factory(mode)
    async with X402Client(key_of(payer), POLICY, retry=FAST_RETRY) as client:
        with pytest.raises(PaymentRejected) as caught:
            await client.get(proxy.url + ROUTE)

    rejected = caught.value
    assert rejected.attempts == 2
    assert rejected.error == "invalid_exact_evm_nonce_already_used"  # the server's own reason
    assert rejected.payment.header_value == proxy.payments[0]
    assert proxy.forwarded_payments == 2
    assert_paid_once(dev_chain, payer, server.pay_to, proxy)


async def test_cli_retries_with_the_same_payment(
    dev_chain, server, proxy_factory, payer, capsys, monkeypatch
):
    proxy = proxy_factory("drop_before")
    monkeypatch.setenv("X402_PRIVATE_KEY", key_of(payer))
    code = await asyncio.to_thread(
        main, ["--stack", "/nonexistent/stack.json", "pay", proxy.url + ROUTE, "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    report = json.loads(out)
    assert report["payment"]["attempts"] == 2
    assert report["settlement"]["success"] is True
    assert_paid_once(dev_chain, payer, server.pay_to, proxy)
