"""A job's settlement hook run by the real worker, whose record of a failed run (final_attempts,
final_error) is what the next run reads to tell whether a settle may have gone out: a settle that certainly
never did lets the payment be released as soon as too little of its window is left, one that may have is
left to the reconciler (stood for here by the test moving the challenge) and only copied. Real job
database; the paywall and the challenge it reads are fakes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from resource_server.challenges.records import Challenge, StoredPayment
from resource_server.challenges.states import ChallengeStatus
from resource_server.facilitator_client import FacilitatorBadResponse, FacilitatorUnavailable
from resource_server.generation.engine.records import JobRecord
from resource_server.generation.engine.service import GenerationEngine, JobRequest
from resource_server.generation_api.payments import JobPayments
from resource_server.paywall import HeldPayment
from tests.fixtures.generation import (
    Script,
    make_engine,
    running_workers,
    scripted_tool,
    wait_final_handled,
    wait_until,
)

pytestmark = pytest.mark.integration

PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
CHALLENGE_ID = "c" * 32
WINDOW = 600  # seconds of validity the authorization has when the job is submitted
MARGIN = 15.0  # closer than this to validBefore the hook releases instead of settling
PARAMS = {"prompt": "x", "duration_seconds": 1}


def challenge(status: ChallengeStatus) -> Challenge:
    now = datetime.now(UTC)
    return Challenge(
        id=CHALLENGE_ID,
        route="POST /generate",
        resource="http://test/generate",
        params={},
        params_hash="h",
        price={},
        requirements=[],
        requirements_v1=[],
        status=status,
        issued_at=now,
        expires_at=now + timedelta(seconds=60),
        now=now,
    )


class FakeStore:
    """The challenge and payment `load_held` reads; the test moves the challenge as the reconciler would."""

    def __init__(self, valid_before: int) -> None:
        self.status = ChallengeStatus.VERIFIED
        authorization = {
            "from": PAYER,
            "to": PAY_TO,
            "value": "1000",
            "validAfter": "0",
            "validBefore": str(valid_before),
            "nonce": "0x" + "ab" * 32,
        }
        self.payload = {
            "x402Version": 2,
            "payload": {"signature": "0x" + "11" * 65, "authorization": authorization},
        }

    async def get_with_payment(self, challenge_id: str) -> tuple[Challenge, StoredPayment]:
        stored = StoredPayment(PAYER, self.payload, {"network": "eip155:84532"})
        return challenge(self.status), stored


class Clock:
    """Time as the hook sees it, moved on by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class FakePaywall:
    """Its first settle fails with `first_failure`, after which time runs on until too little of the
    authorization's window is left to settle; a release moves the challenge to released."""

    def __init__(self, store: FakeStore, clock: Clock, first_failure: Exception) -> None:
        self.store = store
        self.clock = clock
        self.first_failure: Exception | None = first_failure
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def settle(self, held: HeldPayment, **kwargs: Any) -> None:
        self.calls.append(("settle", kwargs))
        failure, self.first_failure = self.first_failure, None
        if failure is not None:
            self.clock.offset = WINDOW - MARGIN / 2
            raise failure
        self.store.status = ChallengeStatus.SETTLED

    async def release(self, held: HeldPayment, **kwargs: Any) -> None:
        self.calls.append(("release", kwargs))
        self.store.status = ChallengeStatus.RELEASED


@dataclass
class Setup:
    engine: GenerationEngine
    paywall: FakePaywall
    store: FakeStore
    payments: JobPayments
    job: JobRecord


async def paid_job(generation_pool: asyncpg.Pool, first_failure: Exception) -> Setup:
    """A deferred job's payment, held, whose hook's first settle fails with `first_failure`."""
    engine = make_engine(generation_pool, [scripted_tool("t", {"only": Script()})])
    clock = Clock()
    store = FakeStore(int(clock()) + WINDOW)
    paywall = FakePaywall(store, clock, first_failure)
    payments = JobPayments(paywall, engine, release_before_expiry_seconds=MARGIN, clock=clock)  # type: ignore[arg-type]
    request = JobRequest(
        "t", PARAMS, payer=PAYER, payment_challenge_id=CHALLENGE_ID, settlement_status="held"
    )
    job = (await engine.submit_job(request)).job
    return Setup(engine, paywall, store, payments, job)


async def test_a_settle_that_never_went_out_is_released_once_too_late_not_kept_until_expiry(generation_pool):
    unreachable = FacilitatorUnavailable()
    unreachable.failures.append("http://fac/settle: cannot connect (ClientConnectorError)")
    t = await paid_job(generation_pool, unreachable)

    async with running_workers(t.engine, on_final=t.payments.on_final):
        done = await wait_final_handled(t.engine, t.job.id)

    assert [what for what, _ in t.paywall.calls] == ["settle", "release"]
    assert t.paywall.calls[1][1]["reason"] == "authorization_expiring"
    assert (done.final_attempts, done.settlement_status) == (1, "released")


async def test_a_settle_that_may_have_gone_out_waits_for_the_reconciler_and_is_copied(generation_pool):
    lost = FacilitatorBadResponse("http://fac answered HTTP 200 with a body that is not JSON")
    t = await paid_job(generation_pool, lost)

    async with running_workers(t.engine, on_final=t.payments.on_final):

        async def retried() -> bool:
            current = await t.engine.get_job(t.job.id)
            return current is not None and current.final_attempts >= 3

        await wait_until(retried, 10)
        waiting = await t.engine.get_job(t.job.id)
        assert waiting is not None and not waiting.final_handled
        assert str(waiting.final_error).startswith("SettleUnresolved:")
        assert [what for what, _ in t.paywall.calls] == ["settle"]  # neither released nor settled late

        t.store.status = (
            ChallengeStatus.SETTLED
        )  # as the reconciler records it once the authorization expired
        done = await wait_final_handled(t.engine, t.job.id)

    assert [what for what, _ in t.paywall.calls] == ["settle"]
    assert done.settlement_status == "settled"
