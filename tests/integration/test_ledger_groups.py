"""The ledger's group writes (facilitator/settlement/ledger.py) on a real PostgreSQL: one statement or
transaction for many settlements, each settlement's outcome exactly what a write of its own would give."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from facilitator.settlement.ledger import (
    Confirmation,
    Ledger,
    NewSettlement,
    NotInserted,
    SettlementKey,
    SettlementRow,
    SignedTransaction,
)
from facilitator.settlement.states import IllegalTransition, Status
from shared.storage.database import connect_pool, migrate

CHAIN = 84532
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
SIGNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
async def ledger(fresh_database: str) -> AsyncIterator[Ledger]:
    pool = await connect_pool(fresh_database, min_size=1, max_size=4)
    await migrate(pool, importlib.resources.files("facilitator.migrations"), namespace="facilitator")
    try:
        yield Ledger(pool)
    finally:
        await pool.close()


def new_settlement(payer: str, nonce: str | None = None) -> NewSettlement:
    return NewSettlement(
        key=SettlementKey(CHAIN, TOKEN, payer, nonce or "0x" + os.urandom(32).hex()),
        pay_to="0x000000000000000000000000000000000000bEEF",
        amount=1_000 + 2**70,  # beyond 64 bits: NUMERIC columns through the array path
        valid_after=0,
        valid_before=2**40,
        network=f"eip155:{CHAIN}",
        x402_version=2,
        payload_hash=os.urandom(32).hex(),
        payload={"signature": "0xab", "nested": {"list": [1, 2]}},
        requirements={"amount": "1000", "extra": {"name": "USDC"}},
        calldata=b"\xe3\xee\x16\x0e" + os.urandom(40),
    )


def fake_sign(pairs: list[tuple[list[SettlementRow], int]]) -> list[SignedTransaction]:
    return [
        SignedTransaction(f"0x{rows[0].id:032x}{nonce:032x}", b"\x02" + os.urandom(90), nonce, 10**9 + 2**65)
        for rows, nonce in pairs
    ]


async def fresh_rows(ledger: Ledger, count: int) -> list[SettlementRow]:
    """`count` new settlements of distinct payers, stored and leased."""
    rows = await ledger.insert_many(
        [(new_settlement(f"0x{i:040x}"), f"o/{i}") for i in range(1, count + 1)], lease_seconds=30
    )
    return [r for r in rows if r is not None]


def alone(rows: list[SettlementRow]) -> list[list[SettlementRow]]:
    return [[r] for r in rows]


async def test_insert_many_stores_each_row_once_and_answers_in_order(ledger: Ledger) -> None:
    existing = new_settlement("0x1111111111111111111111111111111111111111")
    assert (await ledger.insert_many([(existing, "a/1")], lease_seconds=30))[0] is not None
    fresh = [new_settlement(f"0x{i:040x}") for i in range(1, 4)]
    rows = await ledger.insert_many(
        [(fresh[0], "b/1"), (existing, "b/2"), (fresh[1], "b/3"), (fresh[2], "b/4")], lease_seconds=30
    )
    assert rows[1] is None  # already in the ledger: the caller follows the first attempt
    stored = [r for r in rows if r is not None]
    assert [r.key for r in stored] == [f.key for f in fresh]
    assert [r.lease_owner for r in stored] == ["b/1", "b/3", "b/4"]
    assert all(r.status is Status.RECEIVED for r in stored)
    first = stored[0]
    assert first.amount == fresh[0].amount and first.payload == fresh[0].payload
    assert first.requirements == fresh[0].requirements and first.calldata == fresh[0].calldata
    assert [e["to_status"] for e in await ledger.events(first.id)] == ["received"]


async def test_store_transactions_hands_out_a_run_of_nonces_and_skips_rows_that_cannot_move(
    ledger: Ledger,
) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 7)
    rows = await fresh_rows(ledger, 4)
    done = await ledger.finish(rows[1].id, Status.FAILED, error_reason="invalid_signature")
    assert done.status is Status.FAILED

    results = await ledger.store_transactions(alone(rows), SIGNER, fake_sign)

    assert isinstance(results[1], IllegalTransition)
    signed = [r for r in results if isinstance(r, SignedTransaction)]
    assert [s.nonce for s in signed] == [7, 8, 9]  # consecutive, none spent on the row that could not move
    for row, tx in zip([rows[0], rows[2], rows[3]], signed, strict=True):
        current = await ledger.get(row.id)
        assert current is not None and current.status is Status.SUBMITTED and current.tx_hash == tx.tx_hash
        assert current.attempts == 1
        (stored,) = await ledger.transactions(row.id)
        assert (stored.signer_nonce, stored.raw_tx, stored.max_fee_per_gas) == (
            tx.nonce,
            tx.raw_tx,
            tx.max_fee_per_gas,
        )
        events = await ledger.events(row.id)
        assert [e["to_status"] for e in events] == ["received", "submitted"]
        assert events[1]["detail"]["signer_nonce"] == tx.nonce
    # The next allocation continues after the run.
    (extra,) = await ledger.insert_many([(new_settlement("0x" + "9" * 40), "x")], lease_seconds=30)
    assert extra is not None
    (again,) = await ledger.store_transactions([[extra]], SIGNER, fake_sign)
    assert isinstance(again, SignedTransaction) and again.nonce == 10


async def test_store_transactions_without_a_nonce_row_writes_nothing(ledger: Ledger) -> None:
    (row,) = await ledger.insert_many([(new_settlement("0x" + "1" * 40), "o")], lease_seconds=30)
    assert row is not None
    with pytest.raises(RuntimeError, match="no nonce row"):
        await ledger.store_transactions([[row]], SIGNER, fake_sign)
    current = await ledger.get(row.id)
    assert current is not None and current.status is Status.RECEIVED
    assert await ledger.transactions(row.id) == []


async def test_a_batch_is_one_transaction_and_one_nonce_for_all_its_rows(ledger: Ledger) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 3)
    rows = await fresh_rows(ledger, 5)
    await ledger.finish(rows[1].id, Status.FAILED, error_reason="invalid_signature")

    # Rows 0-2 ride one batch (row 1 cannot move and leaves it); rows 3 and 4 go alone.
    results = await ledger.store_transactions([rows[:3], [rows[3]], [rows[4]]], SIGNER, fake_sign)

    assert isinstance(results[1], IllegalTransition)
    batch, _, batch_again, single, last = results
    assert isinstance(batch, SignedTransaction) and batch_again == batch and batch.nonce == 3
    assert isinstance(single, SignedTransaction) and isinstance(last, SignedTransaction)
    assert (single.nonce, last.nonce) == (4, 5)  # one nonce per transaction, not per settlement
    assert [r.id for r in await ledger.rows_by_tx_hash(batch.tx_hash)] == [rows[0].id, rows[2].id]
    (stored,) = await ledger.transactions(rows[2].id)
    assert stored.tx_hash == batch.tx_hash and stored.settlement_ids == (rows[0].id, rows[2].id)
    for row in (rows[0], rows[2]):
        current = await ledger.get(row.id)
        assert current is not None and current.status is Status.SUBMITTED and current.tx_hash == batch.tx_hash

    # A replacement (same nonce, higher fees) carries the rows still waiting on the batch; a second
    # replacement of the same old transaction (a replica that lost the race) stores nothing.
    await ledger.finish(rows[0].id, Status.FAILED, error_reason="transaction_failed")
    bumped = SignedTransaction("0x" + "ab" * 32, b"\x02" + os.urandom(90), 3, 2 * 10**9)
    replacement = await ledger.store_replacement(stored, bumped)
    assert replacement is not None and replacement.replacement == 1
    assert replacement.settlement_ids == (rows[2].id,)
    current = await ledger.get(rows[2].id)
    assert current is not None and current.tx_hash == bumped.tx_hash and current.attempts == 2
    late = SignedTransaction("0x" + "cd" * 32, b"\x02" + os.urandom(90), 3, 3 * 10**9)
    assert await ledger.store_replacement(stored, late) is None
    assert [t.tx_hash for t in await ledger.transactions(rows[2].id)] == [batch.tx_hash, bumped.tx_hash]


async def test_confirm_many_moves_submitted_rows_and_leaves_finished_ones(ledger: Ledger) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 0)
    rows = await fresh_rows(ledger, 3)
    signed = await ledger.store_transactions(alone(rows), SIGNER, fake_sign)
    txs = [s for s in signed if isinstance(s, SignedTransaction)]
    # Another process already resolved the middle one.
    await ledger.finish(rows[1].id, Status.FAILED, error_reason="transaction_failed", tx_hash=txs[1].tx_hash)

    confirmed = await ledger.confirm_many(
        [
            Confirmation(r.id, t.tx_hash, 100 + i, f"0x{i:064x}", 86_000)
            for i, (r, t) in enumerate(zip(rows, txs, strict=True))
        ]
    )

    assert [r.id for r in confirmed] == [r.id for r in rows]
    assert [r.status for r in confirmed] == [Status.CONFIRMED, Status.FAILED, Status.CONFIRMED]
    assert confirmed[0].block_number == 100 and confirmed[2].gas_used == 86_000
    assert confirmed[0].lease_owner is None and confirmed[0].finalized_at is not None
    assert confirmed[1].error_reason == "transaction_failed"
    assert [e["to_status"] for e in await ledger.events(rows[0].id)] == ["received", "submitted", "confirmed"]
    assert [e["to_status"] for e in await ledger.events(rows[1].id)] == ["received", "submitted", "failed"]


async def test_group_writes_are_one_transaction_each(ledger: Ledger, fresh_database: str) -> None:
    """The point of grouping: commits per group, not per settlement."""
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 0)
    conn = await asyncpg.connect(fresh_database)
    try:
        query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        before = await conn.fetchval(query)
        rows = await ledger.insert_many(
            [(new_settlement(f"0x{i:040x}"), f"o/{i}") for i in range(1, 51)], lease_seconds=30
        )
        stored = [r for r in rows if r is not None]
        signed = await ledger.store_transactions(alone(stored), SIGNER, fake_sign)
        await ledger.confirm_many(
            [
                Confirmation(r.id, s.tx_hash, 1, None, 1)
                for r, s in zip(stored, signed, strict=True)
                if not isinstance(s, Exception)
            ]
        )
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        after = await conn.fetchval(query)
    finally:
        await conn.close()
    assert len(stored) == 50
    # Three group writes plus this connection's own statements; 150 if each settlement committed alone.
    assert after - before < 15


def signed_from(first: int, units: list[list[SettlementRow]]) -> list[SignedTransaction]:
    return fake_sign([(unit, first + i) for i, unit in enumerate(units)])


async def test_transactions_signed_ahead_are_stored_in_one_statement_when_the_ledger_agrees(
    ledger: Ledger,
) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 7)
    rows = await fresh_rows(ledger, 3)
    units = [rows[:2], [rows[2]]]
    signed = signed_from(7, units)

    stored = await ledger.store_transactions_at(units, SIGNER, 7, signed)

    assert stored == [signed[0], signed[0], signed[1]]
    for row, tx in zip(rows, stored, strict=True):
        current = await ledger.get(row.id)
        assert current is not None and current.status is Status.SUBMITTED and current.tx_hash == tx.tx_hash
        assert current.attempts == 1
        events = await ledger.events(row.id)
        assert [(e["from_status"], e["to_status"]) for e in events] == [
            (None, "received"),
            ("received", "submitted"),
        ]
        assert events[1]["detail"]["signer_nonce"] == tx.nonce
    (batch,) = await ledger.transactions(rows[0].id)
    assert (batch.signer_nonce, batch.raw_tx, batch.settlement_ids) == (
        7,
        signed[0].raw_tx,
        (rows[0].id, rows[1].id),
    )
    # The allocation moved past the run, as the locking path would have.
    (extra,) = await fresh_rows(ledger, 1)
    (next_tx,) = await ledger.store_transactions([[extra]], SIGNER, fake_sign)
    assert isinstance(next_tx, SignedTransaction) and next_tx.nonce == 9


async def test_a_wrong_guess_or_a_row_that_cannot_move_writes_nothing(ledger: Ledger) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 5)
    rows = await fresh_rows(ledger, 3)
    units = alone(rows)

    async def untouched() -> None:
        for row in rows[1:]:
            current = await ledger.get(row.id)
            assert current is not None and current.status is Status.RECEIVED and current.attempts == 0
            assert await ledger.transactions(row.id) == []

    # Another replica took nonce 5 meanwhile (or this process guessed wrong).
    assert await ledger.store_transactions_at(units, SIGNER, 4, signed_from(4, units)) is None
    assert await ledger.store_transactions_at(units, SIGNER, 6, signed_from(6, units)) is None
    # A row that may not move any more (the reconciler finished it): the whole group waits for the
    # locking path, which drops that row from it.
    await ledger.finish(rows[0].id, Status.FAILED, error_reason="invalid_signature")
    assert await ledger.store_transactions_at(units, SIGNER, 5, signed_from(5, units)) is None
    await untouched()
    with pytest.raises(ValueError, match="consecutive"):
        await ledger.store_transactions_at(units, SIGNER, 5, signed_from(6, units))
    results = await ledger.store_transactions(units, SIGNER, fake_sign)
    assert isinstance(results[0], IllegalTransition)
    assert [r.nonce for r in results[1:] if isinstance(r, SignedTransaction)] == [5, 6]


async def test_new_settlements_go_in_already_submitted_in_one_statement(ledger: Ledger) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 4)
    news = [(new_settlement(f"0x{i:040x}"), f"o/{i}") for i in range(1, 4)]
    signed = [
        SignedTransaction("0x" + "a1" * 32, b"\x02" + os.urandom(90), 4, 10**9),
        SignedTransaction("0x" + "a2" * 32, b"\x02" + os.urandom(90), 5, 10**9),
    ]

    entered = await ledger.insert_submitted(news, [[0, 2], [1]], SIGNER, 4, signed, lease_seconds=30)

    assert not isinstance(entered, NotInserted)
    assert [(row.key, tx) for row, tx in entered] == [
        (news[0][0].key, signed[0]),
        (news[1][0].key, signed[1]),
        (news[2][0].key, signed[0]),
    ]
    for (row, tx), (new, owner) in zip(entered, news, strict=True):
        assert (row.status, row.tx_hash, row.attempts, row.lease_owner) == (
            Status.SUBMITTED,
            tx.tx_hash,
            1,
            owner,
        )
        assert row.amount == new.amount and row.payload == new.payload and row.calldata == new.calldata
        events = await ledger.events(row.id)
        assert [(e["from_status"], e["to_status"]) for e in events] == [
            (None, "received"),
            ("received", "submitted"),
        ]
        assert events[0]["detail"] == {"lease_owner": owner}
        assert events[1]["detail"]["signer_nonce"] == tx.nonce
    batch = await ledger.rows_by_tx_hash(signed[0].tx_hash)
    assert [r.id for r in batch] == [entered[0][0].id, entered[2][0].id]
    (stored,) = await ledger.transactions(entered[0][0].id)
    assert (stored.signer, stored.signer_nonce, stored.raw_tx) == (SIGNER, 4, signed[0].raw_tx)
    (extra,) = await fresh_rows(ledger, 1)
    (after,) = await ledger.store_transactions([[extra]], SIGNER, fake_sign)
    assert isinstance(after, SignedTransaction) and after.nonce == 6


async def test_a_known_authorization_or_a_wrong_guess_inserts_nothing(ledger: Ledger) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 0)
    known = new_settlement("0x" + "7" * 40)
    assert (await ledger.insert_many([(known, "first")], lease_seconds=30))[0] is not None
    fresh = new_settlement("0x" + "8" * 40)
    tx = SignedTransaction("0x" + "b1" * 32, b"\x02" + os.urandom(90), 0, 10**9)

    async def nothing_written() -> None:
        assert await ledger.get_by_key(fresh.key) is None
        (again,) = await fresh_rows(ledger, 1)
        assert await ledger.store_transactions_at([[again]], SIGNER, 0, fake_sign([([again], 0)])) is not None

    # The known one makes the INSERT fail: the fresh one, the nonce and the transaction go with it.
    news = [(fresh, "o/1"), (known, "o/2")]
    assert (
        await ledger.insert_submitted(news, [[0, 1]], SIGNER, 0, [tx], lease_seconds=30)
        is NotInserted.KNOWN_AUTHORIZATION
    )
    late = SignedTransaction(tx.tx_hash, tx.raw_tx, 3, tx.max_fee_per_gas)  # the signer is at 0, not 3
    assert (
        await ledger.insert_submitted([(fresh, "o/1")], [[0]], SIGNER, 3, [late], lease_seconds=30)
        is NotInserted.NONCE_MOVED
    )
    # Both wrong: the nonce is checked first, and says it.
    assert (
        await ledger.insert_submitted(news, [[0, 1]], SIGNER, 3, [late], lease_seconds=30)
        is NotInserted.NONCE_MOVED
    )
    await nothing_written()
    with pytest.raises(ValueError, match="exactly one"):
        await ledger.insert_submitted([(fresh, "o/1")], [[]], SIGNER, 3, [late], lease_seconds=30)


async def test_a_refused_transaction_is_rewound_once_and_only_while_its_nonce_is_the_last(
    ledger: Ledger,
) -> None:
    await ledger.sync_signer_nonce(CHAIN, SIGNER, 3)
    first, second, third, fourth = await fresh_rows(ledger, 4)
    (refused,) = await ledger.store_transactions([[first]], SIGNER, fake_sign)
    assert isinstance(refused, SignedTransaction) and refused.nonce == 3

    assert await ledger.rewind_unused_nonce(CHAIN, SIGNER, 3, refused.tx_hash) is True
    assert await ledger.transactions(first.id) == []
    (reused,) = await ledger.store_transactions([[second]], SIGNER, fake_sign)
    assert isinstance(reused, SignedTransaction) and reused.nonce == 3
    # A late undo of the same refusal finds its transaction gone: nonce 3 stays with the one stored since.
    assert await ledger.rewind_unused_nonce(CHAIN, SIGNER, 3, refused.tx_hash) is True
    assert [t.tx_hash for t in await ledger.transactions(second.id)] == [reused.tx_hash]
    (after,) = await ledger.store_transactions([[third]], SIGNER, fake_sign)
    assert isinstance(after, SignedTransaction) and after.nonce == 4

    # Nonce 5 handed out after 4: 4 cannot come back without leaving a hole, so its transaction stays.
    (later,) = await ledger.store_transactions([[fourth]], SIGNER, fake_sign)
    assert isinstance(later, SignedTransaction) and later.nonce == 5
    assert await ledger.rewind_unused_nonce(CHAIN, SIGNER, 4, after.tx_hash) is False
    assert [t.tx_hash for t in await ledger.transactions(third.id)] == [after.tx_hash]


async def test_a_lease_is_renewed_only_by_its_owner_and_only_while_the_row_is_in_flight(
    ledger: Ledger,
) -> None:
    (row,) = await ledger.insert_many([(new_settlement("0x" + "7" * 40), "owner")], lease_seconds=1)
    assert row is not None and row.lease_until is not None

    assert await ledger.renew_lease(row.id, "owner", 300)
    renewed = await ledger.get(row.id)
    assert renewed is not None and renewed.lease_until is not None
    assert (renewed.lease_until - row.lease_until).total_seconds() > 250
    # A caller whose lease lapsed and was taken over must not send the row again.
    assert not await ledger.renew_lease(row.id, "someone else", 300)
    assert await ledger.claim_one(row.id, "someone else", 30) is None  # still the owner's

    await ledger.finish(row.id, Status.FAILED, error_reason="r", error_message="m")
    assert not await ledger.renew_lease(row.id, "owner", 300)  # finished: nothing left to send
