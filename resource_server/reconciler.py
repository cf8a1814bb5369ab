"""Background work of the resource server: payments the facilitator answered `settlement_pending` for (or
whose settle answer was lost) are settled again until they resolve, and unpaid challenges past their
expiry are marked expired.

Re-settling is safe: a facilitator's /settle is idempotent for the same payload (ours answers a repeat with
the first attempt's outcome), and the EIP-3009 nonce makes a second transfer impossible on-chain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import structlog

from shared.x402 import reasons as fac_reasons

from .audit import AuditEntry
from .challenges.states import ChallengeStatus
from .challenges.store import ChallengeStore
from .facilitator_client import FacilitatorClient, FacilitatorError

log = structlog.get_logger(__name__)


class SettlementReconciler:
    def __init__(
        self,
        store: ChallengeStore,
        facilitator: FacilitatorClient,
        *,
        interval: float = 5.0,
        lease_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.facilitator = facilitator
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Sweeps expiries and drives every pending settlement once; returns how many were resolved."""
        await self.store.sweep_expired()
        resolved = 0
        for pending in await self.store.claim_pending(self.owner, lease_seconds=self.lease_seconds):
            try:
                answer = await self.facilitator.settle(pending.payload, pending.requirements)
            except FacilitatorError as exc:
                log.warning("reconcile_deferred", challenge_id=pending.challenge_id, error=str(exc))
                await self.store.release_lease(
                    pending.challenge_id, self.owner, retry_after_seconds=self.interval
                )
                continue
            detail = {"facilitator": answer.to_wire(), "attempt": pending.attempts + 1}
            current = ChallengeStatus.SETTLEMENT_PENDING
            if answer.success:
                await self.store.transition(
                    pending.challenge_id,
                    current,
                    ChallengeStatus.SETTLED,
                    event="settled",
                    detail=detail,
                    tx_hash=answer.transaction,
                    settle_attempt=True,
                )
                resolved += 1
            elif answer.error_reason == fac_reasons.SETTLEMENT_PENDING:
                note = AuditEntry(
                    "still_pending",
                    pending.challenge_id,
                    payer=pending.key.payer,
                    tx_hash=answer.transaction or None,
                    detail=detail,
                )
                await self.store.release_lease(pending.challenge_id, self.owner, note=note)
            else:
                await self.store.transition(
                    pending.challenge_id,
                    current,
                    ChallengeStatus.FAILED,
                    event="settle_failed",
                    detail=detail,
                    tx_hash=answer.transaction or None,
                    error_reason=answer.error_reason,
                    settle_attempt=True,
                )
                resolved += 1
        return resolved

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="resource-server-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a database blip must not end reconciliation for good
                log.exception("reconciler_error")
            await asyncio.sleep(self.interval)
