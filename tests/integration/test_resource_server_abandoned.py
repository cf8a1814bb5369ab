"""Claims abandoned in `verified` (the process died after claiming a payment and before recording its
settlement) are resolved by the reconciler: settled when a settle may have been sent, released when the
request never reached settlement, left alone when a job owns them. Real facilitator, chain and database;
every case checks the balances on-chain.

A process death is simulated by an exception no handler catches (a BaseException): the middleware neither
releases nor settles, exactly as if the process had stopped there."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from eth_account.signers.local import LocalAccount
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from resource_server.challenges.matching import Match
from resource_server.challenges.records import PaymentKey
from resource_server.challenges.store import ChallengeStore, ClaimOutcome
from resource_server.facilitator_client import FacilitatorClient
from resource_server.pricing.model import PricingConfig
from resource_server.reasons import ABANDONED_UNSETTLED
from resource_server.reconciler import RecoverableRoutes, SettlementReconciler
from shared.x402.codec import decode_model_header
from shared.x402.models import SettleResponse
from tests.fixtures.facilitator import RunningFacilitator
from tests.fixtures.resource_server import RunningResourceServer, StartResourceServer, pricing_defaults
from tests.integration.test_resource_server import (
    FUNDS,
    ITEM_PRICE,
    authorization_used,
    challenge_of,
    pay_to,
    payer,
    v2_header,
)
from tests.support.payments import new_address

pytestmark = pytest.mark.integration
__all__ = ["pay_to", "payer"]  # fixtures, shared with test_resource_server

NETWORK = "eip155:84532"
PRICE = 1_000
SHORT_WINDOW = 9  # seconds of authorization validity asked by the `after` routes (verify needs >= 6)


class ProcessDied(BaseException):
    """Stands for the process stopping at this point: nothing catches it, nothing is recorded."""


async def crash(request: Request) -> Response:
    raise ProcessDied


async def weather(request: Request) -> Response:
    return JSONResponse({"temperature": 21})


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["id"]})


HANDLERS = [Route("/crash", crash), Route("/weather", weather), Route("/items/{id}", item)]


def pricing_toml(pay_to: str) -> str:
    return (
        pricing_defaults(pay_to, NETWORK)
        + f"""
[[routes]]
path = "/crash"
price = "$0.001"
max_timeout_seconds = {SHORT_WINDOW}

[[routes]]
path = "/weather"
price = "$0.001"
max_timeout_seconds = {SHORT_WINDOW}

