"""The challenge store's statements on real PostgreSQL: each step of a payment is one statement, so these
check what one statement must guarantee on its own: a claim is all or nothing and has one winner among
racers, a state change and its audit row are written together or not at all, and expiries are on the
database's clock."""

from __future__ import annotations

import asyncio
import secrets
import time
import types
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from resource_server.audit import AuditEntry
from resource_server.challenges import store as store_module
from resource_server.challenges.matching import Match
from resource_server.challenges.records import Challenge, PaymentKey
from resource_server.challenges.states import ChallengeStatus
from resource_server.challenges.store import ChallengeStore, ClaimOutcome

pytestmark = pytest.mark.integration

ROUTE = "GET /weather"
ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


@pytest.fixture
def store(challenge_store: ChallengeStore) -> ChallengeStore:
    return challenge_store


def build(challenge_id: str, expires_at: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    extra = {"challengeId": challenge_id, "challengeExpiresAt": expires_at}
    v2 = {"scheme": "exact", "network": "eip155:84532", "amount": "1000", "asset": ASSET, "extra": extra}
    v1 = {"scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "1000", "extra": extra}
    return [v2], [v1]


async def issue(store: ChallengeStore, *, ttl: float = 300.0, params_hash: str = "h1") -> Challenge:
    return await store.issue(
        route=ROUTE,
        resource="http://test/weather",
        params={},
        params_hash=params_hash,
        price={"total": "0.001"},
        ttl_seconds=ttl,
        build=build,
    )


def nonce() -> str:
    return "0x" + secrets.token_hex(32)


def match(challenge: Challenge, auth_nonce: str, payer: str = PAYER) -> Match:
    return Match(challenge, challenge.requirements[0], PaymentKey(84532, ASSET, payer, auth_nonce))


async def claim(store: ChallengeStore, m: Match) -> ClaimOutcome:
    return await store.claim(m, version=2, payload={"x402Version": 2}, verify_answer={"isValid": True})


async def status(store: ChallengeStore, challenge_id: str) -> str:
    return str(await store.pool.fetchval("SELECT status FROM rs_challenges WHERE id = $1", challenge_id))


async def events(store: ChallengeStore, challenge_id: str) -> list[str]:
    return [e.event for e in await store.audit(challenge_id=challenge_id)]


async def test_a_used_authorization_aborts_the_whole_claim(store):
    first, second = await issue(store), await issue(store)
    spent = nonce()
    assert await claim(store, match(first, spent)) is ClaimOutcome.CLAIMED
    # The unique key refuses it inside the statement: the challenge's move is undone with it.
    assert await claim(store, match(second, spent)) is ClaimOutcome.PAYMENT_USED
    assert await status(store, first.id) == "verified"
    assert await status(store, second.id) == "issued"
    assert await events(store, first.id) == ["verified"]
    assert await events(store, second.id) == []
    owners = await store.pool.fetch("SELECT challenge_id FROM rs_payments")
    assert [r["challenge_id"] for r in owners] == [first.id]
    # The challenge is still payable by another authorization.
    assert await claim(store, match(second, nonce())) is ClaimOutcome.CLAIMED


async def test_racing_claims_have_one_winner(store):
    # One authorization racing for eight challenges (replicas, v1 retries): one challenge moves.
    challenges = [await issue(store) for _ in range(8)]
    shared = nonce()
    outcomes = await asyncio.gather(*(claim(store, match(c, shared)) for c in challenges))
    assert sorted(outcomes) == sorted([ClaimOutcome.CLAIMED] + [ClaimOutcome.PAYMENT_USED] * 7)
    statuses = [await status(store, c.id) for c in challenges]
    assert statuses.count("verified") == 1 and statuses.count("issued") == 7

    # Eight authorizations racing for one challenge: one is recorded, the others hear it was taken.
    target = await issue(store)
    outcomes = await asyncio.gather(*(claim(store, match(target, nonce())) for _ in range(8)))
    assert sorted(outcomes) == sorted([ClaimOutcome.CLAIMED] + [ClaimOutcome.CHALLENGE_TAKEN] * 7)
    assert (
        await store.pool.fetchval("SELECT count(*) FROM rs_payments WHERE challenge_id = $1", target.id) == 1
    )
    assert await events(store, target.id) == ["verified"]

    # The same authorization raced on the same challenge: whoever loses hears that the payment was used.
    again = await issue(store)
    same = nonce()
    outcomes = await asyncio.gather(*(claim(store, match(again, same)) for _ in range(4)))
    assert sorted(outcomes) == sorted([ClaimOutcome.CLAIMED] + [ClaimOutcome.PAYMENT_USED] * 3)


async def test_claiming_an_expired_challenge_writes_nothing(store):
    late = await issue(store, ttl=0.05)
    await asyncio.sleep(0.15)
    assert await claim(store, match(late, nonce())) is ClaimOutcome.EXPIRED
    assert await status(store, late.id) == "issued"  # the sweep or the refusal marks it expired
    assert await store.pool.fetchval("SELECT count(*) FROM rs_payments") == 0
    assert await store.expire(late.id)
    assert await events(store, late.id) == ["expired"]
    assert await claim(store, match(late, nonce())) is ClaimOutcome.EXPIRED


async def test_receive_records_the_attempt_and_reads_what_matching_needs(store):
    def received(challenge_id: str | None) -> AuditEntry:
        return AuditEntry("payment_received", challenge_id, payer=PAYER, detail={"n": 1})

    unknown = await store.receive(received("nope"), payer=PAYER, nonce=nonce(), challenge_id="nope")
    assert (unknown.used_by, unknown.challenges) == (None, [])
    assert await events(store, "nope") == ["payment_received"]

    named = await issue(store)
    auth = nonce()
    found = await store.receive(received(named.id), payer=PAYER, nonce=auth, challenge_id=named.id)
    assert found.used_by is None and [c.id for c in found.challenges] == [named.id]
    assert found.challenges[0].requirements == named.requirements
    assert found.challenges[0].expires_at == named.expires_at

    assert await claim(store, match(named, auth)) is ClaimOutcome.CLAIMED
    replay = await store.receive(received(named.id), payer=PAYER, nonce=auth, challenge_id=named.id)
    assert replay.used_by == named.id
    assert await events(store, named.id) == ["payment_received", "verified", "payment_received"]

    # v1: the open challenges of the route and parameters, newest first, claimed ones left out.
    older, newer = await issue(store, params_hash="h2"), await issue(store, params_hash="h2")
    await issue(store, params_hash="other")
    candidates = await store.receive(received(None), payer=PAYER, nonce=nonce(), candidates_of=(ROUTE, "h2"))
    assert [c.id for c in candidates.challenges] == [newer.id, older.id]
    assert await claim(store, match(newer, nonce())) is ClaimOutcome.CLAIMED
    left = await store.receive(received(None), payer=PAYER, nonce=nonce(), candidates_of=(ROUTE, "h2"))
    assert [c.id for c in left.challenges] == [older.id]
    none = await store.receive(received(None), payer=PAYER, nonce=nonce(), candidates_of=(ROUTE, "h3"))
    assert none.challenges == [] and none.used_by is None


async def test_a_state_change_and_its_audit_row_are_written_together(store):
    challenge = await issue(store)
    assert await claim(store, match(challenge, nonce())) is ClaimOutcome.CLAIMED
    tx = "0x" + "AB" * 32
    moved = await store.transition(
        challenge.id,
        ChallengeStatus.VERIFIED,
        ChallengeStatus.SETTLED,
        event="settled",
        detail={"facilitator": {"success": True}},
        tx_hash=tx,
        settle_attempt=True,
    )
    assert moved
    # Only from the state it is in: a second change finds nothing to move and writes nothing.
    assert not await store.transition(
        challenge.id, ChallengeStatus.VERIFIED, ChallengeStatus.FAILED, event="settle_failed"
    )
    [verified, settled] = await store.audit(challenge_id=challenge.id)
    assert (verified.event, settled.event) == ("verified", "settled")
    assert (settled.from_status, settled.to_status) == ("verified", "settled")
    assert settled.payer == PAYER.lower()  # taken from the challenge row by the same statement
    assert settled.tx_hash == tx.lower() and settled.detail == {"facilitator": {"success": True}}
    row = await store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", challenge.id)
    assert (row["status"], row["tx_hash"], row["settle_attempts"]) == ("settled", tx, 1)
    # By payer or transaction, the whole story of the challenge.
    assert [e.event for e in await store.audit(tx_hash=tx)] == ["verified", "settled"]


async def test_a_refusal_note_is_written_with_the_fresh_challenge(store):
    note = AuditEntry("payment_refused", "old", payer=PAYER, detail={"reason": "challenge_expired"})
    fresh = await store.issue(
        route=ROUTE,
        resource="http://test/weather",
        params={},
        params_hash="h1",
        price={},
        ttl_seconds=60,
        build=build,
        note=note,
    )
    assert await status(store, fresh.id) == "issued"
    [refused] = await store.audit(challenge_id="old")
    assert (refused.event, refused.payer, refused.detail) == ("payment_refused", PAYER.lower(), note.detail)


async def test_expiry_is_on_the_database_clock_even_when_ours_is_off(store, monkeypatch):
    # This process's clock an hour fast: expiries must still be TTL after the database's now.
    real = time.time
    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=lambda: real() + 3600))
    fresh = ChallengeStore(store.pool)
    for _ in range(3):  # the first issue reads the clock, the next ones use what the last one saw
        challenge = await issue(fresh, ttl=30.0)
        row = await store.pool.fetchrow(
            "SELECT issued_at, expires_at, now() AS db_now FROM rs_challenges WHERE id = $1", challenge.id
        )
        assert row["expires_at"] == challenge.expires_at
        assert timedelta(seconds=29) < row["expires_at"] - row["db_now"] <= timedelta(seconds=30)
        assert row["issued_at"] < row["expires_at"]
        assert challenge.requirements[0]["extra"]["challengeExpiresAt"] == int(
            challenge.expires_at.timestamp()
        )
        assert not challenge.expired


