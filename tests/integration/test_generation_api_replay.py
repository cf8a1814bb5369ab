"""A lost 202: the client resends POST /generate with the same signed payment (it never signs a second one),
and gets the job it already paid for, with nothing created or charged twice. Real chain, facilitator and
PostgreSQL, as in test_generation_api.py.

Only the identical payment with the identical request is answered so: other inputs, another delivery or
another payload reusing the nonce are refused as a used payment, as before."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from client.payer import X402Client
from client.retry import RetryPolicy
from client.selection import SpendingPolicy
from client.signing import build_authorization, exact_payload, pay_v2, sign_authorization
from resource_server.generation.tools.echo import echo_tool
from shared.devchain.chain import DevChain
from shared.networks import chain_id_of
from shared.x402.codec import decode_model_header, encode_json_header
from shared.x402.models import PaymentPayloadV2, PaymentRequiredV2, PaymentRequirementsV2, SettleResponse
from tests.fixtures.chain import usdc_transfer_logs
from tests.integration.test_generation_api import (
    FUNDS,
    GenServer,
    audit,
    music,
    payer,
    settled,
    start_generation,
)

pytestmark = pytest.mark.integration
__all__ = ["payer", "start_generation"]  # fixtures, shared with test_generation_api

MUSIC_1S_PRICE = 4_800  # (0.001 + 0.002 + 0.0005 + 0.0005) x 1.2
FAST_RETRY = RetryPolicy(attempts=3, backoff_seconds=0.05)


async def challenge_for(gen: GenServer, body: dict[str, Any]) -> PaymentRequirementsV2:
    response = await gen.post("/generate", json=body)
    assert response.status_code == 402, response.text
    return decode_model_header(response.headers["payment-required"], PaymentRequiredV2).accepts[0]


def signature_header(payment: PaymentPayloadV2) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_json_header(payment)}


async def count(gen: GenServer, sql: str) -> int:
    return int(await gen.runtime.store.pool.fetchval(sql))


async def jobs(gen: GenServer) -> int:
    return await count(gen, "SELECT count(*) FROM generation_jobs")


async def claimed(gen: GenServer) -> int:
    """Payments claimed (held, settled or released): one per payment, whatever was resent."""
    return await count(gen, "SELECT count(*) FROM rs_payments")


def transfers_to(chain: DevChain, pay_to: str) -> list[int]:
    return [int(log["data"], 16) for log in usdc_transfer_logs(chain, pay_to)]


def deferred_answer(response: httpx.Response) -> SettleResponse:
    return decode_model_header(response.headers["payment-response"], SettleResponse)


async def test_a_resent_payment_gets_the_same_job_and_is_charged_once(
    dev_chain, facilitator, start_generation, payer: LocalAccount
):
    gen = await start_generation(facilitator_url=facilitator.url)
    required = await challenge_for(gen, music(1))
    header = signature_header(pay_v2(payer.key.hex(), payer.address, required))

    first = await gen.post("/generate", json=music(1), headers=header)
    assert first.status_code == 202, first.text
    # The 202 is lost; the client sends the very same request and payment again.
    again = await gen.post("/generate", json=music(1), headers=header)

    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert "Idempotent-Replayed" in again.headers["access-control-expose-headers"]
    one, two = first.json(), again.json()
    assert two["id"] == one["id"] and two["job_token"] == one["job_token"]
    assert two["links"]["self"] == one["links"]["self"] and two["links"]["events"] == one["links"]["events"]
    assert again.headers["location"] == first.headers["location"] == one["links"]["self"]
    assert two["payment"]["challenge_id"] == one["payment"]["challenge_id"]
    assert deferred_answer(again) == deferred_answer(first)
    assert deferred_answer(again).error_reason == "settlement_deferred"
    assert await jobs(gen) == 1 and await claimed(gen) == 1

    view = await gen.wait_job(two["id"], two["job_token"], settled)  # the replayed token works
    # Resent once more after settlement: still that job, still nothing new.
    late = await gen.post("/generate", json=music(1), headers=header)
    assert late.status_code == 202 and late.json()["id"] == one["id"], late.text
    assert late.json()["payment"]["tx_hash"] == view["payment"]["tx_hash"]

    assert transfers_to(dev_chain, gen.pay_to) == [MUSIC_1S_PRICE]
    assert dev_chain.balance_of(payer.address) == FUNDS - MUSIC_1S_PRICE
    assert await jobs(gen) == 1 and await claimed(gen) == 1
    events = [e["event"] for e in await audit(gen, one["payment"]["challenge_id"])]
    assert events.count("verified") == 1 and events.count("settled") == 1
    assert events.count("payment_replayed") == 2


async def test_the_same_payment_for_another_request_is_refused_and_creates_nothing(
    dev_chain, facilitator, start_generation, payer: LocalAccount
):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    required = await challenge_for(gen, music(1))
    header = signature_header(pay_v2(payer.key.hex(), payer.address, required))
    first = await gen.post("/generate", json=music(1), headers=header)
    assert first.status_code == 202, first.text

    other_prompt = {"tool": "music", "inputs": {"prompt": "loud drums", "duration_seconds": 1}}
    longer = music(2)  # another price: another priced-parameter hash
    webhook = music(1, mode="webhook", url="http://127.0.0.1:9/hook", secret="s" * 24)
    for body in (other_prompt, longer, webhook):
        refused = await gen.post("/generate", json=body, headers=header)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"] == "payment_already_used", body
        assert "idempotent-replayed" not in refused.headers

    assert await jobs(gen) == 1 and await claimed(gen) == 1
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_another_payload_reusing_the_nonce_is_refused(
    dev_chain, facilitator, start_generation, payer: LocalAccount
):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    required = await challenge_for(gen, music(1))
    payment = pay_v2(payer.key.hex(), payer.address, required)
    first = await gen.post("/generate", json=music(1), headers=signature_header(payment))
    assert first.status_code == 202, first.text

    # The same nonce, validly signed again with another validBefore: another authorization, same key.
    auth = payment.payload["authorization"]
    resigned = build_authorization(
        payer=payer.address,
        pay_to=required.pay_to,
        value=int(required.amount),
        max_timeout_seconds=required.max_timeout_seconds,
        now=int(auth["validBefore"]) - required.max_timeout_seconds + 1,
        nonce=bytes.fromhex(auth["nonce"][2:]),
    )
    assert required.extra is not None
    signature = sign_authorization(
        payer.key.hex(),
        resigned,
        name=required.extra["name"],
        version=required.extra["version"],
        chain_id=chain_id_of(required.network),
        token=required.asset,
    )
    wire = payment.to_wire()
    variants = [
        {**wire, "payload": exact_payload(resigned, signature)},
        {**wire, "resource": {"url": gen.url + "/generate"}},  # the same signature, another payload
    ]
    for variant in variants:
        response = await gen.post(
            "/generate", json=music(1), headers={"PAYMENT-SIGNATURE": encode_json_header(variant)}
        )
        assert response.status_code == 402, response.text
        assert response.json()["error"] == "payment_already_used"
        assert "idempotent-replayed" not in response.headers

    assert await jobs(gen) == 1 and await claimed(gen) == 1
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_a_resent_payment_is_answered_though_its_own_job_fills_the_payers_slot(
    facilitator, start_generation, payer: LocalAccount
):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False, max_active_per_payer=1)
    required = await challenge_for(gen, music(1))
    header = signature_header(pay_v2(payer.key.hex(), payer.address, required))
    first = await gen.post("/generate", json=music(1), headers=header)
    assert first.status_code == 202, first.text

    again = await gen.post("/generate", json=music(1), headers=header)

    assert again.status_code == 202, again.text  # not 429: the active job is this very payment's
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert await jobs(gen) == 1


async def test_a_payment_resent_while_its_first_request_runs_ends_with_that_job(
    facilitator, start_generation, payer: LocalAccount
):
    # Both copies may pass the replay check before either claims: the loser of the claim is then a replay,
    # answered with the job, or told to retry (503) until the job exists.
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    required = await challenge_for(gen, music(1))
    header = signature_header(pay_v2(payer.key.hex(), payer.address, required))

    answers = await asyncio.gather(*(gen.post("/generate", json=music(1), headers=header) for _ in range(2)))

    for i, answer in enumerate(answers):
        if answer.status_code == 503:
            assert answer.json()["error"] == "payment_in_progress" and answer.headers["retry-after"] == "1"
            await asyncio.sleep(0.2)
            answers[i] = await gen.post("/generate", json=music(1), headers=header)
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == ["", "true"]
    assert await jobs(gen) == 1 and await claimed(gen) == 1


async def test_settled_on_accept_tools_still_refuse_a_resent_payment(
    dev_chain, facilitator, start_generation, payer: LocalAccount
):
    # Not a deferred route: the payment settles with the answer, and a payment unlocks one request.
    gen = await start_generation(
        facilitator_url=facilitator.url, extra_tools=[echo_tool()], settle_on_accept=["echo"]
    )
    body = {"tool": "echo", "inputs": {"message": "hi"}}
    required = await challenge_for(gen, body)
    header = signature_header(pay_v2(payer.key.hex(), payer.address, required))
    first = await gen.post("/generate", json=body, headers=header)
    assert first.status_code == 202, first.text

    again = await gen.post("/generate", json=body, headers=header)

    assert again.status_code == 402 and again.json()["error"] == "payment_already_used", again.text
    assert await jobs(gen) == 1
    assert transfers_to(dev_chain, gen.pay_to) == [1_000]


class LoseFirstPaidAnswer(httpx.AsyncBaseTransport):
    """Sends every request; the first paid one reaches the server, whose answer is then lost, as when the
    connection drops on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.payments: list[str] = []
        self.lost: httpx.Response | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        payment = request.headers.get("payment-signature")
        if payment is None:
            return response
        self.payments.append(payment)
        if self.lost is not None:
            return response
        await response.aread()
        self.lost = response
        raise httpx.ReadError("connection reset before the answer arrived", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_client_retry_after_a_lost_202_ends_with_the_job(
    dev_chain, facilitator, start_generation, payer: LocalAccount
):
    gen = await start_generation(facilitator_url=facilitator.url)
    transport = LoseFirstPaidAnswer()
    policy = SpendingPolicy(max_usd=Decimal("0.05"))

    async with (
        httpx.AsyncClient(transport=transport, timeout=60.0) as http,
        X402Client("0x" + bytes(payer.key).hex(), policy, http=http, retry=FAST_RETRY) as client,
    ):
        result = await client.post(gen.url + "/generate", json=music(1))

    assert transport.lost is not None and transport.lost.status_code == 202  # the server did answer
    assert result.response.status_code == 202, result.response.text
    assert result.attempts == 2 and transport.payments[0] == transport.payments[1]
    assert result.response.headers["idempotent-replayed"] == "true"
    assert result.settlement is not None and result.settlement.error_reason == "settlement_deferred"
    job = result.response.json()
    assert job["id"] == transport.lost.json()["id"] and job["job_token"] == transport.lost.json()["job_token"]

    await gen.wait_job(job["id"], job["job_token"], settled)
    assert transfers_to(dev_chain, gen.pay_to) == [MUSIC_1S_PRICE]
    assert dev_chain.balance_of(payer.address) == FUNDS - MUSIC_1S_PRICE
    assert await jobs(gen) == 1 and await claimed(gen) == 1
    stored = await gen.api.engine.get_job(UUID(job["id"]))
    assert stored is not None and stored.payer == payer.address
