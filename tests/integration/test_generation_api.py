"""The generation API paid with x402, end to end: the official x402 SDK client pays POST /generate, our
facilitator verifies, the job runs on an in-process worker, the payment is settled on the dev chain's
real USDC when the job completes (and never when it fails), against real PostgreSQL.

Every paid test checks balances on-chain; every refused or failed one checks that nothing moved."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmClientScheme

from client.signing import pay_v2
from resource_server.app import create_app
from resource_server.generation.engine.params import ToolLimits
from resource_server.generation.engine.pricing import StepPrice
from resource_server.generation.engine.service import JobRequest
from resource_server.generation.engine.tools import Step, StepContext, StepOutput, Tool
from resource_server.generation.engine.worker import WorkerConfig
from resource_server.generation.errors import permanent
from resource_server.generation.providers.config import ProviderSettings
from resource_server.generation.tools.echo import echo_tool
from resource_server.generation.webhooks.signing import verify_signature
from resource_server.generation_api.service import GenerationApi
from resource_server.generation_api.settings import GenerationApiSettings
from resource_server.held_payments import load_held
from resource_server.pricing.loader import parse_pricing
from resource_server.runtime import Runtime
from shared.devchain.chain import DevChain
from shared.evm import calls
from shared.x402.codec import decode_model_header, encode_json_header
from shared.x402.models import PaymentRequiredV2, PaymentRequirementsV2, SettleResponse
from tests.fixtures.facilitator import RunningFacilitator
from tests.fixtures.generation import StartReceiver, fast_policy
from tests.fixtures.resource_server import ADMIN_KEY, Served, resource_server_settings, serve_asgi
from tests.support.payments import new_address

pytestmark = pytest.mark.integration

NETWORK = "eip155:84532"
FUNDS = 1_000_000
# refine 0.001 + generate 0.002 x 3 s + postprocess 0.0005 + store 0.0005 = 0.008, plus 20 % markup
MUSIC_3S_PRICE = 9_600
BROKEN_PRICE = 12_000  # 0.01 + 20 %
WEBHOOK_SECRET = "whsec_generation_api_test"
NO_FACILITATOR = "http://127.0.0.1:9"  # for servers whose tests never pay
API_WORKER = replace(
    WorkerConfig(),
    lease_seconds=5.0,
    heartbeat_seconds=0.5,
    poll_seconds=0.05,
    concurrency=2,
    final_lease_seconds=30.0,  # the hook settles on-chain: a facilitator round trip, not a blink
)


# -- a generation server ---------------------------------------------------------------------------------


@dataclass
class GenServer:
    served: Served
    api: GenerationApi
    runtime: Runtime
    http: httpx.AsyncClient
    pay_to: str

    @property
    def url(self) -> str:
        return self.served.url

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(self.url + path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.post(self.url + path, **kwargs)

    async def job(self, job_id: str, token: str) -> dict[str, Any]:
        response = await self.get(f"/jobs/{job_id}", headers={"x-job-token": token})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_job(
        self, job_id: str, token: str, until: Callable[[dict[str, Any]], bool], within: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            view = await self.job(job_id, token)
            if until(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached the expected state: {view}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await self.served.stop()
        await self.http.aclose()


StartGeneration = Callable[..., Awaitable[GenServer]]


class Clock:
    """time.time, shifted on demand: expiring links and stale signatures without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@contextlib.asynccontextmanager
async def generation_servers(dsn: str) -> AsyncIterator[StartGeneration]:
    """Starts resource servers with the generation API on ``dsn``, built as the CLI builds them (with
    test speeds and knobs), and stops them all afterwards."""
    started: list[GenServer] = []

    async def start(
        *,
        facilitator_url: str = NO_FACILITATOR,
        run_worker: bool = True,
        extra_tools: Sequence[Tool] = (),
        clock: Callable[[], float] = time.time,
        provider_settings: ProviderSettings | None = None,
        routes: Sequence[dict[str, Any]] = (),
        **overrides: Any,
    ) -> GenServer:
        pay_to = new_address()
        server = resource_server_settings(
            [facilitator_url], pay_to=pay_to, facilitator_settle_timeout_seconds=30.0
        )
        pricing = parse_pricing(
            {"defaults": {"accepts": [{"network": NETWORK}]}, "routes": list(routes)}, default_pay_to=pay_to
        )
        values: dict[str, Any] = {"accepts": [NETWORK], "webhook_allow": ["127.0.0.0/8"]}
        values.update(overrides)
        api = GenerationApi(
            GenerationApiSettings(**values),
            server,
            pricing,
            run_worker=run_worker,
            extra_tools=extra_tools,
            provider_settings=provider_settings or ProviderSettings(elevenlabs_api_key=None),
            worker_config=API_WORKER,
            webhook_policy=fast_policy(),
            clock=clock,
        )
        app = create_app(server, dsn, pricing, handlers=[], generation=api)
        served = await serve_asgi(app)
        running = GenServer(served, api, app.state.runtime, httpx.AsyncClient(timeout=60.0), pay_to)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            await running.stop()