def count_statements(pool: Any) -> Callable[[], int]:
    """Statements the pool's connections send from now on (asyncpg's query logger, on every connection
    the pool holds; the store's pool keeps them all open)."""
    sent: list[str] = []
    for holder in pool._holders:  # private asyncpg attribute, for measuring only
        if holder._con is not None:
            holder._con.add_query_logger(lambda record: sent.append(record.query))
    return lambda: len(sent)


async def test_issues_and_moves_arriving_together_share_a_statement_and_stay_apart(store):
    # Issued at once: one INSERT for all, each row with its own requirements (lists of objects, stored as
    # sent, not taken apart as array dimensions).
    await issue(store)  # reads the database's clock: the next ones go straight to their group
    statements = count_statements(store.pool)
    challenges = await asyncio.gather(*(issue(store, params_hash=f"h{i}") for i in range(12)))
    assert statements() <= 2, statements()  # one group, or a first one that went alone
    for c in challenges:
        row = await store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", c.id)
        assert (row["params_hash"], row["requirements"], row["requirements_v1"]) == (
            c.params_hash,
            c.requirements,
            c.requirements_v1,
        )
        assert row["expires_at"] == c.expires_at and row["issued_at"] == c.issued_at
    for c in challenges:
        assert await claim(store, match(c, nonce())) is ClaimOutcome.CLAIMED

    # Moved at once, the first challenge twice: its second move (from a state it has left) writes nothing.
    tx = "0x" + "CD" * 32

    async def settle(c: Challenge, i: int) -> bool:
        return bool(
            await store.transition(
                c.id,
                ChallengeStatus.VERIFIED,
                ChallengeStatus.SETTLED,
                event="settled",
                detail={"n": i},
                tx_hash=tx,
                settle_attempt=True,
            )
        )

    again = store.transition(
        challenges[0].id, ChallengeStatus.VERIFIED, ChallengeStatus.FAILED, event="settle_failed"
    )
    statements = count_statements(store.pool)
    answers = await asyncio.gather(*(settle(c, i) for i, c in enumerate(challenges)), again)
    assert answers == [True] * 12 + [False]
    assert statements() < 12, statements()  # moves share statements (how many depends on the loop's turns)
    for i, c in enumerate(challenges):
        row = await store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", c.id)
        assert (row["status"], row["tx_hash"], row["settle_attempts"]) == ("settled", tx, 1)
        [_, settled] = await store.audit(challenge_id=c.id)
        assert (settled.event, settled.detail, settled.tx_hash, settled.payer) == (
            "settled",
            {"n": i},
            tx.lower(),
            PAYER.lower(),
        )


