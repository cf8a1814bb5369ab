"""Stores and broadcasts settlement transactions in groups, one submitter per network.

Settlements that reach the send step while a group is being stored and sent wait and go together as the
next group: one database transaction allocates nonces from one signer key and stores the signed
transactions (ledger first), then they are broadcast. The plain transfers of a group share one
transaction (see batching.py); under load that turns a commit, a nonce and a block per settlement into one
per group, while a settlement that arrives alone goes at once, as the transfer itself."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from shared.coalescer import Coalescer
from shared.evm import calls
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth

from .batching import plan_units, transaction_for
from .ledger import Ledger, SettlementRow, SignedTransaction
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
class Stored:
    signed: SignedTransaction
    signer: Signer
    carries: int  # settlements in the transaction: 1, or the batch size


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A stored transaction and what the node said. `refused` is None when the node took it, already knew
    it, or could not be reached (then the reconciler re-broadcasts the stored bytes)."""

    signed: SignedTransaction
    signer: Signer
    carries: int
    refused: RpcError | None


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
        on_transaction: Callable[[int, int], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.eth = eth
        self.signers = signers
        self.chain_id = chain_id
        self.max_batch = max_batch
        self._on_transaction = on_transaction  # (chain id, settlements carried), per stored transaction
        self._multicall_deployed: bool | None = None
        self._sending: dict[str, asyncio.Future[RpcError | None]] = {}
        # Each key's next nonce as this process last stored it: the next group signs for it ahead and
        # stores in one statement if the ledger agrees (`Ledger.store_transactions_at`). A guess, never
        # trusted: a wrong one costs a signing and the locking path.
        self._next_nonce: dict[str, int] = {}
        self._key_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Groups of different signers may commit together; groups of one signer queue on its nonce row.
        self._groups: Coalescer[Submission, Stored] = Coalescer(
            self._flush, max_batch=max_group, max_concurrent=min(len(signers.signers), 2)
        )

    async def submit(self, submission: Submission) -> Broadcast:
        """Stores (in a group) and broadcasts with whichever signer the group gets. The signer is acquired
        for the caller, who releases it once the transaction is resolved."""
        stored = await self._groups.submit(submission)
        # Broadcast the moment the group commits, so the next group's commit overlaps these sends; a node
        # holds a nonce that arrives early until the gap fills.
        return await self._broadcast(stored)

    async def submit_as(self, submission: Submission, signer: Signer) -> Broadcast:
        """A transaction of its own with a chosen signer: a retry after a refusal avoids the failed keys."""
        (result,) = await self._store([[submission]], signer)
        if isinstance(result, Exception):
            raise result
        return await self._broadcast(result)

    async def _flush(self, group: list[Submission]) -> list[Stored | Exception]:
        max_batch = self.max_batch if len(group) > 1 and await self._can_batch() else 1
        units = plan_units(group, max_batch=max_batch)
        stored = await self._store(units, self.signers.pick())
        by_id = {s.row.id: r for s, r in zip([s for u in units for s in u], stored, strict=True)}
        return [by_id[s.row.id] for s in group]

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
        by_id = {s.row.id: s for unit in units for s in unit}

        def sign(pairs: list[tuple[list[SettlementRow], int]]) -> list[SignedTransaction]:
            out = []
            for rows, nonce in pairs:
                call = transaction_for([by_id[row.id] for row in rows])
                out.append(
                    signer.sign_call(
                        chain_id=self.chain_id,
                        nonce=nonce,
                        to=call.to,
                        data=call.data,
                        gas=call.gas,
                        fees=call.fees,
                    )
                )
            return out

        rows = [[s.row for s in unit] for unit in units]
        count = len(by_id)
        for _ in range(count):
            self.signers.acquire(signer)
        try:
            # One group per key at a time here (the ledger's nonce row serialises them anyway), so the
            # guess below is the one this process's last group left.
            async with self._key_locks[signer.address]:
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
        carries = Counter(r.tx_hash for r in results if not isinstance(r, Exception))
        if self._on_transaction is not None:
            for settlements in carries.values():
                self._on_transaction(self.chain_id, settlements)
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
        refused = await asyncio.shield(sending)
        return Broadcast(stored.signed, stored.signer, stored.carries, refused)

    async def _send(self, signed: SignedTransaction) -> RpcError | None:
        try:
            # Its own request rather than a JSON-RPC batch: a node works through a batch one call after
            # another, but takes concurrent requests side by side, so concurrent broadcasts share blocks.
            await self.eth.send_raw_transaction(signed.raw_tx, batch=False)
        except RpcUnavailable:
            return None  # stored and maybe sent: the reconciler re-broadcasts the same bytes
        except RpcError as exc:
            return None if _already_known(exc) else exc
        return None


def _already_known(exc: RpcError) -> bool:
    text = exc.message.lower()
    return "already known" in text or "already imported" in text or "known transaction" in text
