"""Stores and broadcasts settlement transactions in groups, one submitter per network.

Settlements that reach the send step while a group is being stored and sent wait and go together as the
next group: one commit allocates nonces from one signer key and stores the signed transactions (ledger
first), then they are broadcast. A new settlement's row goes in with its group (`submit_new`): signed ahead
for the nonce the key should be at, rows, nonces and transactions are one statement when the ledger agrees,
and an insert then the usual store when it does not. The plain transfers of a group share one transaction
(see batching.py); under load that turns a commit, a nonce and a block per settlement into one per group,
while a settlement that arrives alone goes at once, as the transfer itself."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from shared.coalescer import Coalescer
from shared.evm import calls
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth

from .batching import Batchable, plan_units, transaction_for
from .ledger import Ledger, NewSettlement, NotInserted, SettlementRow, SignedTransaction
from .signers import FeeQuote, Signer, SignerPool


@dataclass(frozen=True, slots=True)
class Submission:
    row: SettlementRow
    to: str
    calldata: bytes
    gas: int
    fees: FeeQuote

    @property
    def token(self) -> str:
        return self.row.key.token


@dataclass(frozen=True, slots=True)
class NewSubmission:
    """A settlement not in the ledger yet, with what its transaction needs (`Submitter.submit_new`)."""

    new: NewSettlement
    owner: str  # the attempt its row is leased to
    to: str
    calldata: bytes
    gas: int
    fees: FeeQuote

    @property
    def token(self) -> str:
        return self.new.key.token

    def of(self, row: SettlementRow) -> Submission:
        return Submission(row, self.to, self.calldata, self.gas, self.fees)


@dataclass(frozen=True, slots=True)
class Stored:
    signed: SignedTransaction
    signer: Signer
    carries: int  # settlements in the transaction: 1, or the batch size


@dataclass(frozen=True, slots=True)
class Entered:
    """A new settlement's row, as inserted, and its stored transaction."""

    row: SettlementRow
    stored: Stored


