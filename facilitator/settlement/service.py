"""Settlement: ledger first, then one transaction, then a bounded wait for its receipt.

A repeat of an authorization already in the ledger never sends anything: it waits for (or reads) the
outcome of the first attempt, so every caller gets the same answer and the same transaction hash."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import structlog

from shared.coalescer import Coalescer
from shared.evm.transfer_logs import MissingEvent
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.x402 import reasons
from shared.x402.models import SettleResponse

from ..exact_evm.payment import ExactPayment, Rejected
from ..exact_evm.verifier import ExactEvmVerifier, VerifiedPayment
from ..runtime import NetworkRuntime
from .fees import FeeCapExceeded
from .ledger import Confirmation, Ledger, NewSettlement, SettlementKey, SettlementRow, SignedTransaction
from .receipt_checks import describe, receipt_succeeded, settlement_missing
from .recent import RecentVerifications
from .signers import FeeQuote, Signer
from .states import Status
from .submitter import Broadcast, NewSubmission, Submission, Submitter

log = structlog.get_logger(__name__)

_DUPLICATE_POLL_SECONDS = 0.05


def settlement_key(payment: ExactPayment, chain_id: int) -> SettlementKey:
    return SettlementKey(
        chain_id, payment.requirements.asset, payment.payer, "0x" + payment.authorization.nonce.hex()
    )


def payload_hash(payment: ExactPayment) -> str:
    a = payment.authorization
    # uint256 values as strings: JSON integers (and orjson) stop at 64 bits.
    material = orjson.dumps(
        [
            a.from_,
            a.to,
            str(a.value),
            str(a.valid_after),
            str(a.valid_before),
            a.nonce.hex(),
            payment.signature.hex(),
            payment.requirements.asset,
            payment.requirements.pay_to,
            str(payment.requirements.amount),
        ]
    )
    return hashlib.sha256(material).hexdigest()


def response_for(row: SettlementRow) -> SettleResponse:
    """The one answer a settlement row gives, whoever asks and however often."""
    payer = row.key.payer
    if row.status is Status.CONFIRMED:
        return SettleResponse(
            success=True,
            transaction=row.tx_hash or "",
            network=row.network,
            payer=payer,
            amount=str(row.amount),
        )
    if row.status is Status.FAILED:
        return SettleResponse(
            success=False,
            error_reason=row.error_reason,
            error_message=row.error_message,
            transaction=row.tx_hash or "",
            network=row.network,
            payer=payer,
        )
    return SettleResponse(
        success=False,
        error_reason=reasons.SETTLEMENT_PENDING,
        error_message="the transaction is broadcast and not yet confirmed; settle again or poll /receipt",
        transaction=row.tx_hash or "",
        network=row.network,
        payer=payer,
    )


class SettlementService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        verifier: ExactEvmVerifier,
        networks: dict[int, NetworkRuntime],
        owner: str,
        lease_seconds: float = 30.0,
        simulate: bool = True,
        verify_reuse_seconds: float = 0.0,
        on_transaction: Callable[[int, int], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.verifier = verifier
        self.networks = networks
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.simulate = simulate
        self._local: dict[SettlementKey, asyncio.Future[SettleResponse]] = {}
        self._recent = RecentVerifications(verify_reuse_seconds)
        self.submitters = {
            chain_id: Submitter(
                ledger,
                rt.eth,
                rt.signers,
                chain_id,
                max_batch=rt.settings.max_batch_transfers,
                lease_seconds=lease_seconds,
                on_transaction=on_transaction,
            )
            for chain_id, rt in networks.items()
        }
        # Receipts arrive together (one poll serves every waiter): their confirmations commit together.
        self._confirmations: Coalescer[Confirmation, SettlementRow] = Coalescer(
            self._confirm_group, max_concurrent=2
        )

    def remember(self, verified: VerifiedPayment) -> None:
        """A successful /verify: a settle of the same payload in the next moment need not repeat it."""
        # The payload hash does not cover the network: the same payload verified for another chain is
        # another entry, and never vouches for this one.
        self._recent.put((payload_hash(verified.payment), verified.chain_id), verified)

    def attempt_id(self) -> str:
        """Leases belong to one attempt, not to a process: two callers in one process must not share one."""
        return f"{self.owner}/{uuid.uuid4().hex[:12]}"

    async def settle(self, payment: ExactPayment) -> SettleResponse:
        """Raises Rejected for a payment that fails verification (nothing stored, nothing sent) and
        RpcUnavailable when the chain cannot be reached before anything was stored."""
        chain_id = self.verifier.chain_of(payment)
        key = settlement_key(payment, chain_id)
        digest = payload_hash(payment)

        existing = self._local.get(key)
        if existing is not None:
            return await self._await_local(existing, key, digest)
        fut: asyncio.Future[SettleResponse] = asyncio.get_running_loop().create_future()
        self._local[key] = fut
        try:
            result = await self._settle_new(payment, key, digest, chain_id)
            fut.set_result(result)
            return result
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: duplicates re-raise it themselves
            raise
        finally:
            self._local.pop(key, None)

    async def _settle_new(
        self, payment: ExactPayment, key: SettlementKey, digest: str, chain_id: int
    ) -> SettleResponse:
        # Verify first and let the insert decide who is first: a repeat of a known authorization fails
        # verification (used nonce) or loses the insert, and only then is the ledger read.
        verified = self._recent.take((digest, chain_id))
        if verified is None:
            try:
                verified = await self.verifier.verify(payment, simulate=self.simulate)
            except (Rejected, RpcUnavailable):
                known = await self.ledger.get_by_key(key)
                if known is None:
                    raise
                return await self._follow(known, digest)
        new = NewSettlement(
            key=key,
            pay_to=payment.requirements.pay_to,
            amount=payment.authorization.value,
            valid_after=payment.authorization.valid_after,
            valid_before=payment.authorization.valid_before,
            network=payment.network,
            x402_version=payment.x402_version,
            payload_hash=digest,
            payload=payment.wire_payload,
            requirements=payment.wire_requirements,
            calldata=verified.calldata,
        )
        attempt = self.attempt_id()
        network = self.networks[chain_id]
        try:
            gas_limit, fees = await self._gas_and_fees(verified, network)
        except _SubmitFailed as exc:
            # Nothing can be sent: the failure is recorded on the settlement's row all the same. (New
            # settlements otherwise go in with their transaction: `Submitter.submit_new`.)
            (row,) = await self.ledger.insert_many([(new, attempt)], lease_seconds=self.lease_seconds)
            if row is None:
                return await self._follow_key(key, digest)
            return response_for(await self._fail(row, exc))
        # Stored with its transaction in one statement when the key's nonce is guessed right.
        submission = NewSubmission(new, attempt, verified.target, verified.calldata, gas_limit, fees)
        entered = await self.submitters[chain_id].submit_new(submission)
        if entered is None:  # another caller or replica stored it first
            return await self._follow_key(key, digest)
        row, sent = entered
        return await self._send_and_wait(
            row,
            verified,
            network,
            submission.of(row),
            attempt=attempt,
            receipt_wait=network.settings.receipt_timeout_seconds,
            sent=sent,
        )

    async def _follow_key(self, key: SettlementKey, digest: str) -> SettleResponse:
        other = await self.ledger.get_by_key(key)
        assert other is not None
        return await self._follow(other, digest)

    async def _await_local(
        self, fut: asyncio.Future[SettleResponse], key: SettlementKey, digest: str
    ) -> SettleResponse:
        try:
            return await asyncio.shield(fut)
        except Exception:
            row = await self.ledger.get_by_key(key)
            if row is None:
                raise
            return await self._follow(row, digest)

    async def _follow(self, row: SettlementRow, digest: str) -> SettleResponse:
        """Answer a repeat: same payload gets the first attempt's outcome, a different one is refused."""
        if row.payload_hash != digest:
            raise Rejected(
                reasons.NONCE_ALREADY_USED,
                "this authorization nonce was already presented with a different payload",
                row.key.payer,
            )
        timeout = self.networks[row.key.chain_id].settings.receipt_timeout_seconds
        deadline = time.monotonic() + timeout
        while not row.status.terminal and time.monotonic() < deadline:
            # Nobody may be driving this row any more (the first caller got a pending answer, or its
            # process died): claim it when its lease allows, and resolve it from the chain.
            attempt = self.attempt_id()
            claimed = await self.ledger.claim_one(row.id, attempt, self.lease_seconds)
            if claimed is not None:
                try:
                    row = await self.reconcile(
                        claimed, attempt=attempt, wait=max(deadline - time.monotonic(), 0.0)
                    )
                finally:
                    await self.ledger.release(row.id, attempt)
                continue
            await asyncio.sleep(_DUPLICATE_POLL_SECONDS)
            fresh = await self.ledger.get(row.id)
            assert fresh is not None
            row = fresh
        return response_for(row)

    async def submit_and_wait(
        self,
        row: SettlementRow,
        verified: VerifiedPayment,
        network: NetworkRuntime,
        *,
        attempt: str,
        wait: float | None = None,
        alone: bool = False,
    ) -> SettleResponse:
        """Sends `row` a fresh transaction: in the next group, or with `alone` in one of its own."""
        timeout = network.settings.receipt_timeout_seconds if wait is None else max(wait, 0.0)
        try:
            gas_limit, fees = await self._gas_and_fees(verified, network)
        except _SubmitFailed as exc:
            return response_for(await self._fail(row, exc))
        submission = Submission(row, verified.target, verified.calldata, gas_limit, fees)
        if alone:
            sent: Broadcast | None = await self.submitters[network.chain_id].submit_as(
                submission, network.signers.pick()
            )
        else:
            sent = None
        return await self._send_and_wait(
            row, verified, network, submission, attempt=attempt, receipt_wait=timeout, sent=sent
        )

    async def _send_and_wait(
        self,
        row: SettlementRow,
        verified: VerifiedPayment,
        network: NetworkRuntime,
        submission: Submission,
        *,
        attempt: str,
        receipt_wait: float,
        sent: Broadcast | None,
    ) -> SettleResponse:
        """Broadcasts `submission` (unless `sent` already did), deals with a refusal, and waits for the
        receipt."""
        deadline = time.monotonic() + receipt_wait
        try:
            sent = await self._submit(submission, network, sent)
        except _SubmitFailed as exc:
            return response_for(await self._fail(row, exc))
        signed = sent.signed
        try:
            receipt = await network.watcher.wait(signed.tx_hash, receipt_wait)
        finally:
            network.signers.release(sent.signer)
        if receipt is None:
            log.info("settlement_pending", settlement_id=row.id, tx_hash=signed.tx_hash)
            # Hand the row over now rather than when the lease lapses: a repeat settle or the reconciler
            # picks it up at once.
            await self.ledger.release(row.id, attempt)
            pending = await self.ledger.get(row.id)
            assert pending is not None
            return response_for(pending)
        if sent.carries == 1:  # a batch's gas is the whole batch's, not this transfer's
            network.gas.observe(verified, int(receipt.get("gasUsed", "0x0"), 16))
        done = await self.finalize(
            row, receipt, signed.tx_hash, attempt=attempt, wait=max(deadline - time.monotonic(), 0.0)
        )
        if not done.status.terminal:
            await self.ledger.release(row.id, attempt)  # as with any pending answer: hand it over
        return response_for(done)

    async def _gas_and_fees(self, verified: VerifiedPayment, network: NetworkRuntime) -> tuple[int, FeeQuote]:
        try:
            gas_limit = await network.gas.limit_for(verified, network.signers.addresses[0])
        except RpcError as exc:
            if not exc.is_revert:  # the node, not the transfer: nothing recorded, asked again later
                raise RpcUnavailable(f"gas estimate: {exc.message}") from exc
            raise _SubmitFailed(reasons.SIMULATION_FAILED, exc.revert_reason) from None
        try:
            fees = await network.fees.quote()
        except FeeCapExceeded as exc:
            raise _SubmitFailed(reasons.UNEXPECTED_SETTLE_ERROR, str(exc)) from None
        return gas_limit, fees

    async def _fail(self, row: SettlementRow, exc: _SubmitFailed) -> SettlementRow:
        return await self.ledger.finish(
            row.id,
            Status.FAILED,
            error_reason=exc.reason,
            error_message=exc.message,
            tx_hash="" if exc.clear_tx else None,
        )

    async def _submit(
        self, submission: Submission, network: NetworkRuntime, sent: Broadcast | None
    ) -> Broadcast:
        """Stores and broadcasts this settlement's transaction (maybe a batch), unless `sent` already
        did, and deals with the node refusing it: the refused transaction is undone (once for a whole
        batch) and this settlement goes again in a transaction of its own, with another key unless the
        refusal was a nonce the chain had moved past. The caller owns releasing the signer."""
        submitter = self.submitters[network.chain_id]
        row = submission.row
        if sent is None:
            sent = await submitter.submit(submission)
        tried: set[str] = set()
        caught_up: set[str] = set()
        while True:
            if sent.refusal is None:
                return sent
            signer, refusal, refused = sent.signer, sent.refusal, sent.refusal.error
            log.warning(
                "broadcast_refused",
                settlement_id=row.id,
                signer=signer.address,
                carries=sent.carries,
                error=refused.message,
            )
            try:
                # Every settlement of a batch holds this same refusal: the transaction is undone once, then
                # each of them goes again on its own, as a lone settlement does.
                undone = await refusal.undo_once(
                    partial(self._undo_refused, network, signer, sent.signed, refused)
                )
            except BaseException:
                network.signers.release(signer)  # an error on the way out: no answer holds the key for it
                raise
            if not undone:
                # Known to the node after all, or later nonces of this key are out (leaving a hole would
                # stall them): the stored transaction stays, awaited, and the reconciler re-broadcasts it.
                return sent
            network.signers.release(signer)
            if refused.is_nonce_too_low and signer.address not in caught_up:
                caught_up.add(signer.address)  # its nonce now follows the chain: the key may go again
            else:
                tried.add(signer.address)
            if len(tried) >= len(network.signers.signers):
                raise _SubmitFailed(
                    reasons.UNEXPECTED_SETTLE_ERROR,
                    f"broadcast refused: {refused.message}",
                    clear_tx=True,
                )
            fresh = await self.ledger.get(row.id)
            assert fresh is not None
            row = fresh
            submission = Submission(row, submission.to, submission.calldata, submission.gas, submission.fees)
            sent = await submitter.submit_as(submission, network.signers.pick(avoid=tried))

    async def _undo_refused(
        self, network: NetworkRuntime, signer: Signer, signed: SignedTransaction, exc: RpcError
    ) -> bool:
        """True when the refused transaction is gone from the ledger and its nonce free again; False when
        it stays (it is not ours to undo: it may still be mined)."""
        if await network.eth.get_transaction(signed.tx_hash) is not None:
            # The node knows it after all: an endpoint that refused it after another took it (a retry of
            # the send on failover), maybe even mined. Undoing it would lose a transaction that can land.
            return False
        if exc.is_nonce_too_low:
            await self._catch_up(network, signer)
            await self.ledger.forget_transaction(signed.tx_hash)
            return True
        self.submitters[network.chain_id].forget_nonce(signer.address)
        return await self.ledger.rewind_unused_nonce(
            network.chain_id, signer.address, signed.nonce, signed.tx_hash
        )

    async def _catch_up(self, network: NetworkRuntime, signer: Signer) -> None:
        """Someone used this key outside the facilitator: the shared nonce counter follows the chain."""
        chain_nonce = await network.eth.get_transaction_count(signer.address, "pending")
        self.submitters[network.chain_id].forget_nonce(signer.address)
        await self.ledger.sync_signer_nonce(network.chain_id, signer.address, chain_nonce)

    async def finalize(
        self, row: SettlementRow, receipt: dict[str, Any], tx_hash: str, *, attempt: str, wait: float = 0.0
    ) -> SettlementRow:
        """Resolves `row` from the receipt of `tx_hash`, its transaction. The row is leased to `attempt`: a
        transfer that failed inside a batch may be sent again, alone, and awaited for up to `wait` seconds."""
        block_number = int(receipt["blockNumber"], 16)
        gas_used = int(receipt.get("gasUsed", "0x0"), 16)
        common: dict[str, Any] = dict(
            tx_hash=tx_hash, block_number=block_number, block_hash=receipt.get("blockHash"), gas_used=gas_used
        )
        if receipt_succeeded(receipt):
            missing = settlement_missing(receipt, row)
            if missing is None:
                return await self._confirmations.submit(
                    Confirmation(row.id, tx_hash, block_number, receipt.get("blockHash"), gas_used)
                )
            if (
                missing is MissingEvent.TRANSFER
                or str(receipt.get("to") or "").lower() == row.key.token.lower()
            ):
                # This transaction used the authorization (its AuthorizationUsed is logged), or called the
                # token directly and succeeded, yet the logs lack the transfer.
                return await self.ledger.finish(
                    row.id,
                    Status.FAILED,
                    error_reason=reasons.TRANSFER_EVENT_MISMATCH,
                    error_message=describe(missing),
                    **common,
                )
            # Sent through Multicall3 (a batch, or a wallet deployment): the transfer failed inside a
            # transaction that itself succeeded.
            failure = f"transferWithAuthorization failed inside transaction {tx_hash} ({describe(missing)})"
        else:
            failure = "transferWithAuthorization reverted on-chain"
        carried = len(await self.ledger.rows_by_tx_hash(tx_hash))
        # Reverted, or failed inside a batch: whether the payer was charged elsewhere (an earlier transaction
        # of this row, a third party) or not at all, only the authorization's state says.
        from .reconciler import resolve_missing_transfer

        try:
            return await resolve_missing_transfer(
                self, row, attempt=attempt, wait=wait, carried=carried, failure=failure, **common
            )
        except (RpcError, RpcUnavailable) as exc:
            # The row stays submitted, its transaction mined: the reconciler comes back to this receipt.
            log.warning("finalize_deferred", settlement_id=row.id, tx_hash=tx_hash, error=str(exc))
            fresh = await self.ledger.get(row.id)
            assert fresh is not None
            return fresh

    async def _confirm_group(self, group: list[Confirmation]) -> list[SettlementRow | Exception]:
        unique = list({c.settlement_id: c for c in group}.values())
        rows = {r.id: r for r in await self.ledger.confirm_many(unique)}
        return [rows[c.settlement_id] for c in group]

    async def reconcile(self, row: SettlementRow, *, attempt: str, wait: float = 0.0) -> SettlementRow:
        """Drives one leased in-flight row as far as the chain allows right now (see reconciler.py)."""
        from .reconciler import reconcile_row

        return await reconcile_row(self, row, attempt=attempt, wait=wait)


class _SubmitFailed(Exception):
    def __init__(self, reason: str, message: str, *, clear_tx: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.clear_tx = clear_tx