@pytest.fixture
async def start_generation(fresh_database: str) -> AsyncIterator[StartGeneration]:
    async with generation_servers(fresh_database) as start:
        yield start


def broken_tool() -> Tool:
    """A tool whose provider refuses every request for good: its jobs fail, permanently."""

    async def refuse(ctx: StepContext) -> StepOutput:
        raise permanent("the provider refused the request: account suspended", code="provider_refused")

    return Tool("broken", (Step("generate", refuse, StepPrice(Decimal("0.01"))),), description="always fails")


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


def sdk_client(payer: LocalAccount) -> x402HttpxClient:
    client = x402Client()
    client.register(NETWORK, ExactEvmClientScheme(EthAccountSigner(Account.from_key(payer.key))))
    return x402HttpxClient(client, timeout=60.0)


def authorization_used(chain: DevChain, payload: dict[str, Any]) -> bool:
    auth = payload["payload"]["authorization"]
    data = chain.rpc.eth_call(
        chain.usdc.address, calls.authorization_state(auth["from"], bytes.fromhex(auth["nonce"][2:]))
    )
    return calls.decode_bool(data)


async def stored_payment(gen: GenServer, challenge_id: str) -> dict[str, Any]:
    held = await load_held(gen.runtime.store, challenge_id)
    assert held is not None
    return held.payment.payload


async def audit(gen: GenServer, challenge_id: str) -> list[dict[str, Any]]:
    response = await gen.get(
        "/audit", params={"challenge": challenge_id}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def challenge_id(requirement: PaymentRequirementsV2) -> str:
    assert requirement.extra is not None
    return str(requirement.extra["challengeId"])


async def challenge_status(gen: GenServer, requirement: PaymentRequirementsV2) -> str | None:
    challenge = await gen.runtime.store.get(challenge_id(requirement))
    return challenge.status.value if challenge is not None else None


def music(seconds: float = 3, **delivery: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tool": "music",
        "inputs": {"prompt": "calm piano at dusk", "duration_seconds": seconds},
    }
    if delivery:
        body["delivery"] = delivery
    return body


def settled(view: dict[str, Any]) -> bool:
    return bool(view["status"] == "completed" and view["payment"]["settlement_status"] == "settled")


# -- end to end ------------------------------------------------------------------------------------------


async def test_sdk_pays_a_generation_settled_only_once_the_job_completes(
    dev_chain, facilitator: RunningFacilitator, start_generation, payer
):
    gen = await start_generation(facilitator_url=facilitator.url)

    async with sdk_client(payer) as http:
        response = await http.post(gen.url + "/generate", json=music(3))

    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id, token = accepted["id"], accepted["job_token"]
    assert response.headers["location"] == f"{gen.url}/jobs/{job_id}"
    assert accepted["links"]["self"] == f"{gen.url}/jobs/{job_id}"
    assert accepted["price"]["total"] == "0.009600"
    # Verified and held, not settled: the payment response says so, and names no transaction yet.
    deferred = decode_model_header(response.headers["payment-response"], SettleResponse)
    assert deferred.success is False and deferred.error_reason == "settlement_deferred"
    assert deferred.transaction == "" and deferred.payer == payer.address
    challenge_id = accepted["payment"]["challenge_id"]
    assert accepted["payment"]["settlement_status"] in ("held", "settled")

    view = await gen.wait_job(job_id, token, settled)
    assert view["progress"] == 1 and view["status_text"] == "completed"
    assert view["timings"]["total_seconds"] > 0 and view["finished_at"] is not None
    tx = view["payment"]["tx_hash"]
    # The receipt link names the payment by its authorization nonce, as a batched settlement (one transaction
    # carrying several payments) needs, and the facilitator answers it with that very payment's receipt.
    nonce = (await stored_payment(gen, challenge_id))["payload"]["authorization"]["nonce"].lower()
    assert view["payment"]["nonce"] == nonce
    assert view["payment"]["receipt_url"] == f"{facilitator.url}/receipt/{tx}?nonce={nonce}"
    receipt = await gen.http.get(view["payment"]["receipt_url"])
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["receipt"]["status"] == "confirmed" and receipt.json()["receipt"]["nonce"] == nonce

    # The WAV, by the signed link (no token) and by the token: the requested duration.
    signed = await gen.http.get(view["links"]["result"])
    assert signed.status_code == 200 and signed.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(signed.content), "rb") as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(3.0, abs=0.01)
    by_token = await gen.get(f"/jobs/{job_id}/result", params={"token": token})
    assert by_token.content == signed.content

    # On-chain: the payee got exactly the price, the payer paid exactly once.
    assert dev_chain.balance_of(gen.pay_to) == MUSIC_3S_PRICE
    assert dev_chain.balance_of(payer.address) == FUNDS - MUSIC_3S_PRICE
    assert authorization_used(dev_chain, await stored_payment(gen, challenge_id))
    trail = await audit(gen, challenge_id)
    events = [e["event"] for e in trail]
    assert events.index("settlement_deferred") < events.index("settled")
    [settle] = [e for e in trail if e["event"] == "settled"]
    assert settle["transaction"] == tx.lower() and settle["detail"]["jobId"] == job_id


