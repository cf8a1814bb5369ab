"""Retention: challenges that expired unpaid are deleted with their audit rows once older than the retention
period, in bounded batches; anything with a payment is kept, and 0 keeps everything."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from resource_server.audit import AuditEntry
from resource_server.challenges.matching import Match
from resource_server.challenges.records import PaymentKey
from resource_server.challenges.states import ChallengeStatus
from resource_server.challenges.store import ChallengeStore, ClaimOutcome
from resource_server.facilitator_client import FacilitatorClient
from resource_server.metrics import ResourceServerMetrics
from resource_server.reconciler import SettlementReconciler

pytestmark = pytest.mark.integration

ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
DAY = 86400.0


@pytest.fixture
def store(challenge_store: ChallengeStore) -> ChallengeStore:
    return challenge_store


def build(challenge_id: str, expires_at: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return [{"network": "eip155:84532", "extra": {"challengeId": challenge_id}}], [{}]


async def issue(store: ChallengeStore, *, expired_days_ago: float | None = None) -> str:
    """A challenge; with `expired_days_ago`, one that expired unpaid that long ago (and was swept)."""
    note = AuditEntry("payment_refused", None, payer=PAYER, detail={"reason": "challenge_expired"})
    challenge = await store.issue(
        route="GET /weather",
        resource="http://test/weather",
        params={},
        params_hash="h",
        price={},
        ttl_seconds=60,
        build=build,
        note=note,
    )
    if expired_days_ago is not None:
        await store.pool.execute(
            "UPDATE rs_challenges SET issued_at = now() - make_interval(secs => $2),"
            " expires_at = now() - make_interval(secs => $2) WHERE id = $1",
            challenge.id,
            expired_days_ago * DAY,
        )
        await store.record("payment_received", challenge_id=challenge.id, payer=PAYER)
    return challenge.id


async def pay(store: ChallengeStore, challenge_id: str) -> None:
    challenge = await store.get(challenge_id)
    assert challenge is not None
    nonce = "0x" + secrets.token_hex(32)
    match = Match(challenge, challenge.requirements[0], PaymentKey(84532, ASSET, PAYER, nonce))
    assert await store.claim(match, version=2, payload={}, verify_answer={}) is ClaimOutcome.CLAIMED


async def challenges(store: ChallengeStore, ids: list[str]) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM rs_challenges WHERE id = ANY($1)", ids))


async def audit_rows(store: ChallengeStore, ids: list[str]) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM rs_audit WHERE challenge_id = ANY($1)", ids))


async def test_old_expired_unpaid_challenges_go_with_their_audit_rows(store):
    old = [await issue(store, expired_days_ago=8) for _ in range(5)]
    recent = [await issue(store, expired_days_ago=2) for _ in range(2)]
    # Paid, its expiry long past: kept whatever its age (it has a payment, it never expired).
    paid = await issue(store)
    await pay(store, paid)
    await store.transition(paid, ChallengeStatus.VERIFIED, ChallengeStatus.SETTLED, event="settled")
    await store.pool.execute(
        "UPDATE rs_challenges SET expires_at = now() - interval '30 days' WHERE id = $1", paid
    )
    await store.sweep_expired()
    assert await audit_rows(store, old) == 10  # payment_received and expired, each

    # Bounded: one batch deletes at most `limit`.
    assert await store.purge_expired(7 * DAY, limit=2) == 2
    metrics = ResourceServerMetrics()
    reconciler = SettlementReconciler(
        store, FacilitatorClient(["http://127.0.0.1:9"]), retention_seconds=7 * DAY, metrics=metrics
    )
    assert await reconciler.purge_expired() == 3
    assert metrics.registry.get_sample_value("x402_rs_challenges_purged_total") == 3
    assert (await challenges(store, old), await audit_rows(store, old)) == (0, 0)
    assert await challenges(store, [*recent, paid]) == 3
    assert await audit_rows(store, recent) == 4
    assert [e.event for e in await store.audit(challenge_id=paid)] == ["verified", "settled"]
    assert await store.pool.fetchval("SELECT count(*) FROM rs_payments") == 1
    # The refusal notes written with the challenges name no challenge: they are not the purge's to delete.
    assert await store.pool.fetchval("SELECT count(*) FROM rs_audit WHERE challenge_id IS NULL") == 8
    assert await reconciler.purge_expired() == 0


async def test_a_pass_sweeps_then_purges_and_retention_zero_keeps_everything(store):
    unswept = [await issue(store, expired_days_ago=9) for _ in range(3)]
    keeping = SettlementReconciler(store, FacilitatorClient(["http://127.0.0.1:9"]), retention_seconds=0)
    await keeping.run_once()
    assert await challenges(store, unswept) == 3
    assert {c.status for c in [await store.get(i) for i in unswept] if c} == {ChallengeStatus.EXPIRED}
    purging = SettlementReconciler(store, FacilitatorClient(["http://127.0.0.1:9"]), retention_seconds=DAY)
    await purging.run_once()
    assert await challenges(store, unswept) == 0