[[routes]]
path = "/items/{{id}}"
price = {{ atomic = "{ITEM_PRICE}", token = "USDC" }}
settlement = "before"
[routes.params.id]
type = "integer"
min = 1
"""
    )


async def start(
    start_resource_server: StartResourceServer, facilitator: RunningFacilitator, pay_to: str
) -> Any:
    # The server's own reconciler does the work: abandoned after 1 s, authorizations expired after 1 s.
    rs = await start_resource_server(
        pricing_toml(pay_to),
        facilitator_urls=[facilitator.url],
        handlers=HANDLERS,
        stuck_verified_after_seconds=1.0,
    )
    rs.runtime.reconciler.expiry_margin_seconds = 1.0
    return rs


def die_in_settle(
    monkeypatch: pytest.MonkeyPatch, client: FacilitatorClient, *, after_sending: bool
) -> list[dict[str, Any]]:
    """The next settle call dies, before or after reaching the facilitator; later ones go through."""
    real: Callable[[dict[str, Any], dict[str, Any]], Awaitable[SettleResponse]] = client.settle
    died: list[dict[str, Any]] = []

    async def settle(payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
        if not died:
            died.append(payload)
            if after_sending:
                await real(payload, requirements)
            raise ProcessDied
        return await real(payload, requirements)

    monkeypatch.setattr(client, "settle", settle)
    return died


async def pay_and_die(
    rs: RunningResourceServer, payer: LocalAccount, path: str
) -> tuple[str, dict[str, str]]:
    v2, _ = challenge_of(await rs.get(path))
    payment = v2_header(payer, v2.accepts[0])
    response = await rs.get(path, headers=payment)
    assert response.status_code == 500, response.text  # uvicorn's answer to the "dead" process
    challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    assert await status(rs, challenge_id) == "verified"
    return challenge_id, payment


async def status(rs: RunningResourceServer, challenge_id: str) -> str:
    return str(
        await rs.runtime.store.pool.fetchval("SELECT status FROM rs_challenges WHERE id = $1", challenge_id)
    )


async def wait_status(rs: RunningResourceServer, challenge_id: str, *, within: float) -> str:
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.2) + 1):
        now = await status(rs, challenge_id)
        if now != "verified" or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)
    return await status(rs, challenge_id)


async def test_abandoned_after_policy_claims_wait_for_expiry_then_settle_or_release(
    dev_chain, start_resource_server, facilitator, payer, pay_to, monkeypatch
):
    rs = await start(start_resource_server, facilitator, pay_to)
    # Died in the handler: nothing was served and no settle was ever sent.
    unserved, unserved_payment = await pay_and_die(rs, payer, "/crash")
    # Died during the settle call, after the facilitator received it: the payment is on-chain.
    died = die_in_settle(monkeypatch, rs.runtime.facilitator, after_sending=True)
    settled, settled_payment = await pay_and_die(rs, payer, "/weather")
    assert died and authorization_used(dev_chain, settled_payment["PAYMENT-SIGNATURE"])
    unserved_auth = orjson.loads(base64.b64decode(unserved_payment["PAYMENT-SIGNATURE"]))["payload"]
    valid_before = int(unserved_auth["authorization"]["validBefore"])

    # Past the grace period but not past the authorizations' expiry: settling the unserved one now could
    # charge it, so both wait.
    await asyncio.sleep(1.5)
    assert (await status(rs, unserved), await status(rs, settled)) == ("verified", "verified")

    assert await wait_status(rs, unserved, within=SHORT_WINDOW + 10) == "released"
    assert await wait_status(rs, settled, within=5) == "settled"

    trail = await rs.runtime.store.audit(challenge_id=unserved)
    assert [e.event for e in trail] == ["payment_received", "verified", "released"]
    released = trail[-1]
    assert (
        released.detail["reason"] == ABANDONED_UNSETTLED
        and "nothing was charged" in released.detail["message"]
    )
    assert released.detail["abandoned"]["policy"] == "after"
    assert released.at.timestamp() >= valid_before  # not before the authorization could no longer move money
    assert not authorization_used(dev_chain, unserved_payment["PAYMENT-SIGNATURE"])

    # The facilitator answered the repeat with the first settlement's outcome: the same transaction.
    row = await rs.runtime.store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", settled)
    assert row["tx_hash"] and row["tx_hash"].startswith("0x")
    trail = await rs.runtime.store.audit(challenge_id=settled)
    assert [e.event for e in trail] == ["payment_received", "verified", "settled"]
    assert trail[-1].detail["facilitator"]["transaction"] == row["tx_hash"]

    assert dev_chain.balance_of(payer.address) == FUNDS - PRICE
    assert dev_chain.balance_of(pay_to) == PRICE
    metrics = rs.runtime.metrics
    assert metrics.registry.get_sample_value("x402_rs_stuck_resolved_total", {"status": "released"}) == 1
    assert metrics.registry.get_sample_value("x402_rs_stuck_resolved_total", {"status": "settled"}) == 1


async def test_abandoned_before_policy_claims_are_settled_again(
    dev_chain, start_resource_server, facilitator, payer, pay_to, monkeypatch
):
    rs = await start(start_resource_server, facilitator, pay_to)
    die_in_settle(monkeypatch, rs.runtime.facilitator, after_sending=True)
    sent, sent_payment = await pay_and_die(rs, payer, "/items/7")
    die_in_settle(monkeypatch, rs.runtime.facilitator, after_sending=False)
    unsent, unsent_payment = await pay_and_die(rs, payer, "/items/8")
    assert authorization_used(dev_chain, sent_payment["PAYMENT-SIGNATURE"])
    assert not authorization_used(dev_chain, unsent_payment["PAYMENT-SIGNATURE"])

    # A settle may have been sent right after the claim: no wait for the (300 s) authorization window.
    assert await wait_status(rs, sent, within=10) == "settled"
    assert await wait_status(rs, unsent, within=10) == "settled"
    for challenge_id, payment in ((sent, sent_payment), (unsent, unsent_payment)):
        trail = await rs.runtime.store.audit(challenge_id=challenge_id)
        assert [e.event for e in trail] == ["payment_received", "verified", "settled"]
        assert trail[-1].detail["abandoned"]["policy"] == "before"
        assert authorization_used(dev_chain, payment["PAYMENT-SIGNATURE"])
    # Each authorization moved money once, the one settled twice included.
    assert dev_chain.balance_of(payer.address) == FUNDS - 2 * ITEM_PRICE
    assert dev_chain.balance_of(pay_to) == 2 * ITEM_PRICE


def lose_next_transition(monkeypatch: pytest.MonkeyPatch, store: ChallengeStore) -> list[str]:
    """The database connection drops on the next state change (the one after settling); later ones pass."""
    real = store.transition
    lost: list[str] = []

    async def transition(challenge_id: str, *args: Any, **kwargs: Any) -> bool:
        if not lost:
            lost.append(challenge_id)
            raise OSError("connection to the database lost")
        return await real(challenge_id, *args, **kwargs)

    monkeypatch.setattr(store, "transition", transition)
    return lost


async def test_a_settlement_the_database_did_not_take_is_served_and_recorded_later(
    dev_chain, start_resource_server, facilitator, payer, pay_to, monkeypatch
):
    rs = await start(start_resource_server, facilitator, pay_to)
    answers: dict[str, tuple[str, SettleResponse]] = {}
    for path in ("/weather", "/items/7"):  # settled after the handler, and before it
        v2, _ = challenge_of(await rs.get(path))
        payment = v2_header(payer, v2.accepts[0])
        challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
        lost = lose_next_transition(monkeypatch, rs.runtime.store)
        response = await rs.get(path, headers=payment)
        assert lost == [challenge_id]
        # Settled on-chain: the payer gets what they paid for, with its receipt; not a 503 "nothing charged".
        assert response.status_code == 200, response.text
        settled = decode_model_header(response.headers["payment-response"], SettleResponse)
        assert settled.success and settled.transaction.startswith("0x")
        assert authorization_used(dev_chain, payment["PAYMENT-SIGNATURE"])
        # Left verified, as an abandoned claim whose settle went out: the reconciler settles it again.
        assert await status(rs, challenge_id) == "verified"
        answers[path] = (challenge_id, settled)
        monkeypatch.undo()

    assert await wait_status(rs, answers["/items/7"][0], within=10) == "settled"
    assert await wait_status(rs, answers["/weather"][0], within=SHORT_WINDOW + 10) == "settled"
    for challenge_id, settled in answers.values():
        row = await rs.runtime.store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", challenge_id)
        assert row["tx_hash"] == settled.transaction  # the repeat answered with the first settlement
        trail = await rs.runtime.store.audit(challenge_id=challenge_id)
        assert [e.event for e in trail] == ["payment_received", "verified", "settled"]
    # Each authorization moved money once.
    assert dev_chain.balance_of(payer.address) == FUNDS - PRICE - ITEM_PRICE
    assert dev_chain.balance_of(pay_to) == PRICE + ITEM_PRICE


# -- ownership and leases, on the store alone --------------------------------------------------------------

ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


class CountingFacilitator(FacilitatorClient):
    """Answers every settle with success after a pause (long enough for racing reconcilers to overlap)."""

    def __init__(self) -> None:
        super().__init__(["http://127.0.0.1:9"])
        self.settled: list[str] = []

    async def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
        self.settled.append(str(payload["payload"]["authorization"]["nonce"]))
        await asyncio.sleep(0.05)
        return SettleResponse(
            success=True, transaction="0x" + secrets.token_hex(32), network=NETWORK, payer=payload["payer"]
        )


async def claimed(store: ChallengeStore, route: str, *, valid_before: int | None = None) -> str:
    def build(challenge_id: str, expires_at: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return [{"network": NETWORK, "extra": {"challengeId": challenge_id}}], [{}]

    challenge = await store.issue(
        route=route, resource="http://test", params={}, params_hash="h", price={}, ttl_seconds=60, build=build
    )
    payer, nonce = new_address(), "0x" + secrets.token_hex(32)
    authorization = {
        "from": payer,
        "nonce": nonce,
        "validBefore": str(valid_before or int(time.time()) + 3600),
    }
    payload = {"x402Version": 2, "payer": payer, "payload": {"authorization": authorization}}
    match = Match(challenge, challenge.requirements[0], PaymentKey(84532, ASSET, payer, nonce))
    assert await store.claim(match, version=2, payload=payload, verify_answer={}) is ClaimOutcome.CLAIMED
    return challenge.id


async def age(store: ChallengeStore, seconds: float) -> None:
    await store.pool.execute(
        "UPDATE rs_challenges SET updated_at = updated_at - make_interval(secs => $1)"
        " WHERE status = 'verified'",
        seconds,
    )


@pytest.fixture
def store(challenge_store: ChallengeStore) -> ChallengeStore:
    return challenge_store


ROUTES = RecoverableRoutes(settle_first=frozenset({"GET /first"}), settle_after=frozenset({"GET /after"}))


def reconciler(store: ChallengeStore, facilitator: FacilitatorClient) -> SettlementReconciler:
    return SettlementReconciler(store, facilitator, routes=ROUTES, stuck_after_seconds=60, lease_seconds=30)


async def test_jobs_payments_fresh_claims_and_live_authorizations_are_left_alone(store):
    job = await claimed(store, "POST /generate")  # a priced endpoint's route: its job settles it
    noted = await claimed(store, "GET /first")
    await store.record("settlement_deferred", challenge_id=noted, detail={"owner": "job:1"})
    live = await claimed(store, "GET /after")  # authorization valid for an hour: a settle could still charge
    await age(store, 120)
    fresh = await claimed(store, "GET /first")  # within the grace period: its request may be running
    fake = CountingFacilitator()
    assert await reconciler(store, fake).run_once() == 0
    assert fake.settled == []
    for challenge_id in (job, noted, live, fresh):
        row = await store.pool.fetchrow(
            "SELECT status, lease_owner FROM rs_challenges WHERE id = $1", challenge_id
        )
        assert (row["status"], row["lease_owner"]) == ("verified", None)


async def test_a_jobs_payment_still_held_once_its_authorization_expired_is_the_reconcilers(store):
    # A priced endpoint's route joins the `after` routes (RecoverableRoutes.of): a job's payment, noted
    # `settlement_deferred`, is its hook's while it can be settled, the reconciler's once it cannot.
    routes = RecoverableRoutes.of(PricingConfig(routes=()), endpoint_routes={"POST /generate"})
    live = await claimed(store, "POST /generate")
    expired = await claimed(store, "POST /generate", valid_before=int(time.time()) - 120)
    for challenge_id in (live, expired):
        await store.record("settlement_deferred", challenge_id=challenge_id, detail={"owner": "job:1"})
    await age(store, 120)
    fake = CountingFacilitator()
    resolver = SettlementReconciler(store, fake, routes=routes, stuck_after_seconds=60, lease_seconds=30)
    assert await resolver.resolve_stuck() == 1
    statuses = await store.pool.fetch(
        "SELECT id, status FROM rs_challenges WHERE id = ANY($1)", [live, expired]
    )
    assert {r["id"]: r["status"] for r in statuses} == {live: "verified", expired: "settled"}
    assert len(fake.settled) == 1


async def test_racing_reconcilers_resolve_each_abandoned_claim_once(store):
    first = [await claimed(store, "GET /first") for _ in range(6)]
    expired = [await claimed(store, "GET /after", valid_before=int(time.time()) - 120) for _ in range(6)]
    await age(store, 120)
    fake = CountingFacilitator()  # shared: it counts the settle calls of both replicas
    replicas = [reconciler(store, fake), reconciler(store, fake)]
    counts = await asyncio.gather(*(r.resolve_stuck() for r in replicas))
    assert sum(counts) == 12
    assert len(fake.settled) == len(set(fake.settled)) == 12  # one settle per payment, across replicas
    for challenge_id in first + expired:
        trail = await store.audit(challenge_id=challenge_id)
        assert [e.event for e in trail] == ["verified", "settled"]
        assert (
            await store.pool.fetchval("SELECT status FROM rs_challenges WHERE id = $1", challenge_id)
            == "settled"
        )
    assert await asyncio.gather(*(r.resolve_stuck() for r in replicas)) == [0, 0]


async def test_an_unreachable_facilitator_hands_the_lease_back(store):
    challenge_id = await claimed(store, "GET /first")
    await age(store, 120)
    dead = FacilitatorClient(["http://127.0.0.1:9"])
    try:
        assert await reconciler(store, dead).resolve_stuck() == 0
    finally:
        await dead.aclose()
    row = await store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", challenge_id)
    assert (row["status"], row["lease_owner"], row["settle_attempts"]) == ("verified", None, 1)
    # The lease is free again after the retry delay (the reconcile interval), for any replica.
    await store.pool.execute("UPDATE rs_challenges SET lease_until = now() - interval '1 second'")
    fake = CountingFacilitator()
    assert await reconciler(store, fake).resolve_stuck() == 1


async def test_refused_settlement_of_an_abandoned_claim_is_recorded_failed(store):
    challenge_id = await claimed(store, "GET /first")
    await age(store, 120)

    class Refusing(CountingFacilitator):
        async def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
            return SettleResponse(
                success=False,
                error_reason="invalid_exact_evm_insufficient_balance",
                transaction="",
                network=NETWORK,
                payer=payload["payer"],
            )

    assert await reconciler(store, Refusing()).resolve_stuck() == 1
    row = await store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", challenge_id)
    assert (row["status"], row["error_reason"]) == ("failed", "invalid_exact_evm_insufficient_balance")
    assert [e.event for e in await store.audit(challenge_id=challenge_id)] == ["verified", "settle_failed"]