async def test_sdk_webhook_delivery_gets_a_signed_final_event(
    dev_chain, facilitator, start_generation, start_receiver: StartReceiver, payer
):
    receiver, hook = await start_receiver()
    gen = await start_generation(facilitator_url=facilitator.url)

    async with sdk_client(payer) as http:
        response = await http.post(
            gen.url + "/generate",
            json=music(2, mode="webhook", url=f"{hook.url}/hook", secret=WEBHOOK_SECRET),
        )
    assert response.status_code == 202, response.text
    job_id, token = response.json()["id"], response.json()["job_token"]

    await asyncio.wait_for(receiver.arrived.wait(), 30)
    [delivery] = receiver.received
    assert verify_signature(WEBHOOK_SECRET, delivery.headers["x-signature"], delivery.body)
    assert not verify_signature("another-secret-entirely", delivery.headers["x-signature"], delivery.body)
    event = orjson.loads(delivery.body)
    assert event["type"] == "job.completed" and delivery.headers["x-event-type"] == "job.completed"
    assert event["id"] == delivery.headers["x-event-id"]
    assert event["data"]["job"]["id"] == job_id and event["data"]["job"]["result"]["artifacts"]
    assert "webhook_secret" not in delivery.body.decode()

    await gen.wait_job(job_id, token, settled)
    assert dev_chain.balance_of(gen.pay_to) == 7_200  # 2 s: (0.001 + 0.004 + 0.0005 + 0.0005) x 1.2


async def test_a_failed_job_settles_nothing_and_says_why(dev_chain, facilitator, start_generation, payer):
    gen = await start_generation(facilitator_url=facilitator.url, extra_tools=[broken_tool()])

    async with sdk_client(payer) as http:
        response = await http.post(
            gen.url + "/generate", json={"tool": "broken", "inputs": {"prompt": "x", "duration_seconds": 1}}
        )
    assert response.status_code == 202, response.text
    job_id, token = response.json()["id"], response.json()["job_token"]

    view = await gen.wait_job(
        job_id, token, lambda v: v["status"] == "failed" and v["payment"]["settlement_status"] == "released"
    )
    assert view["failure"] == {
        "category": "permanent",
        "code": "provider_refused",
        "message": "the provider refused the request: account suspended",
        "step": "generate",
    }
    assert view["payment"]["tx_hash"] is None and view["payment"]["receipt_url"] is None
    assert "result" not in view["links"]
    result = await gen.get(f"/jobs/{job_id}/result", headers={"x-job-token": token})
    assert result.status_code == 409 and result.json()["error"] == "job_not_completed"

    assert dev_chain.balance_of(payer.address) == FUNDS
    assert dev_chain.balance_of(gen.pay_to) == 0
    challenge_id = view["payment"]["challenge_id"]
    assert not authorization_used(dev_chain, await stored_payment(gen, challenge_id))
    released = [e for e in await audit(gen, challenge_id) if e["event"] == "released"]
    assert released[0]["toStatus"] == "released" and released[0]["detail"]["reason"] == "job_failed"


