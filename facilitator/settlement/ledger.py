"""The durable ledger (PostgreSQL): settlement rows, their transactions, signer nonces and the audit trail.

Every state change is a conditional UPDATE on the current status, so two replicas racing on one row
cannot both move it; the loser re-reads and follows the winner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.telemetry.tracing import span

from .states import ALLOWED, IllegalTransition, Status, check_transition


@dataclass(frozen=True, slots=True)
class SettlementKey:
    chain_id: int
    token: str
    payer: str
    auth_nonce: str  # 0x-hex


@dataclass(frozen=True, slots=True)
class SettlementRow:
    id: int
    key: SettlementKey
    pay_to: str
    amount: int
    valid_after: int
    valid_before: int
    network: str
    x402_version: int
    payload_hash: str
    payload: dict[str, Any]
    requirements: dict[str, Any]
    calldata: bytes
    status: Status
    error_reason: str | None
    error_message: str | None
    tx_hash: str | None
    block_number: int | None
    block_hash: str | None
    gas_used: int | None
    attempts: int
    lease_owner: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    finalized_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> SettlementRow:
        return cls(
            id=r["id"],
            key=SettlementKey(r["chain_id"], r["token"], r["payer"], r["auth_nonce"]),
            pay_to=r["pay_to"],
            amount=int(r["amount"]),
            valid_after=int(r["valid_after"]),
            valid_before=int(r["valid_before"]),
            network=r["network"],
            x402_version=r["x402_version"],
            payload_hash=r["payload_hash"],
            payload=r["payload"],
            requirements=r["requirements"],
            calldata=bytes(r["calldata"]),
            status=Status(r["status"]),
            error_reason=r["error_reason"],
            error_message=r["error_message"],
            tx_hash=r["tx_hash"],
            block_number=r["block_number"],
            block_hash=r["block_hash"],
            gas_used=r["gas_used"],
            attempts=r["attempts"],
            lease_owner=r["lease_owner"],
            lease_until=r["lease_until"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            submitted_at=r["submitted_at"],
            finalized_at=r["finalized_at"],
        )


@dataclass(frozen=True, slots=True)
class NewSettlement:
    key: SettlementKey
    pay_to: str
    amount: int
    valid_after: int
    valid_before: int
    network: str
    x402_version: int
    payload_hash: str
    payload: dict[str, Any]
    requirements: dict[str, Any]
    calldata: bytes


@dataclass(frozen=True, slots=True)
class Confirmation:
    settlement_id: int
    tx_hash: str
    block_number: int
    block_hash: str | None
    gas_used: int


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    tx_hash: str
    settlement_ids: tuple[int, ...]  # one for a lone transfer, several for a batch
    chain_id: int
    signer: str
    signer_nonce: int
    raw_tx: bytes
    max_fee_per_gas: int
    replacement: int = 0  # 0 for the first transaction of a nonce, then 1, 2... for fee-bumped ones
    created_at: datetime | None = None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StoredTransaction:
        return cls(
            r["tx_hash"],
            tuple(r["settlement_ids"]),
            r["chain_id"],
            r["signer"],
            r["signer_nonce"],
            bytes(r["raw_tx"]),
            int(r["max_fee_per_gas"]),
            r["replacement"],
            r["created_at"],
        )


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    tx_hash: str
    raw_tx: bytes
    nonce: int
    max_fee_per_gas: int


class NotInserted(Enum):
    """Why `Ledger.insert_submitted` wrote nothing."""

    NONCE_MOVED = "nonce_moved"  # the run is not the signer's next any more
    KNOWN_AUTHORIZATION = "known_authorization"  # a settlement's authorization is in the ledger already


# The settlement ids a transaction carries, next to its columns.
_MEMBERS = """(SELECT array_agg(x.settlement_id ORDER BY x.settlement_id)
                FROM settlement_transaction_members x WHERE x.tx_hash = t.tx_hash) AS settlement_ids"""


class Ledger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert_many(
        self, news: Sequence[tuple[NewSettlement, str]], *, lease_seconds: float
    ) -> list[SettlementRow | None]:
        """Stores new settlements, each leased to its owner: each gets its new row, or None when its
        authorization is already in the ledger. The rows and their first events commit together."""
        columns = _new_columns(news)
        async with span("db.settlement.insert", rows=len(news)):
            records = await self.pool.fetch(
                """
                WITH v AS (
                    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                         $6::numeric[], $7::numeric[], $8::numeric[], $9::text[], $10::int[],
                                         $11::text[], $12::jsonb[], $13::jsonb[], $14::bytea[], $15::text[])
                        AS v(chain_id, token, payer, auth_nonce, pay_to, amount, valid_after,
                             valid_before, network, x402_version, payload_hash, payload, requirements,
                             calldata, lease_owner)
                ), ins AS (
                    INSERT INTO settlements (chain_id, token, payer, auth_nonce, pay_to, amount, valid_after,
                        valid_before, network, x402_version, payload_hash, payload, requirements, calldata,
                        status, lease_owner, lease_until)
                    SELECT chain_id, token, payer, auth_nonce, pay_to, amount, valid_after, valid_before,
                           network, x402_version, payload_hash, payload, requirements, calldata,
                           'received', lease_owner, now() + make_interval(secs => $16)
                    FROM v
                    ON CONFLICT ON CONSTRAINT settlements_authorization_key DO NOTHING
                    RETURNING *
                ), ev AS (
                    INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
                    SELECT id, NULL, 'received', jsonb_build_object('lease_owner', lease_owner) FROM ins
                )
                SELECT * FROM ins
                """,
                *columns,
                lease_seconds,
            )
        return _in_order(news, records)

    async def insert_submitted(
        self,
        news: Sequence[tuple[NewSettlement, str]],
        units: Sequence[Sequence[int]],
        signer: str,
        first_nonce: int,
        signed: Sequence[SignedTransaction],
        *,
        lease_seconds: float,
    ) -> list[tuple[SettlementRow, SignedTransaction]] | NotInserted:
        """`insert_many` and `store_transactions_at` in one statement: new settlements (each leased to its
        owner), stored already submitted with the transactions signed ahead for them, one per unit (`units`
        holds indices into `news`) for nonces `first_nonce`, `first_nonce` + 1, ... All of it, or nothing
        and why (`NotInserted`): that run is not the signer's next any more, or an authorization is already
        in the ledger. The caller then inserts and stores as usual. Answers each settlement's row and
        transaction, in order; its events are `received` then `submitted`, as on the usual path."""
        if [tx.nonce for tx in signed] != list(range(first_nonce, first_nonce + len(signed))):
            raise ValueError("transactions must be signed for consecutive nonces from first_nonce")
        tx_of: dict[int, SignedTransaction] = {}
        for unit, tx in zip(units, signed, strict=True):
            tx_of.update((i, tx) for i in unit)
        if sorted(tx_of) != list(range(len(news))):
            raise ValueError("every settlement must ride exactly one transaction")
        by_row = [tx_of[i] for i in range(len(news))]
        chain_id = news[0][0].key.chain_id
        try:
            async with span("db.settlement.insert_submitted", rows=len(news)):
                records = await self.pool.fetch(
                    """
                    WITH n AS (
                        UPDATE signer_nonces SET next_nonce = next_nonce + cardinality($18::text[])
                        WHERE chain_id = $20 AND address = $21 AND next_nonce = $22
                        RETURNING next_nonce
                    ), v AS (
                        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                             $6::numeric[], $7::numeric[], $8::numeric[], $9::text[],
                                             $10::int[], $11::text[], $12::jsonb[], $13::jsonb[],
                                             $14::bytea[], $15::text[], $16::text[], $17::bigint[])
                            AS v(chain_id, token, payer, auth_nonce, pay_to, amount, valid_after,
                                 valid_before, network, x402_version, payload_hash, payload, requirements,
                                 calldata, lease_owner, tx_hash, signer_nonce)
                        WHERE EXISTS (SELECT 1 FROM n)
                    ), ins AS (
                        INSERT INTO settlements (chain_id, token, payer, auth_nonce, pay_to, amount,
                            valid_after, valid_before, network, x402_version, payload_hash, payload,
                            requirements, calldata, status, tx_hash, attempts, submitted_at, lease_owner,
                            lease_until)
                        SELECT chain_id, token, payer, auth_nonce, pay_to, amount, valid_after, valid_before,
                               network, x402_version, payload_hash, payload, requirements, calldata,
                               'submitted', tx_hash, 1, now(), lease_owner, now() + make_interval(secs => $19)
                        FROM v
                        RETURNING *
                    ), t AS (
                        INSERT INTO settlement_transactions (tx_hash, chain_id, signer, signer_nonce, raw_tx,
                            max_fee_per_gas)
                        SELECT tx_hash, $20, $21, signer_nonce, raw_tx, max_fee_per_gas
                        FROM unnest($18::text[], $23::bigint[], $24::bytea[], $25::numeric[])
                            AS t(tx_hash, signer_nonce, raw_tx, max_fee_per_gas)
                        WHERE EXISTS (SELECT 1 FROM n)
                    ), m AS (
                        INSERT INTO settlement_transaction_members (tx_hash, settlement_id)
                        SELECT tx_hash, id FROM ins
                    ), ev AS (
                        INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
                        SELECT ins.id, e.from_status, e.to_status, e.detail
                        FROM ins JOIN v ON (v.chain_id, v.token, v.payer, v.auth_nonce)
                                           = (ins.chain_id, ins.token, ins.payer, ins.auth_nonce)
                        CROSS JOIN LATERAL (VALUES
                            (1, NULL::text, 'received'::text,
                                jsonb_build_object('lease_owner', ins.lease_owner)),
                            (2, 'received', 'submitted', jsonb_build_object('tx_hash', ins.tx_hash,
                                'signer', $21::text, 'signer_nonce', v.signer_nonce))
                        ) AS e(k, from_status, to_status, detail)
                        ORDER BY ins.id, e.k
                    )
                    SELECT * FROM ins
                    """,
                    *_new_columns(news),
                    [tx.tx_hash for tx in by_row],
                    [tx.nonce for tx in by_row],
                    [tx.tx_hash for tx in signed],
                    lease_seconds,
                    chain_id,
                    signer,
                    first_nonce,
                    [tx.nonce for tx in signed],
                    [tx.raw_tx for tx in signed],
                    [tx.max_fee_per_gas for tx in signed],
                )
        except asyncpg.UniqueViolationError as exc:
            # The whole statement wrote nothing. Only the nonce row's condition held for it to get this far;
            # any other duplicate (a transaction hash) would mean the guessed run was not free after all.
            if exc.constraint_name == "settlements_authorization_key":
                return NotInserted.KNOWN_AUTHORIZATION
            return NotInserted.NONCE_MOVED
        if not records:
            return NotInserted.NONCE_MOVED
        rows = _in_order(news, records)
        return [(row, tx) for row, tx in zip(rows, by_row, strict=True) if row is not None]

    async def get_by_key(self, key: SettlementKey) -> SettlementRow | None:
        r = await self.pool.fetchrow(
            "SELECT * FROM settlements WHERE chain_id=$1 AND token=$2 AND payer=$3 AND auth_nonce=$4",
            key.chain_id,
            key.token,
            key.payer,
            key.auth_nonce,
        )
        return SettlementRow.from_record(r) if r else None

    async def get(self, settlement_id: int) -> SettlementRow | None:
        r = await self.pool.fetchrow("SELECT * FROM settlements WHERE id=$1", settlement_id)
        return SettlementRow.from_record(r) if r else None

    async def rows_by_tx_hash(self, tx_hash: str) -> list[SettlementRow]:
        """The settlements a stored transaction carries: one, or several for a batch."""
        records = await self.pool.fetch(
            """SELECT s.* FROM settlements s JOIN settlement_transaction_members m ON m.settlement_id = s.id
               WHERE m.tx_hash = $1 ORDER BY s.id""",
            tx_hash.lower(),
        )
        return [SettlementRow.from_record(r) for r in records]

    async def transactions(self, settlement_id: int) -> list[StoredTransaction]:
        rows = await self.pool.fetch(
            f"""SELECT t.*, {_MEMBERS} FROM settlement_transactions t
                JOIN settlement_transaction_members m ON m.tx_hash = t.tx_hash
                WHERE m.settlement_id = $1 ORDER BY t.created_at, t.replacement""",
            settlement_id,
        )
        return [StoredTransaction.from_record(r) for r in rows]

    async def store_replacement(
        self, previous: StoredTransaction, signed: SignedTransaction
    ) -> StoredTransaction | None:
        """Stores a transaction that replaces `previous` (same signer nonce, higher fees) as the one its
        settlements now expect. None when none of them still expects `previous`, or when another process
        has replaced it already."""
        async with self.pool.acquire() as conn, conn.transaction():
            waiting = [
                r["id"]
                for r in await conn.fetch(
                    """SELECT id FROM settlements WHERE id = ANY($1::bigint[]) AND status = 'submitted'
                       AND tx_hash = $2 ORDER BY id FOR UPDATE""",
                    list(previous.settlement_ids),
                    previous.tx_hash,
                )
            ]
            if not waiting:
                return None
            latest = await conn.fetchval(
                """SELECT max(replacement) FROM settlement_transactions
                   WHERE chain_id = $1 AND signer = $2 AND signer_nonce = $3""",
                previous.chain_id,
                previous.signer,
                previous.signer_nonce,
            )
            if latest != previous.replacement:
                return None
            record = await conn.fetchrow(
                """
                WITH t AS (
                    INSERT INTO settlement_transactions (tx_hash, chain_id, signer, signer_nonce, raw_tx,
                        max_fee_per_gas, replacement)
                    VALUES ($1, $3, $4, $5, $6, $7, $8)
                    RETURNING *
                ), m AS (
                    INSERT INTO settlement_transaction_members (tx_hash, settlement_id)
                    SELECT $1, unnest($2::bigint[])
                ), u AS (
                    UPDATE settlements SET tx_hash = $1, attempts = attempts + 1, updated_at = now()
                    WHERE id = ANY($2::bigint[])
                ), ev AS (
                    INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
                    SELECT unnest($2::bigint[]), 'submitted', 'submitted',
                           jsonb_build_object('tx_hash', $1::text, 'replaces', $9::text,
                                              'signer_nonce', $5::bigint, 'max_fee_per_gas', $7::text)
                )
                SELECT t.*, $2::bigint[] AS settlement_ids FROM t
                """,
                signed.tx_hash,
                waiting,
                previous.chain_id,
                previous.signer,
                previous.signer_nonce,
                signed.raw_tx,
                signed.max_fee_per_gas,
                latest + 1,
                previous.tx_hash,
            )
        assert record is not None
        return StoredTransaction.from_record(record)

    async def sync_signer_nonce(self, chain_id: int, address: str, chain_nonce: int) -> None:
        """Never moves a nonce backwards: other replicas may have allocated past the chain's view."""
        await self.pool.execute(
            """INSERT INTO signer_nonces (chain_id, address, next_nonce) VALUES ($1, $2, $3)
               ON CONFLICT (chain_id, address)
               DO UPDATE SET next_nonce = GREATEST(signer_nonces.next_nonce, EXCLUDED.next_nonce)""",
            chain_id,
            address,
            chain_nonce,
        )

    async def store_transactions(
        self,
        units: Sequence[Sequence[SettlementRow]],
        signer: str,
        sign: Callable[[list[tuple[list[SettlementRow], int]]], list[SignedTransaction]],
    ) -> list[SignedTransaction | Exception]:
        """One database transaction locks the rows and the signer's nonce row, has the units that keep a
        row able to move signed for a run of consecutive nonces (one per unit: a unit of several rows is a
        batch that one transaction carries) and stores them as `store_transactions_at` does, so no nonce
        is ever handed out without bytes that can be (re)broadcast for it. Answers per row, units
        flattened in order: its transaction, or the IllegalTransition of a row whose status forbids the
        move (it leaves its unit and gets no transaction)."""
        rows = [row for unit in units for row in unit]
        sources = [a.value for a, b in ALLOWED if b is Status.SUBMITTED]
        async with (
            span("db.settlement.store_transactions", rows=len(rows)),
            self.pool.acquire() as conn,
            conn.transaction(),
        ):
            # Every row first, in id order (so two groups never deadlock on each other's rows), then the
            # nonce row: its CTE waits for all of `cur` (the count), as `_store_at` does, so no one holds
            # the nonce row while waiting for a row. It stays locked until commit: allocations of one
            # signer are serialised across replicas.
            locked = await conn.fetch(
                """
                WITH cur AS (
                    SELECT s.id, s.status FROM settlements s
                    JOIN unnest($1::bigint[]) AS u(id) ON u.id = s.id
                    ORDER BY s.id FOR UPDATE OF s
                ), nonce AS (
                    SELECT next_nonce FROM signer_nonces
                    WHERE chain_id = $2 AND address = $3 AND (SELECT count(*) FROM cur) >= 0 FOR UPDATE
                )
                SELECT cur.id, cur.status, nonce.next_nonce FROM cur LEFT JOIN nonce ON true
                """,
                [r.id for r in rows],
                rows[0].key.chain_id,
                signer,
            )
            statuses = {r["id"]: Status(r["status"]) for r in locked}
            refused: dict[int, Exception] = {}
            movable_units: list[list[SettlementRow]] = []
            for unit in units:
                movable: list[SettlementRow] = []
                for row in unit:
                    current = statuses.get(row.id)
                    if current is None:
                        refused[row.id] = RuntimeError(f"settlement {row.id} does not exist")
                    elif current.value not in sources:
                        refused[row.id] = IllegalTransition(
                            f"settlement cannot go from {current} to submitted"
                        )
                    else:
                        movable.append(row)
                if movable:
                    movable_units.append(movable)
            if not movable_units:
                return [refused[r.id] for r in rows]
            first = locked[0]["next_nonce"]
            if first is None:
                raise RuntimeError(f"signer {signer} has no nonce row; sync_signer_nonce first")
            signed = sign([(unit, first + i) for i, unit in enumerate(movable_units)])
            stored = await _store_at(conn, movable_units, signer, first, signed)
            if stored is None:  # both locks are held: the ledger cannot disagree with what it just said
                raise RuntimeError(f"the ledger refused transactions signed under its own locks ({signer})")
            moved = [row for unit in movable_units for row in unit]
            by_row = {row.id: tx for row, tx in zip(moved, stored, strict=True)}
        return [refused.get(r.id) or by_row[r.id] for r in rows]

    async def store_transactions_at(
        self,
        units: Sequence[Sequence[SettlementRow]],
        signer: str,
        first_nonce: int,
        signed: Sequence[SignedTransaction],
    ) -> list[SignedTransaction] | None:
        """`store_transactions` in one statement, for transactions signed ahead for nonces `first_nonce`,
        `first_nonce` + 1, ... (one per unit): stored only if that run is still the signer's next and every
        row may move; otherwise nothing is written and the answer is None (the caller then takes the locking
        path). The check, the allocation and the bytes commit together, as there: no nonce is handed out
        without bytes that can be (re)broadcast for it. Answers each row's transaction, units flattened."""
        async with span("db.settlement.store_transactions_at", rows=sum(len(u) for u in units)):
            return await _store_at(self.pool, units, signer, first_nonce, signed)

    async def rewind_unused_nonce(self, chain_id: int, signer: str, nonce: int, tx_hash: str) -> bool:
        """Undo an allocation whose transaction the node refused, if no later nonce was handed out. True when
        the transaction is gone from the ledger, also when an earlier undo already removed it: the nonce
        is then rewound once only, never under a transaction stored for it since."""
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(
                """SELECT 1 FROM settlement_transactions
                   WHERE tx_hash=$1 AND chain_id=$2 AND signer=$3 AND signer_nonce=$4 FOR UPDATE""",
                tx_hash,
                chain_id,
                signer,
                nonce,
            )
            if stored is None:
                return True
            done = await conn.fetchval(
                """UPDATE signer_nonces SET next_nonce = $3
                   WHERE chain_id=$1 AND address=$2 AND next_nonce=$3+1
                   RETURNING next_nonce""",
                chain_id,
                signer,
                nonce,
            )
            if done is None:
                return False
            await conn.execute("DELETE FROM settlement_transactions WHERE tx_hash=$1", tx_hash)
            return True

    async def forget_transaction(self, tx_hash: str) -> None:
        """Drops a transaction the node refused outright (it can never be mined)."""
        await self.pool.execute("DELETE FROM settlement_transactions WHERE tx_hash=$1", tx_hash)

    async def finish(
        self,
        settlement_id: int,
        new: Status,
        *,
        tx_hash: str | None = None,
        block_number: int | None = None,
        block_hash: str | None = None,
        gas_used: int | None = None,
        error_reason: str | None = None,
        error_message: str | None = None,
    ) -> SettlementRow:
        """Moves a row to a terminal state; if another process got there first, returns its row unchanged."""
        sources = [a.value for a, b in ALLOWED if b is new]
        detail = {
            k: v
            for k, v in {
                "tx_hash": tx_hash,
                "block_number": block_number,
                "error_reason": error_reason,
            }.items()
            if v is not None
        }
        async with span("db.settlement.finish"):
            # One statement: lock, move only from a status the state machine allows, record the event. A row
            # another process already finished is left as it is, and read back.
            r = await self.pool.fetchrow(
                """
                WITH cur AS (SELECT id, status FROM settlements WHERE id = $1 FOR UPDATE),
                upd AS (
                    UPDATE settlements s SET status = $2, tx_hash = COALESCE($3, s.tx_hash),
                        block_number = $4, block_hash = $5, gas_used = $6,
                        error_reason = $7, error_message = $8,
                        finalized_at = now(), updated_at = now(), lease_owner = NULL, lease_until = NULL
                    FROM cur WHERE s.id = cur.id AND cur.status = ANY($9::text[])
                    RETURNING s.*
                ), ev AS (
                    INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
                    SELECT upd.id, cur.status, $2, $10 FROM upd, cur
                )
                SELECT * FROM upd
                """,
                settlement_id,
                new.value,
                tx_hash,
                block_number,
                block_hash,
                gas_used,
                error_reason,
                error_message,
                sources,
                detail,
            )
            if r is None:
                r = await self.pool.fetchrow("SELECT * FROM settlements WHERE id = $1", settlement_id)
                assert r is not None
                current = Status(r["status"])
                if not current.terminal:
                    check_transition(current, new)  # raises: the caller asked for an illegal move
            return SettlementRow.from_record(r)

    async def confirm_many(self, confirmations: Sequence[Confirmation]) -> list[SettlementRow]:
        """Group commit of `finish(..., CONFIRMED)`: one statement moves every submitted row of the group
        and records its events; a row another process already finished is read back as it is."""
        ids = [c.settlement_id for c in confirmations]
        async with span("db.settlement.confirm_many", rows=len(confirmations)):
            records = await self.pool.fetch(
                """
                WITH v AS (
                    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
                        AS v(id, tx_hash, block_number, block_hash, gas_used)
                ), cur AS (
                    SELECT s.id, s.status FROM settlements s
                    WHERE s.id = ANY($1::bigint[]) AND s.status = ANY($6::text[])
                    ORDER BY s.id FOR UPDATE
                ), upd AS (
                    UPDATE settlements s SET status = 'confirmed', tx_hash = v.tx_hash,
                        block_number = v.block_number, block_hash = v.block_hash, gas_used = v.gas_used,
                        error_reason = NULL, error_message = NULL, finalized_at = now(), updated_at = now(),
                        lease_owner = NULL, lease_until = NULL
                    FROM v JOIN cur ON cur.id = v.id WHERE s.id = v.id
                    RETURNING s.*
                ), ev AS (
                    INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
                    SELECT upd.id, cur.status, 'confirmed',
                           jsonb_build_object('tx_hash', upd.tx_hash, 'block_number', upd.block_number)
                    FROM upd JOIN cur ON cur.id = upd.id
                )
                SELECT * FROM upd
                """,
                ids,
                [c.tx_hash for c in confirmations],
                [c.block_number for c in confirmations],
                [c.block_hash for c in confirmations],
                [c.gas_used for c in confirmations],
                [a.value for a, b in ALLOWED if b is Status.CONFIRMED],
            )
            by_id = {r["id"]: SettlementRow.from_record(r) for r in records}
            missing = [i for i in ids if i not in by_id]
            if missing:
                found = "SELECT * FROM settlements WHERE id = ANY($1::bigint[])"
                for r in await self.pool.fetch(found, missing):
                    by_id[r["id"]] = SettlementRow.from_record(r)
            return [by_id[i] for i in ids]

    async def release(self, settlement_id: int, owner: str) -> None:
        await self.pool.execute(
            "UPDATE settlements SET lease_owner=NULL, lease_until=NULL WHERE id=$1 AND lease_owner=$2",
            settlement_id,
            owner,
        )

    async def renew_lease(self, settlement_id: int, owner: str, lease_seconds: float) -> bool:
        """Extends `owner`'s lease of an in-flight row before a long step (a re-send); False when the row
        is no longer in flight or no longer `owner`'s, and then it must not be sent again."""
        renewed = await self.pool.fetchval(
            """UPDATE settlements SET lease_until=now() + make_interval(secs => $3)
               WHERE id=$1 AND lease_owner=$2 AND status IN ('received','submitted') RETURNING id""",
            settlement_id,
            owner,
            lease_seconds,
        )
        return renewed is not None

    async def claim_in_flight(
        self, owner: str, lease_seconds: float, limit: int = 100
    ) -> list[SettlementRow]:
        """Leases in-flight rows whose owner is gone (lease lapsed) to `owner`."""
        rows = await self.pool.fetch(
            """UPDATE settlements SET lease_owner=$1, lease_until=now() + make_interval(secs => $2)
               WHERE id IN (SELECT id FROM settlements
                            WHERE status IN ('received','submitted')
                              AND (lease_until IS NULL OR lease_until < now())
                            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING *""",
            owner,
            lease_seconds,
            limit,
        )
        return [SettlementRow.from_record(r) for r in rows]

    async def claim_one(self, settlement_id: int, owner: str, lease_seconds: float) -> SettlementRow | None:
        r = await self.pool.fetchrow(
            """UPDATE settlements SET lease_owner=$2, lease_until=now() + make_interval(secs => $3)
               WHERE id=$1 AND status IN ('received','submitted')
                 AND (lease_until IS NULL OR lease_until < now())
               RETURNING *""",
            settlement_id,
            owner,
            lease_seconds,
        )
        return SettlementRow.from_record(r) if r else None

    async def count_in_flight(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM settlements WHERE status IN ('received','submitted')"
            )
        )

    async def events(self, settlement_id: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT from_status, to_status, detail, at FROM settlement_events"
            " WHERE settlement_id=$1 ORDER BY id",
            settlement_id,
        )
        return [dict(r) for r in rows]


