"""X402Client against scripted servers (httpx.MockTransport): the header it builds, what it echoes, how it
retries and what it refuses. The real servers and chain are in tests/integration/test_client_pay*.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from client.challenge import parse_challenge
from client.errors import PaymentDeclined, PaymentRejected, ProtocolError, ServerUnreachable
from client.payer import PaidResponse, X402Client
from client.payment import SignedPayment, sign_payment
from client.retry import RetryPolicy
from client.selection import SpendingPolicy
from shared.evm.eip712 import Authorization, authorization_digest
from shared.evm.signatures import parse_ecdsa, parse_hex, recover_signer

KEY = "0x" + "42" * 32
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
URL = "http://shop.test/item"
POLICY = SpendingPolicy(max_usd=Decimal("0.05"))
TX = "0x" + "cd" * 32


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def unb64(value: str) -> Any:
    return json.loads(base64.b64decode(value))


OPTION = {
    "scheme": "exact",
    "network": "eip155:84532",
    "amount": "10000",
    "asset": USDC,
    "payTo": PAY_TO,
    "maxTimeoutSeconds": 60,
    "extra": {"name": "USDC", "version": "2", "challengeId": "ch-7f3a", "nested": {"k": [1, 2]}},
    "notInTheSpec": True,
}
CHALLENGE = {
    "x402Version": 2,
    "error": "Payment required",
    "resource": {"url": URL, "description": "an item"},
    "accepts": [OPTION],
    "extensions": {"bazaar": {"info": {"x": 1}}},
}
SETTLED = {"success": True, "transaction": TX, "network": "eip155:84532", "payer": "0x0"}


def payment_required(document: Any = CHALLENGE) -> httpx.Response:
    return httpx.Response(402, headers={"PAYMENT-REQUIRED": b64(document)}, json={})


def served(**headers: str) -> httpx.Response:
    return httpx.Response(200, json={"item": "yours"}, headers={"PAYMENT-RESPONSE": b64(SETTLED), **headers})


class Script:
    """Answers each request with the next step; records every request."""

    def __init__(
        self, *steps: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]
    ) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step

    def payment_headers(self, name: str = "payment-signature") -> list[str | None]:
        return [r.headers.get(name) for r in self.requests]


async def no_sleep(seconds: float) -> None:
    pass


def sent(result: PaidResponse) -> SignedPayment:
    assert result.payment is not None, "no payment was made"
    return result.payment


def client(script: Script, policy: SpendingPolicy = POLICY, **kwargs: Any) -> X402Client:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return X402Client(KEY, policy, http=http, sleep=no_sleep, **kwargs)


async def test_pays_v2_echoing_the_chosen_option_verbatim():
    script = Script(payment_required(), served())
    result = await client(script).get(URL)

    assert result.response.status_code == 200 and result.paid
    assert result.settlement is not None and result.settlement.transaction == TX
    assert result.attempts == 1
    assert script.payment_headers() == [None, sent(result).header_value]
    payload = unb64(sent(result).header_value)
    assert payload["x402Version"] == 2
    assert payload["accepted"] == OPTION  # unknown keys, in extra and at top level, survive
    assert payload["resource"] == CHALLENGE["resource"]
    assert payload["extensions"] == CHALLENGE["extensions"]


async def test_signature_recovers_to_the_payer_over_the_chosen_terms():
    script = Script(payment_required(), served())
    result = await client(script).get(URL)
    auth = unb64(sent(result).header_value)["payload"]["authorization"]
    assert (auth["to"], auth["value"]) == (PAY_TO, "10000")
    now = time.time()
    assert int(auth["validAfter"]) < now < int(auth["validBefore"]) <= now + 60
    digest = authorization_digest(
        Authorization(
            from_=auth["from"],
            to=auth["to"],
            value=int(auth["value"]),
            valid_after=int(auth["validAfter"]),
            valid_before=int(auth["validBefore"]),
            nonce=parse_hex(auth["nonce"], what="nonce"),
        ),
        name="USDC",
        version="2",
        chain_id=84532,
        token=USDC,
    )
    signature = parse_hex(unb64(sent(result).header_value)["payload"]["signature"], what="signature")
    assert recover_signer(digest, parse_ecdsa(signature)) == auth["from"] == sent(result).payer


async def test_pays_v1_with_x_payment_and_reads_x_payment_response():
    v1 = {
        "x402Version": 1,
        "error": "X-PAYMENT header is required",
        "accepts": [
            {
                "scheme": "exact",
                "network": "base-sepolia",
                "maxAmountRequired": "10000",
                "asset": USDC,
                "payTo": PAY_TO,
                "resource": URL,
                "maxTimeoutSeconds": 60,
                "extra": {"name": "USDC", "version": "2"},
            }
        ],
    }
    settled_v1 = {**SETTLED, "network": "base-sepolia"}
    script = Script(
        httpx.Response(402, json=v1),
        httpx.Response(200, json={}, headers={"X-PAYMENT-RESPONSE": b64(settled_v1)}),
    )
    result = await client(script).get(URL)
    assert sent(result).header_name == "X-PAYMENT"
    assert "payment-signature" not in script.requests[1].headers
    payload = unb64(script.requests[1].headers["x-payment"])
    assert (payload["x402Version"], payload["scheme"], payload["network"]) == (1, "exact", "base-sepolia")
    assert result.settlement is not None and result.settlement.network == "base-sepolia"


async def test_free_resource_is_returned_without_paying():
    script = Script(httpx.Response(200, text="free"))
    result = await client(script).get(URL)
    assert not result.paid and result.response.text == "free" and len(script.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.Response(502),
        httpx.Response(503, headers={"Retry-After": "1"}),
    ],
)
async def test_network_failure_resends_the_same_payment(failure):
    script = Script(payment_required(), failure, served())
    result = await client(script).get(URL)
    assert result.response.status_code == 200 and result.attempts == 2
    first, second = script.payment_headers()[1:]
    assert first == second == sent(result).header_value


async def test_request_body_and_headers_are_resent_unchanged():
    script = Script(payment_required(), httpx.ConnectError("x"), served())
    await client(script).post(URL, json={"q": 1}, headers={"X-Trace": "t1"})
    bodies = {r.content for r in script.requests}
    assert bodies == {b'{"q":1}'}
    assert {r.headers["x-trace"] for r in script.requests} == {"t1"}
    assert {r.method for r in script.requests} == {"POST"}


async def test_retries_are_bounded_and_the_payment_is_reported():
    script = Script(payment_required(), *[httpx.ConnectError("down")] * 3)
    with pytest.raises(ServerUnreachable, match=r"after 3 attempt") as caught:
        await client(script, retry=RetryPolicy(attempts=3)).get(URL)
    assert caught.value.payment is not None and caught.value.attempts == 3
    assert len(set(script.payment_headers()[1:])) == 1


async def test_persistent_5xx_is_returned_after_the_budget():
    script = Script(payment_required(), httpx.Response(502), httpx.Response(502))
    result = await client(script, retry=RetryPolicy(attempts=2)).get(URL)
    assert result.response.status_code == 502 and result.attempts == 2


async def test_no_retry_that_would_land_after_valid_before():
    short = {
        **CHALLENGE,
        "accepts": [{**OPTION, "maxTimeoutSeconds": 7}],
    }  # validBefore - 6 s margin ≈ now + 1
    script = Script(payment_required(short), httpx.Response(503))
    result = await client(script, retry=RetryPolicy(attempts=5, backoff_seconds=2.0)).get(URL)
    assert result.response.status_code == 503 and result.attempts == 1


async def test_unpaid_request_is_not_retried():
    script = Script(httpx.ConnectError("down"))
    with pytest.raises(ServerUnreachable) as caught:
        await client(script).get(URL)
    assert caught.value.payment is None and len(script.requests) == 1


async def test_second_402_is_reported_not_paid_again():
    again = {**CHALLENGE, "error": "invalid_exact_evm_insufficient_balance"}
    script = Script(payment_required(), payment_required(again))
    with pytest.raises(PaymentRejected, match=r"^invalid_exact_evm_insufficient_balance$") as caught:
        await client(script).get(URL)
    assert caught.value.attempts == 1 and len(script.requests) == 2


async def test_failed_settlement_reason_is_reported():
    failed = {
        "success": False,
        "errorReason": "invalid_exact_evm_transaction_failed",
        "network": "eip155:84532",
    }
    script = Script(
        payment_required(), httpx.Response(402, json={}, headers={"PAYMENT-RESPONSE": b64(failed)})
    )
    with pytest.raises(PaymentRejected) as caught:
        await client(script).get(URL)
    assert caught.value.error == "invalid_exact_evm_transaction_failed"
    assert caught.value.settlement is not None and caught.value.settlement.success is False


async def test_over_limit_declines_without_sending_a_payment():
    dear = {**CHALLENGE, "accepts": [{**OPTION, "amount": "50001"}]}
    script = Script(payment_required(dear))
    with pytest.raises(PaymentDeclined, match=r"exceeds the limit of \$0.05") as caught:
        await client(script).get(URL)
    assert caught.value.refusal.code == "amount_over_limit"
    assert len(script.requests) == 1


async def test_malformed_challenge_is_a_protocol_error():
    script = Script(httpx.Response(402, headers={"PAYMENT-REQUIRED": "%%%"}))
    with pytest.raises(ProtocolError, match="malformed PAYMENT-REQUIRED header"):
        await client(script).get(URL)


async def test_unreadable_settlement_header_does_not_hide_the_response():
    script = Script(payment_required(), httpx.Response(200, text="ok", headers={"PAYMENT-RESPONSE": "%%%"}))
    result = await client(script).get(URL)
    assert result.settlement is None and "malformed PAYMENT-RESPONSE" in (result.settlement_problem or "")


def test_each_signing_uses_a_fresh_nonce():
    challenge = parse_challenge({"PAYMENT-REQUIRED": b64(CHALLENGE)}, b"")
    a = sign_payment(KEY, challenge, challenge.options[0])
    b = sign_payment(KEY, challenge, challenge.options[0])
    assert a.nonce != b.nonce and len(bytes.fromhex(a.nonce[2:])) == 32


def test_retry_delay_doubles_honours_retry_after_and_is_capped():
    policy = RetryPolicy(backoff_seconds=0.5, max_backoff_seconds=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.delay(1, "2") == 2.0
    assert policy.delay(1, "120") == 3.0
    assert policy.delay(1, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.5