async def test_settle_on_accept_settles_before_the_job_runs(dev_chain, facilitator, start_generation, payer):
    gen = await start_generation(
        facilitator_url=facilitator.url, extra_tools=[echo_tool()], settle_on_accept=["echo"]
    )
    tools = {t["id"]: t for t in (await gen.get("/tools")).json()["tools"]}
    assert tools["echo"]["payment"]["settlement"] == "on_accept"
    assert tools["music"]["payment"]["settlement"] == "on_completion"

    async with sdk_client(payer) as http:
        response = await http.post(gen.url + "/generate", json={"tool": "echo", "inputs": {"message": "hi"}})

    assert response.status_code == 202, response.text
    paid = decode_model_header(response.headers["payment-response"], SettleResponse)
    assert paid.success and paid.transaction
    assert dev_chain.balance_of(gen.pay_to) == 1_000  # $0.001, no markup
    body = response.json()
    view = await gen.wait_job(body["id"], body["job_token"], lambda v: v["status"] == "completed")
    assert view["result"] == {"message": "hi"}
    assert (
        view["payment"]["settlement_status"] == "settled" and view["payment"]["tx_hash"] == paid.transaction
    )
    nonce = (await stored_payment(gen, body["payment"]["challenge_id"]))["payload"]["authorization"]["nonce"]
    assert (
        view["payment"]["receipt_url"]
        == f"{facilitator.url}/receipt/{paid.transaction}?nonce={nonce.lower()}"
    )


# -- refused before payment ------------------------------------------------------------------------------