async def _store_at(
    conn: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy,
    units: Sequence[Sequence[SettlementRow]],
    signer: str,
    first_nonce: int,
    signed: Sequence[SignedTransaction],
) -> list[SignedTransaction] | None:
    """The one statement that allocates a signer's nonces and stores the transactions signed for them (see
    `Ledger.store_transactions_at`)."""
    if [tx.nonce for tx in signed] != list(range(first_nonce, first_nonce + len(signed))):
        raise ValueError("transactions must be signed for consecutive nonces from first_nonce")
    rows = [row for unit in units for row in unit]
    by_row = [tx for unit, tx in zip(units, signed, strict=True) for _ in unit]
    sources = [a.value for a, b in ALLOWED if b is Status.SUBMITTED]
    stored = await conn.fetchval(
        """
        WITH cur AS (
            SELECT s.id, s.status FROM settlements s
            WHERE s.id = ANY($7::bigint[]) AND s.status = ANY($11::text[])
            ORDER BY s.id FOR UPDATE
        ), n AS (
            UPDATE signer_nonces SET next_nonce = next_nonce + cardinality($3::text[])
            WHERE chain_id = $1 AND address = $2 AND next_nonce = $10
              AND (SELECT count(*) FROM cur) = cardinality($7::bigint[])
            RETURNING next_nonce
        ), t AS (
            INSERT INTO settlement_transactions (tx_hash, chain_id, signer, signer_nonce, raw_tx,
                max_fee_per_gas)
            SELECT tx_hash, $1, $2, signer_nonce, raw_tx, max_fee_per_gas
            FROM unnest($3::text[], $4::bigint[], $5::bytea[], $6::numeric[])
                AS t(tx_hash, signer_nonce, raw_tx, max_fee_per_gas)
            WHERE EXISTS (SELECT 1 FROM n)
        ), v AS (
            SELECT v.*, cur.status AS from_status
            FROM unnest($7::bigint[], $8::text[], $9::bigint[]) AS v(settlement_id, tx_hash, signer_nonce)
            JOIN cur ON cur.id = v.settlement_id
            WHERE EXISTS (SELECT 1 FROM n)
        ), m AS (
            INSERT INTO settlement_transaction_members (tx_hash, settlement_id)
            SELECT tx_hash, settlement_id FROM v
        ), u AS (
            UPDATE settlements s SET status = 'submitted', tx_hash = v.tx_hash,
                attempts = attempts + 1, submitted_at = COALESCE(submitted_at, now()), updated_at = now()
            FROM v WHERE s.id = v.settlement_id
        ), ev AS (
            INSERT INTO settlement_events (settlement_id, from_status, to_status, detail)
            SELECT settlement_id, from_status, 'submitted',
                   jsonb_build_object('tx_hash', tx_hash, 'signer', $2::text, 'signer_nonce', signer_nonce)
            FROM v
        )
        SELECT count(*) FROM n
        """,
        rows[0].key.chain_id,
        signer,
        [tx.tx_hash for tx in signed],
        [tx.nonce for tx in signed],
        [tx.raw_tx for tx in signed],
        [tx.max_fee_per_gas for tx in signed],
        [r.id for r in rows],
        [tx.tx_hash for tx in by_row],
        [tx.nonce for tx in by_row],
        first_nonce,
        sources,
    )
    return by_row if stored else None


def _new_columns(news: Sequence[tuple[NewSettlement, str]]) -> list[list[Any]]:
    """New settlements as the 15 column arrays `insert_many` and `insert_submitted` unnest."""
    columns: list[list[Any]] = [[] for _ in range(15)]
    for new, owner in news:
        k = new.key
        values = (
            k.chain_id,
            k.token,
            k.payer,
            k.auth_nonce,
            new.pay_to,
            new.amount,
            new.valid_after,
            new.valid_before,
            new.network,
            new.x402_version,
            new.payload_hash,
            new.payload,
            new.requirements,
            new.calldata,
            owner,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _in_order(
    news: Sequence[tuple[NewSettlement, str]], records: Sequence[asyncpg.Record]
) -> list[SettlementRow | None]:
    """Each new settlement's stored row, or None where it was not stored."""
    by_key = {
        (r["chain_id"], r["token"], r["payer"], r["auth_nonce"]): SettlementRow.from_record(r)
        for r in records
    }
    out: list[SettlementRow | None] = []
    for new, _ in news:
        k = new.key
        out.append(by_key.pop((k.chain_id, k.token, k.payer, k.auth_nonce), None))
    return out
