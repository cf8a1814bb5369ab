"""Stores and broadcasts settlement transactions in groups, one submitter per network.

Settlements that reach the send step while a group is being stored and sent wait and go together as the
next group: one database transaction allocates a run of consecutive nonces from one signer key and stores
every signed transaction (ledger first), then all of them are broadcast at once. Under load that turns a
commit and a lone block per settlement into one commit per group and blocks that carry many transfers; a
settlement that arrives alone goes at once."""

from __future__ import annotations

from dataclasses import dataclass

from shared.coalescer import Coalescer
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth

from .ledger import Ledger, SettlementRow, SignedTransaction
from .signers import FeeQuote, Signer, SignerPool


@dataclass(frozen=True, slots=True)
class Submission:
    row: SettlementRow
    to: str
    calldata: bytes
    gas: int
    fees: FeeQuote


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A stored transaction and what the node said. `refused` is None when the node took it, already knew
    it, or could not be reached (then the reconciler re-broadcasts the stored bytes)."""

    signed: SignedTransaction
    signer: Signer
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
    ) -> None:
        self.ledger = ledger
        self.eth = eth
        self.signers = signers
        self.chain_id = chain_id
        # Groups of different signers may commit together; groups of one signer queue on its nonce row.
        self._groups: Coalescer[Submission, tuple[SignedTransaction, Signer]] = Coalescer(
            self._flush, max_batch=max_group, max_concurrent=min(len(signers.signers), 2)
        )

    async def submit(self, submission: Submission) -> Broadcast:
        """Stores (in a group) and broadcasts with whichever signer the group gets. The signer is acquired
        for the caller, who releases it once the transaction is resolved."""
        signed, signer = await self._groups.submit(submission)
        # Each caller broadcasts its own transaction the moment the group commits, so the next group's
        # commit overlaps these sends; a node holds a nonce that arrives early until the gap fills.
        return await self._broadcast(signed, signer)

    async def submit_as(self, submission: Submission, signer: Signer) -> Broadcast:
        """A group of one with a chosen signer: retries after a refusal must avoid the keys that failed."""
        (result,) = await self._store([submission], signer)
        if isinstance(result, Exception):
            raise result
        return await self._broadcast(*result)

    async def _flush(self, group: list[Submission]) -> list[tuple[SignedTransaction, Signer] | Exception]:
        return await self._store(group, self.signers.pick())

    async def _store(
        self, group: list[Submission], signer: Signer
    ) -> list[tuple[SignedTransaction, Signer] | Exception]:
        by_id = {s.row.id: s for s in group}

        def sign(pairs: list[tuple[SettlementRow, int]]) -> list[SignedTransaction]:
            return [
                signer.sign_call(
                    chain_id=self.chain_id,
                    nonce=nonce,
                    to=by_id[row.id].to,
                    data=by_id[row.id].calldata,
                    gas=by_id[row.id].gas,
                    fees=by_id[row.id].fees,
                )
                for row, nonce in pairs
            ]

        for _ in group:
            self.signers.acquire(signer)
        try:
            stored = await self.ledger.store_transactions([s.row for s in group], signer.address, sign)
        except BaseException:
            for _ in group:
                self.signers.release(signer)
            raise
        out: list[tuple[SignedTransaction, Signer] | Exception] = []
        for result in stored:
            if isinstance(result, Exception):
                self.signers.release(signer)
                out.append(result)
            else:
                out.append((result, signer))
        return out

    async def _broadcast(self, signed: SignedTransaction, signer: Signer) -> Broadcast:
        return Broadcast(signed, signer, await self._send(signed))

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
