"""The reconciler owns in-flight rows whose first owner is gone (crash, restart, timeout) and resolves
each one from the chain:

- received, nothing sent: verify again; send, or fail with the reason.
- submitted and mined (any of its transactions): confirm or fail from the receipt.
- submitted, not mined, still known to the node: broadcast the same bytes again and keep waiting.
- submitted, unknown to the node, signer nonce not yet used: re-broadcast the stored bytes.
- submitted, signer nonce consumed by another transaction (or no transaction left: every one was refused):
  if the authorization is still unused, send a fresh transaction; if it is used and none of the row's own
  transactions carried it, the transfer happened elsewhere: fail as nonce used.
- a receipt lookup that errored defers the row: an error is not "not mined".
- a transfer that failed inside a mined batch is resolved the same way (`resolve_missing_transfer`),
  except that it goes again alone.

EIP-3009 nonces make a second transfer of one authorization impossible on-chain, so re-sending is always
safe: the worst case is a reverted transaction, never a double charge."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from shared.evm import calls
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth, hex_int
from shared.x402 import reasons

from ..exact_evm.payment import Rejected
from ..runtime import NetworkRuntime
from ..wire import BadRequest, payment_from_wire
from .fees import FeeCapExceeded
from .ledger import SettlementKey, SettlementRow, StoredTransaction
from .receipt_checks import carries_transfer
from .signers import FeeQuote
from .speedup import is_stuck, replacement_fees
from .states import Status
from .tx_signing import decode_eip1559_call

if TYPE_CHECKING:
    from .service import SettlementService

log = structlog.get_logger(__name__)

_USED_ELSEWHERE = "authorization was used or cancelled outside this facilitator's transactions"


async def reconcile_row(
    service: SettlementService, row: SettlementRow, *, attempt: str, wait: float = 0.0
) -> SettlementRow:
    network = service.networks.get(row.key.chain_id)
    if network is None:
        return row  # a network no longer configured here; another replica may serve it
    try:
        if row.status is Status.RECEIVED:
            return await _resend_or_fail(service, row, attempt=attempt, wait=wait)
        return await _resolve_submitted(service, row, attempt=attempt, wait=wait)
    except (RpcUnavailable, RpcError) as exc:
        log.warning("reconcile_deferred", settlement_id=row.id, error=str(exc))
        return row


async def _resend_or_fail(
    service: SettlementService, row: SettlementRow, *, attempt: str, wait: float, alone: bool = False
) -> SettlementRow:
    """Verify the stored payment again and send a fresh transaction (with `alone`, one that carries only
    this settlement), or fail the row with the reason."""
    # Verifying, sending and waiting outlast what is left of the lease: renewed first, so no other caller
    # takes the row and sends it too; a row no longer ours is not sent.
    if not await service.ledger.renew_lease(row.id, attempt, service.lease_seconds + wait):
        fresh = await service.ledger.get(row.id)
        assert fresh is not None
        return fresh
    try:
        payment = payment_from_wire(row.payload, row.requirements)
        verified = await service.verifier.verify(payment, simulate=True, estimate_gas=True)
    except Rejected as exc:
        return await service.ledger.finish(
            row.id, Status.FAILED, error_reason=exc.reason, error_message=exc.message
        )
    except BadRequest as exc:
        return await service.ledger.finish(
            row.id, Status.FAILED, error_reason=reasons.INVALID_PAYLOAD, error_message=str(exc)
        )
    network = service.networks[row.key.chain_id]
    await service.submit_and_wait(row, verified, network, attempt=attempt, wait=wait, alone=alone)
    fresh = await service.ledger.get(row.id)
    assert fresh is not None
    return fresh


async def _resolve_submitted(
    service: SettlementService, row: SettlementRow, *, attempt: str, wait: float
) -> SettlementRow:
    network = service.networks[row.key.chain_id]
    eth = network.eth
    txs = await service.ledger.transactions(row.id)
    if txs:
        mined = await _mined(network, txs)
        current = txs[-1]
        deciding = deciding_receipt(row, mined, current)
        if deciding is not None:
            tx, receipt = deciding
            return await service.finalize(row, receipt, tx.tx_hash, attempt=attempt, wait=wait)
        if await eth.get_transaction(current.tx_hash) is not None or (
            await eth.get_transaction_count(current.signer, "latest") <= current.signer_nonce
        ):
            # Pending, or lost by the node while its nonce is still free: the same bytes are still good,
            # unless their fees keep them out of blocks; then a replacement with the same nonce goes instead.
            with contextlib.suppress(RpcUnavailable):  # no fee read yet: the same bytes go again
                current = await _speed_up(service, network, current) or current
            with contextlib.suppress(RpcError):
                await eth.send_raw_transaction(current.raw_tx)
            if wait > 0:
                deadline = time.monotonic() + wait
                landed = await network.watcher.wait(current.tx_hash, wait)
                if landed is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    return await service.finalize(row, landed, current.tx_hash, attempt=attempt, wait=left)
            return row
    # None of our transactions can land any more (or none is stored: the node refused each one and the
    # process stopped before sending another).
    if await authorization_used(eth, row.key):
        return await _spent(service, network, row, attempt=attempt, wait=wait, message=_USED_ELSEWHERE)
    log.warning("settlement_resend", settlement_id=row.id, dropped=txs[-1].tx_hash if txs else None)
    return await _resend_or_fail(service, row, attempt=attempt, wait=wait)


def deciding_receipt(
    row: SettlementRow, mined: list[tuple[StoredTransaction, dict[str, Any]]], current: StoredTransaction
) -> tuple[StoredTransaction, dict[str, Any]] | None:
    """Which mined transaction of `row` decides it (`mined` in the order they were stored; `current` is
    the last stored): one that carries its transfer; else the current one; else one holding the current
    one's signer nonce (the current one, its replacement, can never land). None while the current one, a
    re-send after an earlier transaction failed to carry the transfer, may still land."""
    for tx, receipt in mined:
        if carries_transfer(receipt, row):
            return tx, receipt
    for tx, receipt in reversed(mined):
        if tx.tx_hash == current.tx_hash or (tx.signer, tx.signer_nonce) == (
            current.signer,
            current.signer_nonce,
        ):
            return tx, receipt
    return None


async def authorization_used(eth: Eth, key: SettlementKey, *, block: str = "latest") -> bool:
    """The token's own answer: used or cancelled (FiatToken's authorizationState says both)."""
    state = await eth.call(
        key.token, calls.authorization_state(key.payer, bytes.fromhex(key.auth_nonce[2:])), block=block
    )
    if len(state) < 32:
        # decode_bool would read it as "unused" and the payment would be sent again: leave it for later.
        raise RpcError(-32603, f"authorizationState answered {len(state)} bytes, not a word")
    return calls.decode_bool(state)


async def resolve_missing_transfer(
    service: SettlementService,
    row: SettlementRow,
    *,
    attempt: str,
    wait: float,
    carried: int,
    failure: str,
    tx_hash: str,
    block_number: int,
    block_hash: str | None,
    gas_used: int,
) -> SettlementRow:
    """`row`'s mined transaction `tx_hash`, which carried `carried` settlements, did not carry its transfer
    (`failure` says how). As for a row whose transactions went missing, the authorization decides: used,
    the transfer happened elsewhere (or it was cancelled); unused, nothing was charged, and a transfer that
    rode in a batch goes again on its own, since the batch's gas or a batch-mate's may be what failed it.
    One that already went alone is not sent again."""
    mined: dict[str, Any] = dict(
        tx_hash=tx_hash, block_number=block_number, block_hash=block_hash, gas_used=gas_used
    )
    network = service.networks[row.key.chain_id]
    # At the receipt's block or later: a node behind it (another endpoint) must not call it unused.
    if await authorization_used(network.eth, row.key, block=hex_int(block_number)):
        used = f"{_USED_ELSEWHERE} ({failure})"
        return await _spent(service, network, row, attempt=attempt, wait=wait, message=used, **mined)
    if carried <= 1:
        return await service.ledger.finish(
            row.id,
            Status.FAILED,
            error_reason=reasons.TRANSACTION_FAILED,
            error_message=f"{failure}; the authorization is unused: nothing was charged",
            **mined,
        )
    log.warning("settlement_resend", settlement_id=row.id, failed_in=tx_hash, reason=failure)
    return await _resend_or_fail(service, row, attempt=attempt, wait=wait, alone=True)


async def _spent(
    service: SettlementService,
    network: NetworkRuntime,
    row: SettlementRow,
    *,
    attempt: str,
    wait: float,
    message: str,
    **recorded: Any,
) -> SettlementRow:
    """The authorization is spent. By one of this row's own transactions (mined since its receipt was read,
    or a re-send by a caller whose lease had lapsed), which then decides the row; else it was cancelled or
    settled elsewhere, and the row fails as used."""
    for tx, receipt in await _mined(network, await service.ledger.transactions(row.id)):
        if carries_transfer(receipt, row):
            return await service.finalize(row, receipt, tx.tx_hash, attempt=attempt, wait=wait)
    return await service.ledger.finish(
        row.id, Status.FAILED, error_reason=reasons.NONCE_ALREADY_USED, error_message=message, **recorded
    )


async def _mined(
    network: NetworkRuntime, txs: list[StoredTransaction]
) -> list[tuple[StoredTransaction, dict[str, Any]]]:
    """The mined ones of `txs`, with their receipts, in order. A lookup that errored raises: an error is not
    "not mined", and a row read as unmined may be failed or paid again."""
    answers = await network.rpc.batch([("eth_getTransactionReceipt", [t.tx_hash]) for t in txs])
    for answer in answers:
        if isinstance(answer, RpcError):
            raise answer
    return [(tx, r) for tx, r in zip(txs, answers, strict=True) if isinstance(r, dict)]


async def _speed_up(
    service: SettlementService, network: NetworkRuntime, current: StoredTransaction
) -> StoredTransaction | None:
    """A stored replacement for a stuck transaction, or None when it is not stuck or cannot be replaced."""
    old = decode_eip1559_call(current.raw_tx)
    try:
        market = await network.fees.quote()
    except FeeCapExceeded:
        market = None
    age = (datetime.now(UTC) - current.created_at).total_seconds() if current.created_at else 0.0
    stuck = is_stuck(
        age_seconds=age,
        replace_after_seconds=network.settings.replace_after_seconds,
        max_fee=old.max_fee_per_gas,
        next_base_fee=network.fees.base_fee,
    )
    if not stuck:
        return None
    signer = network.signers.by_address(current.signer)
    fees = (
        replacement_fees(
            FeeQuote(old.max_fee_per_gas, old.max_priority_fee_per_gas), market, cap=network.fees.max_fee_cap
        )
        if market is not None
        else None
    )
    if fees is None or signer is None:
        log.warning(
            "settlement_stuck",
            settlement_ids=list(current.settlement_ids),
            tx_hash=current.tx_hash,
            reason="fee cap reached" if signer is not None else "signer key no longer configured",
        )
        return None
    signed = signer.sign_call(
        chain_id=network.chain_id,
        nonce=current.signer_nonce,
        to=old.to,
        data=old.data,
        gas=old.gas,
        fees=fees,
    )
    stored = await service.ledger.store_replacement(current, signed)
    if stored is not None:
        log.info(
            "settlement_sped_up",
            settlement_ids=list(current.settlement_ids),
            replaces=current.tx_hash,
            tx_hash=stored.tx_hash,
            max_fee_per_gas=fees.max_fee_per_gas,
        )
    return stored


class Reconciler:
    """Runs at start-up and then every `interval` seconds."""

    def __init__(self, service: SettlementService, *, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        attempt = self.service.attempt_id()
        rows = await self.service.ledger.claim_in_flight(attempt, self.service.lease_seconds)
        for row in rows:
            try:
                await reconcile_row(self.service, row, attempt=attempt)
            finally:
                await self.service.ledger.release(row.id, attempt)
        return len(rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # keep reconciling: one bad row or a DB blip must not stop the loop
                log.exception("reconciler_error")
            await asyncio.sleep(self.interval)