async def test_a_full_queue_answers_503_with_retry_after_and_issues_no_challenge(start_generation):
    gen = await start_generation(run_worker=False, max_queued=1)
    await gen.api.engine.submit_job(
        JobRequest("music", {"prompt": "first", "duration_seconds": 1}, payer="0xp")
    )
    challenges = await gen.runtime.store.pool.fetchval("SELECT count(*) FROM rs_challenges")

    response = await gen.post("/generate", json=music(1))

    assert response.status_code == 503, response.text
    assert response.json()["error"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1
    assert "payment-required" not in response.headers
    assert await gen.runtime.store.pool.fetchval("SELECT count(*) FROM rs_challenges") == challenges


async def test_the_per_payer_limit_answers_429_before_the_payment_is_touched(
    dev_chain, facilitator, start_generation, payer
):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False, max_active_per_payer=1)
    await gen.api.engine.submit_job(
        JobRequest("music", {"prompt": "first", "duration_seconds": 1}, payer=payer.address)
    )
    challenge = await gen.post("/generate", json=music(1))
    assert challenge.status_code == 402  # the payer is not known until a payment names them
    required = decode_model_header(challenge.headers["payment-required"], PaymentRequiredV2)
    payment = pay_v2(payer.key.hex(), payer.address, required.accepts[0])

    response = await gen.post(
        "/generate", json=music(1), headers={"PAYMENT-SIGNATURE": encode_json_header(payment)}
    )

    assert response.status_code == 429, response.text
    assert response.json()["error"] == "payer_concurrency" and int(response.headers["retry-after"]) >= 1
    assert await challenge_status(gen, required.accepts[0]) == "issued"  # neither verified nor claimed
    assert not authorization_used(dev_chain, payment.to_wire())
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_a_cheap_quote_cannot_pay_for_longer_music(dev_chain, facilitator, start_generation, payer):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    quote = await gen.post("/tools/music/quote", json={"inputs": {"prompt": "x", "duration_seconds": 1}})
    assert quote.status_code == 200, quote.text
    cheap = PaymentRequiredV2.model_validate(quote.json()["paymentRequired"]).accepts[0]
    payment = pay_v2(payer.key.hex(), payer.address, cheap)

    response = await gen.post(
        "/generate", json=music(60), headers={"PAYMENT-SIGNATURE": encode_json_header(payment)}
    )

    assert response.status_code == 402, response.text
    assert response.json()["error"] == "challenge_mismatch"
    fresh = decode_model_header(response.headers["payment-required"], PaymentRequiredV2)
    assert int(fresh.accepts[0].amount) > int(cheap.amount)
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_an_authorization_too_short_for_the_job_is_refused_untouched(
    dev_chain, facilitator, start_generation, payer
):
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    challenge = await gen.post("/generate", json=music(1))
    required = decode_model_header(challenge.headers["payment-required"], PaymentRequiredV2).accepts[0]
    assert required.max_timeout_seconds == 900 + 60 + 30  # longest job + settle margin + signing grace
    # Signed "long ago": validBefore is only 40 s away, the job may take 900 s.
    payment = pay_v2(payer.key.hex(), payer.address, required, now=int(time.time()) - 950)

    response = await gen.post(
        "/generate", json=music(1), headers={"PAYMENT-SIGNATURE": encode_json_header(payment)}
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "authorization_window_too_short"
    assert await challenge_status(gen, required) == "issued"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "invalid_request"),
        (b"[]", 400, "invalid_request"),
        (orjson.dumps({"tool": "music", "inputs": {}, "extra": 1}), 400, "invalid_request"),
        (orjson.dumps({"tool": "nope", "inputs": {}}), 404, "unknown_tool"),
        (
            orjson.dumps({"tool": "music", "inputs": {"prompt": "x", "duration_seconds": 500}}),
            400,
            "duration_too_long",
        ),
        (
            orjson.dumps({"tool": "music", "inputs": {"prompt": "x", "duration_seconds": 5, "bpm": 90}}),
            400,
            "invalid_inputs",
        ),
        (orjson.dumps({**music(1), "delivery": {"mode": "email"}}), 400, "invalid_delivery"),
        (
            orjson.dumps({**music(1), "delivery": {"mode": "webhook", "url": "http://x", "secret": "short"}}),
            400,
            "invalid_delivery",
        ),
        (
            orjson.dumps(
                {
                    **music(1),
                    "delivery": {"mode": "webhook", "url": "http://169.254.169.254/", "secret": "s" * 20},
                }
            ),
            400,
            "invalid_webhook",
        ),
    ],
)
async def test_bad_requests_get_a_precise_reason_and_no_challenge(start_generation, body, status, error):
    gen = await start_generation(run_worker=False)
    response = await gen.post("/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["message"]
    assert "payment-required" not in response.headers


async def test_an_unpaid_generate_gets_a_v2_and_v1_challenge_for_the_quoted_price(start_generation):
    gen = await start_generation(run_worker=False)
    response = await gen.post("/generate", json=music(3))
    assert response.status_code == 402
    v2 = decode_model_header(response.headers["payment-required"], PaymentRequiredV2)
    [requirement] = v2.accepts
    assert requirement.amount == str(MUSIC_3S_PRICE) and requirement.pay_to == gen.pay_to
    assert v2.resource.url == f"{gen.url}/generate"
    v1 = response.json()
    assert v1["x402Version"] == 1 and v1["accepts"][0]["maxAmountRequired"] == str(MUSIC_3S_PRICE)
    # The quote of the same inputs prices them identically.
    quote = await gen.post(
        "/tools/music/quote", json={"inputs": {"prompt": "other words", "duration_seconds": 3}}
    )
    assert quote.json()["amounts"][0]["amount"] == str(MUSIC_3S_PRICE)
    assert quote.json()["paramsHash"] == (await gen.runtime.store.get(v1["challengeId"])).params_hash


def _b64(value: str) -> dict[str, Any]:
    return dict(orjson.loads(base64.b64decode(value)))


async def test_a_job_submitted_twice_with_one_payment_is_one_job(
    dev_chain, facilitator, start_generation, payer
):
    # The identical resubmission is a client retrying after a lost 202 (test_generation_api_replay.py).
    gen = await start_generation(facilitator_url=facilitator.url, run_worker=False)
    challenge = await gen.post("/generate", json=music(1))
    required = decode_model_header(challenge.headers["payment-required"], PaymentRequiredV2).accepts[0]
    header = {"PAYMENT-SIGNATURE": encode_json_header(pay_v2(payer.key.hex(), payer.address, required))}

    first = await gen.post("/generate", json=music(1), headers=header)
    again = await gen.post("/generate", json=music(1), headers=header)

    assert first.status_code == 202, first.text
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    job = await gen.api.engine.get_job(UUID(first.json()["id"]))
    assert job is not None and job.payment_challenge_id == challenge_id(required)
    assert _b64(first.headers["payment-response"])["errorReason"] == "settlement_deferred"


# -- settlement edge cases -------------------------------------------------------------------------------


async def paid_generate(gen: GenServer, payer: LocalAccount, body: dict[str, Any]) -> dict[str, Any]:
    """Pays ``body``'s challenge with our own signer (the SDK path is covered above) and returns the 202."""
    challenge = await gen.post("/generate", json=body)
    assert challenge.status_code == 402, challenge.text
    required = decode_model_header(challenge.headers["payment-required"], PaymentRequiredV2).accepts[0]
    payment = pay_v2(payer.key.hex(), payer.address, required)
    response = await gen.post(
        "/generate", json=body, headers={"PAYMENT-SIGNATURE": encode_json_header(payment)}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def gated_tool(name: str, gate: asyncio.Event, *, max_job_seconds: float = 900.0) -> Tool:
    """One step that waits for the test to open ``gate``."""

    async def wait(ctx: StepContext) -> StepOutput:
        await ctx.report(0.5, "waiting for the gate")
        await gate.wait()
        return {"opened": True}

    return Tool(
        name,
        (Step("wait", wait, StepPrice(Decimal("0.01"))),),
        limits=replace(ToolLimits(), max_job_seconds=max_job_seconds),
    )


async def test_a_job_that_runs_out_of_time_fails_as_timeout_and_is_not_settled(
    dev_chain, facilitator, start_generation, payer
):
    gen = await start_generation(
        facilitator_url=facilitator.url,
        extra_tools=[gated_tool("slow", asyncio.Event(), max_job_seconds=1.0)],
    )
    tools = {t["id"]: t for t in (await gen.get("/tools")).json()["tools"]}
    assert tools["slow"]["payment"]["maxTimeoutSeconds"] == 1 + 60 + 30

    accepted = await paid_generate(
        gen, payer, {"tool": "slow", "inputs": {"prompt": "x", "duration_seconds": 1}}
    )

    assert accepted["deadline_at"] is not None
    view = await gen.wait_job(
        accepted["id"],
        accepted["job_token"],
        lambda v: v["status"] == "failed" and v["payment"]["settlement_status"] == "released",
    )
    assert view["failure"]["category"] == "timeout" and view["failure"]["code"] == "deadline_exceeded"
    assert dev_chain.balance_of(payer.address) == FUNDS
    assert not authorization_used(dev_chain, await stored_payment(gen, accepted["payment"]["challenge_id"]))


async def test_a_payment_about_to_expire_when_the_job_completes_is_released_not_submitted(
    dev_chain, facilitator, start_generation, payer
):
    gate, clock = asyncio.Event(), Clock()
    gen = await start_generation(
        facilitator_url=facilitator.url, extra_tools=[gated_tool("gated", gate)], clock=clock
    )
    accepted = await paid_generate(
        gen, payer, {"tool": "gated", "inputs": {"prompt": "x", "duration_seconds": 1}}
    )

    clock.offset = 990 - 10  # by the server's clock, 10 s of the authorization are left: too few to settle
    gate.set()
    view = await gen.wait_job(
        accepted["id"], accepted["job_token"], lambda v: v["payment"]["settlement_status"] == "released"
    )

    assert view["status"] == "completed"
    withheld = await gen.get(f"/jobs/{accepted['id']}/result", headers={"x-job-token": accepted["job_token"]})
    assert withheld.status_code == 409 and withheld.json()["error"] == "payment_failed"
    assert dev_chain.balance_of(payer.address) == FUNDS
    released = [e for e in await audit(gen, accepted["payment"]["challenge_id"]) if e["event"] == "released"]
    assert released[0]["detail"]["reason"] == "authorization_expiring"


async def test_settlement_pending_at_completion_is_finished_by_the_reconciler(
    dev_chain, start_facilitator, start_generation, payer
):
    # A facilitator that never waits for receipts: every settle answers settlement_pending.
    impatient = await start_facilitator(network={"receipt_timeout_seconds": 0.0})
    gen = await start_generation(facilitator_url=impatient.url)

    accepted = await paid_generate(gen, payer, music(1))
    view = await gen.wait_job(accepted["id"], accepted["job_token"], settled)

    cid = accepted["payment"]["challenge_id"]
    events = [e["event"] for e in await audit(gen, cid)]
    assert "settlement_pending" in events and events[-1] == "settled", events
    assert view["payment"]["tx_hash"]
    assert dev_chain.balance_of(gen.pay_to) == 4_800  # (0.001 + 0.002 + 0.0005 + 0.0005) x 1.2
    job = await gen.api.engine.get_job(UUID(accepted["id"]))
    assert job is not None and job.settlement_status == "settled"  # brought up to date on read