class Refusal:
    """The node's refusal of one send. Every settlement of a batch gets this same object (they share the
    send), so what undoes the transaction (a nonce rewind, a catch-up) runs once for all of them."""

    def __init__(self, error: RpcError) -> None:
        self.error = error
        self._undo: asyncio.Future[bool] | None = None

    async def undo_once(self, undo: Callable[[], Awaitable[bool]]) -> bool:
        """`undo`'s answer, run by the first caller only. Shielded: a caller cancelled while it runs must
        not leave the others with a half-undone transaction."""
        if self._undo is None:
            self._undo = asyncio.ensure_future(undo())
        return await asyncio.shield(self._undo)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A stored transaction and what the node said. `refusal` is None when the node took it, already knew
    it, or could not be reached (then the reconciler re-broadcasts the stored bytes)."""

    signed: SignedTransaction
    signer: Signer
    carries: int
    refusal: Refusal | None


class Submitter:
    def __init__(
        self,
        ledger: Ledger,
        eth: Eth,
        signers: SignerPool,
        chain_id: int,
        *,
        max_group: int = 100,
        max_batch: int = 1,
        lease_seconds: float = 30.0,
        on_transaction: Callable[[int, int], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.eth = eth
        self.signers = signers
        self.chain_id = chain_id
        self.max_batch = max_batch
        self.lease_seconds = lease_seconds  # a new settlement's row is leased to its attempt this long
        self._on_transaction = on_transaction  # (chain id, settlements carried), per stored transaction
        self._multicall_deployed: bool | None = None
        self._sending: dict[str, asyncio.Future[Refusal | None]] = {}
        # Each key's next nonce as this process last stored it: the next group signs for it ahead and
        # stores in one statement if the ledger agrees (`Ledger.store_transactions_at`). A guess, never
        # trusted: a wrong one costs a signing and the locking path.
        self._next_nonce: dict[str, int] = {}
        self._key_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Groups of different signers may commit together; groups of one signer queue on its nonce row.
        # A group holds at least one full batch, whatever `max_batch` is configured.
        max_group = max(max_group, max_batch)
        self._groups: Coalescer[Submission, Stored] = Coalescer(
            self._flush, max_batch=max_group, max_concurrent=min(len(signers.signers), 2)
        )
        self._new_groups: Coalescer[NewSubmission, Entered | None] = Coalescer(
            self._flush_new, max_batch=max_group, max_concurrent=min(len(signers.signers), 2)
        )

    async def submit(self, submission: Submission) -> Broadcast:
        """Stores (in a group) and broadcasts with whichever signer the group gets. The signer is acquired
        for the caller, who releases it once the transaction is resolved."""
        stored = await self._groups.submit(submission)
        # Broadcast the moment the group commits, so the next group's commit overlaps these sends; a node
        # holds a nonce that arrives early until the gap fills.
        return await self._broadcast(stored)

    async def submit_new(self, submission: NewSubmission) -> tuple[SettlementRow, Broadcast] | None:
        """A settlement not in the ledger yet: stored with its transaction (in a group; one statement when
        the key's nonce is guessed right) and broadcast, or None when its authorization is already in the
        ledger (nothing stored or sent for it). The signer is acquired for the caller, as with `submit`."""
        entered = await self._new_groups.submit(submission)
        if entered is None:
            return None
        return entered.row, await self._broadcast(entered.stored)

    async def submit_as(self, submission: Submission, signer: Signer) -> Broadcast:
        """A transaction of its own with a chosen signer: a retry after a refusal avoids the failed keys."""
        async with self._key_locks[signer.address]:
            (result,) = await self._store([[submission]], signer)
        if isinstance(result, Exception):
            raise result
        return await self._broadcast(result)

    async def _flush(self, group: list[Submission]) -> list[Stored | Exception]:
        max_batch = await self._max_batch(len(group))
        units = plan_units(group, max_batch=max_batch)
        signer = self.signers.pick()
        async with self._key_locks[signer.address]:
            stored = await self._store(units, signer)
        by_id = {s.row.id: r for s, r in zip([s for u in units for s in u], stored, strict=True)}
        return [by_id[s.row.id] for s in group]

    async def _flush_new(self, group: list[NewSubmission]) -> list[Entered | Exception | None]:
        max_batch = await self._max_batch(len(group))
        units = plan_units(group, max_batch=max_batch)
        signer = self.signers.pick()
        async with self._key_locks[signer.address]:
            ahead = await self._insert_ahead(units, signer)
            if ahead is not None:
                return [ahead[id(s)] for s in group]
            # No guess, or the ledger disagreed: the rows go in as received, then as any group does.
            rows = await self.ledger.insert_many(
                [(s.new, s.owner) for s in group], lease_seconds=self.lease_seconds
            )
            placed = plan_units(
                [s.of(row) for s, row in zip(group, rows, strict=True) if row is not None],
                max_batch=max_batch,
            )
            stored = await self._store(placed, signer) if placed else []
        flat = [p.row.id for unit in placed for p in unit]
        by_id: dict[int, Stored | Exception] = dict(zip(flat, stored, strict=True))
        out: list[Entered | Exception | None] = []
        for row in rows:
            if row is None:
                out.append(None)
                continue
            result = by_id[row.id]
            out.append(result if isinstance(result, Exception) else Entered(row, result))
        return out

    async def _max_batch(self, group_size: int) -> int:
        return self.max_batch if group_size > 1 and await self._can_batch() else 1

    async def _insert_ahead(
        self, units: list[list[NewSubmission]], signer: Signer
    ) -> dict[int, Entered] | None:
        """New settlements stored already submitted, with transactions signed for the nonces this key
        should be at, in one statement (`Ledger.insert_submitted`); None (nothing written) without a guess
        or when the ledger disagrees or knows one of the authorizations. Only the first drops the guess: a
        known authorization says nothing about the key. Keyed by id() of each submission. The caller holds
        the key's lock."""
        first = self._next_nonce.get(signer.address)
        if first is None:
            return None
        flat = [s for unit in units for s in unit]
        index = {id(s): i for i, s in enumerate(flat)}
        signed = self._sign(signer, units, first)
        for _ in flat:
            self.signers.acquire(signer)
        try:
            entered = await self.ledger.insert_submitted(
                [(s.new, s.owner) for s in flat],
                [[index[id(s)] for s in unit] for unit in units],
                signer.address,
                first,
                signed,
                lease_seconds=self.lease_seconds,
            )
        except BaseException:
            self._next_nonce.pop(signer.address, None)
            for _ in flat:
                self.signers.release(signer)
            raise
        if isinstance(entered, NotInserted):
            if entered is NotInserted.NONCE_MOVED:
                self._next_nonce.pop(signer.address, None)
            for _ in flat:
                self.signers.release(signer)
            return None
        self._next_nonce[signer.address] = first + len(units)
        carries = self._count(tx for _, tx in entered)
        return {
            id(s): Entered(row, Stored(tx, signer, carries[tx.tx_hash]))
            for s, (row, tx) in zip(flat, entered, strict=True)
        }

    def _sign(
        self, signer: Signer, units: Sequence[Sequence[Batchable]], first: int
    ) -> list[SignedTransaction]:
        """One transaction per unit, for consecutive nonces from `first`."""
        out = []
        for i, unit in enumerate(units):
            call = transaction_for(unit)
            out.append(
                signer.sign_call(
                    chain_id=self.chain_id,
                    nonce=first + i,
                    to=call.to,
                    data=call.data,
                    gas=call.gas,
                    fees=call.fees,
                )
            )
        return out

    def _count(self, transactions: Iterable[SignedTransaction]) -> Counter[str]:
        """Settlements per stored transaction, reported once per transaction."""
        carries = Counter(tx.tx_hash for tx in transactions)
        if self._on_transaction is not None:
            for settlements in carries.values():
                self._on_transaction(self.chain_id, settlements)
        return carries

    async def _can_batch(self) -> bool:
        """Batches need Multicall3 where public chains have it; a chain without it settles one by one."""
        if self.max_batch <= 1:
            return False
        if self._multicall_deployed is None:
            try:
                self._multicall_deployed = bool(await self.eth.get_code(calls.MULTICALL3_ADDRESS))
            except (RpcError, RpcUnavailable):
                return False
        return self._multicall_deployed

    async def _store(self, units: list[list[Submission]], signer: Signer) -> list[Stored | Exception]:
        """The caller holds the key's lock: one group per key at a time here (the ledger's nonce row
        serialises them anyway), so the guess is the one this process's last group left."""
        by_id = {s.row.id: s for unit in units for s in unit}

        def sign(pairs: list[tuple[list[SettlementRow], int]]) -> list[SignedTransaction]:
            return [self._sign(signer, [[by_id[row.id] for row in rows]], nonce)[0] for rows, nonce in pairs]

        rows = [[s.row for s in unit] for unit in units]
        count = len(by_id)
        for _ in range(count):
            self.signers.acquire(signer)
        try:
            results = await self._store_ahead(rows, signer.address, sign)
            if results is None:
                results = await self.ledger.store_transactions(rows, signer.address, sign)
            stored = [r.nonce for r in results if not isinstance(r, Exception)]
            if stored:
                self._next_nonce[signer.address] = max(stored) + 1
        except BaseException:
            self._next_nonce.pop(signer.address, None)
            for _ in range(count):
                self.signers.release(signer)
            raise
        carries = self._count(r for r in results if not isinstance(r, Exception))
        out: list[Stored | Exception] = []
        for result in results:
            if isinstance(result, Exception):
                self.signers.release(signer)
                out.append(result)
            else:
                out.append(Stored(result, signer, carries[result.tx_hash]))
        return out

    async def _store_ahead(
        self,
        rows: list[list[SettlementRow]],
        signer: str,
        sign: Callable[[list[tuple[list[SettlementRow], int]]], list[SignedTransaction]],
    ) -> list[SignedTransaction | Exception] | None:
        """Signed for the nonces this key should be at and stored in one statement, or None (nothing
        written) when the ledger disagrees: another replica used the key, or a row may no longer move."""
        first = self._next_nonce.get(signer)
        if first is None:
            return None
        signed = sign([(unit, first + i) for i, unit in enumerate(rows)])
        stored = await self.ledger.store_transactions_at(rows, signer, first, signed)
        if stored is None:
            self._next_nonce.pop(signer, None)
            return None
        return list(stored)

    def forget_nonce(self, signer: str) -> None:
        """The key's nonce moved outside a group (a rewind, a catch-up with the chain): guess no more."""
        self._next_nonce.pop(signer, None)

    async def _broadcast(self, stored: Stored) -> Broadcast:
        # The settlements of a batch share one send.
        tx_hash = stored.signed.tx_hash
        sending = self._sending.get(tx_hash)
        if sending is None:
            sending = asyncio.ensure_future(self._send(stored.signed))
            self._sending[tx_hash] = sending
            sending.add_done_callback(lambda _: self._sending.pop(tx_hash, None))
        try:
            refusal = await asyncio.shield(sending)
        except BaseException:
            self.signers.release(stored.signer)  # cancelled: no caller gets the Broadcast that releases it
            raise
        return Broadcast(stored.signed, stored.signer, stored.carries, refusal)

    async def _send(self, signed: SignedTransaction) -> Refusal | None:
        try:
            # Its own request rather than a JSON-RPC batch: a node works through a batch one call after
            # another, but takes concurrent requests side by side, so concurrent broadcasts share blocks.
            await self.eth.send_raw_transaction(signed.raw_tx, batch=False)
        except RpcUnavailable:
            return None  # stored and maybe sent: the reconciler re-broadcasts the same bytes
        except RpcError as exc:
            # A node that could not take it now has not refused it: stored, maybe sent, re-broadcast later.
            return None if exc.is_already_known or exc.is_transient else Refusal(exc)
        return None