async def test_a_claim_writes_the_attempt_it_was_not_received_with(store):
    challenge, other = await issue(store), await issue(store)
    spent = nonce()

    def received(c: Challenge) -> AuditEntry:
        return AuditEntry("payment_received", c.id, payer=PAYER, detail={"nonce": spent})

    outcome = await store.claim(
        match(challenge, spent), version=2, payload={}, verify_answer={}, received=received(challenge)
    )
    assert outcome is ClaimOutcome.CLAIMED
    assert await events(store, challenge.id) == ["payment_received", "verified"]
    # A challenge someone else took: the attempt is written, the claim is not.
    outcome = await store.claim(
        match(challenge, nonce()), version=2, payload={}, verify_answer={}, received=received(challenge)
    )
    assert outcome is ClaimOutcome.CHALLENGE_TAKEN
    assert await events(store, challenge.id) == ["payment_received", "verified", "payment_received"]
    # A used authorization aborts the statement: the attempt's row is written on its own, once.
    outcome = await store.claim(
        match(other, spent), version=2, payload={}, verify_answer={}, received=received(other)
    )
    assert outcome is ClaimOutcome.PAYMENT_USED
    assert await events(store, other.id) == ["payment_received"]
    assert await status(store, other.id) == "issued"


async def test_a_nonce_reused_on_another_chain_or_token_is_used_from_memory_as_from_the_database(store):
    # A payment is its payer and nonce, whatever the chain and token it names: `receive` (the database
    # path) and the claim of a challenge matched from memory (no `receive`) must say so alike.
    first = await issue(store)
    spent = nonce()
    assert await claim(store, match(first, spent)) is ClaimOutcome.CLAIMED

    def received(c: Challenge) -> AuditEntry:
        return AuditEntry("payment_received", c.id, payer=PAYER, detail={"nonce": spent})

    other_token = "0x808456652fdb597867f38412077A9182bf77359F"
    for key in (PaymentKey(8453, ASSET, PAYER, spent), PaymentKey(84532, other_token, PAYER, spent)):
        read_back = await issue(store)
        found = await store.receive(received(read_back), payer=PAYER, nonce=spent, challenge_id=read_back.id)
        assert found.used_by == first.id
        # Had that path gone on to claim, its claim would refuse the payment too.
        refused = await claim(store, Match(read_back, read_back.requirements[0], key))
        assert refused is ClaimOutcome.PAYMENT_USED

        in_memory = await issue(store)
        taken = store.take_issued(in_memory.id)
        assert taken is not None
        outcome = await store.claim(
            Match(taken, taken.requirements[0], key),
            version=2,
            payload={},
            verify_answer={},
            received=received(in_memory),
        )
        assert outcome is ClaimOutcome.PAYMENT_USED
        assert (await status(store, read_back.id), await status(store, in_memory.id)) == ("issued", "issued")
        assert await events(store, in_memory.id) == ["payment_received"]  # the attempt's row, once
    owners = await store.pool.fetch("SELECT challenge_id FROM rs_payments")
    assert [r["challenge_id"] for r in owners] == [first.id]

    # Used wins over expired, as `receive` answers before the challenge is looked at.
    late = await issue(store, ttl=0.05)
    await asyncio.sleep(0.15)
    other_chain = PaymentKey(8453, ASSET, PAYER, spent)
    assert await claim(store, Match(late, late.requirements[0], other_chain)) is ClaimOutcome.PAYMENT_USED
    # Another nonce of the same payer is another payment.
    fresh = await issue(store)
    assert await claim(store, match(fresh, nonce())) is ClaimOutcome.CLAIMED


async def test_a_challenge_is_handed_out_from_memory_once(store):
    challenge = await issue(store)
    taken = store.take_issued(challenge.id)
    assert taken is not None and taken.id == challenge.id and not taken.expired
    assert taken.now >= challenge.now  # as read now, on the database's clock
    assert store.take_issued(challenge.id) is None
    assert ChallengeStore(store.pool).take_issued(challenge.id) is None  # another process never issued it
