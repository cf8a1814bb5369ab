"""Background work of the resource server, run at start-up and then every `interval`:

- payments the facilitator answered `settlement_pending` for (or whose settle answer was lost) are settled
  again until they resolve;
- challenges left `verified` by a request that was abandoned (the process died in the handler or during
  the settle call) are resolved, see below;
- unpaid challenges past their expiry are marked expired, and deleted with their audit rows once older
  than the retention period;
- the gauge of paid but unsettled challenges is refreshed.

Re-settling is safe: a facilitator's /settle is idempotent for the same payload (ours answers a repeat with
the first attempt's outcome, also after the authorization expired), and the EIP-3009 nonce makes a second
transfer impossible on-chain.

Abandoned claims. Nothing is written between a claim and the settle call (a write there would cost every
paid request a round trip), so the route's policy says whether a settle may have been sent:

- `before`: the settle follows the claim at once, so it may have been: settle again, record the outcome.
- `after`: the settle is sent only once the handler finished below 400; if it never was, settling now
  would charge for a response nobody got. So the reconciler waits until the authorization has expired
  (then no settlement can charge it any more) and asks the facilitator once: a settle that was sent gets
  its outcome back (recorded as settled, pending or failed), one that never was fails on the expiry, and
  the challenge is released with reason `abandoned_unsettled`: nothing was served, nothing charged.
- payments of jobs (a priced endpoint's route, POST /generate: `RecoverableRoutes.of` puts it with the
  `after` routes) are settled or released by the job's settlement hook while their authorization can
  still be settled. Once it has expired, one still `verified` is this reconciler's, as above, whether a
  job holds it or not: a settle-on-accept payment whose outcome was never recorded, a deferred one whose
  hook may have sent a settle before it failed, a claim the request died with before any job existed.
  The hook only waits for it then, and copies the outcome (generation_api/payments.py). A `before`
  route's claim with a `settlement_deferred` note is left to the owner it names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog

from shared.x402 import reasons as fac_reasons
from shared.x402.models import SettleResponse

from . import reasons
from .audit import AuditEntry
from .challenges.records import PendingSettlement
from .challenges.states import ChallengeStatus, move_for, never_settled
from .challenges.store import ChallengeStore, StuckPayment
from .facilitator_client import FacilitatorClient, FacilitatorError
from .metrics import ResourceServerMetrics
from .pricing.model import PricingConfig, SettlementPolicy

log = structlog.get_logger(__name__)

# Past validBefore by this much (clock skew between the database, the facilitator and the chain), no
# transaction can move the authorization's money any more: only then is a payment whose settle may have
# gone out asked about (the only place that asks, see the module's docstring).
EXPIRY_MARGIN_SECONDS = 60.0
PURGE_BATCH = 500
PURGE_BATCHES_PER_RUN = 20  # at most 10,000 rows per pass: retention never hogs the database


@dataclass(frozen=True, slots=True)
class RecoverableRoutes:
    """The route keys whose abandoned claims this reconciler resolves, by settlement policy."""

    settle_first: frozenset[str] = frozenset()
    settle_after: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        pricing: PricingConfig,
        *,
        owned: Callable[[str, str], bool] | None = None,
        endpoint_routes: Collection[str] = (),
    ) -> RecoverableRoutes:
        """The pricing file's routes, except those `owned(method, path)` says a priced endpoint serves (its
        payments are its own to settle, e.g. a job's). `endpoint_routes`, the route keys a priced endpoint
        issues challenges for, join the `after` routes: a claim still `verified` once its authorization
        has expired is resolved here, whether the endpoint's job holds it or the request died before one
        existed."""
        first: set[str] = set()
        after: set[str] = set()
        for route in pricing.routes:
            if owned is not None and owned(route.method, route.pattern.pattern):
                continue
            if route.settlement is SettlementPolicy.BEFORE:
                first.add(route.key)
            elif route.settlement is SettlementPolicy.AFTER:
                after.add(route.key)
        return cls(frozenset(first), frozenset(after) | frozenset(endpoint_routes))


class SettlementReconciler:
    def __init__(
        self,
        store: ChallengeStore,
        facilitator: FacilitatorClient,
        *,
        interval: float = 5.0,
        lease_seconds: float = 60.0,
        routes: RecoverableRoutes | None = None,
        stuck_after_seconds: float = 600.0,
        expiry_margin_seconds: float = EXPIRY_MARGIN_SECONDS,
        retention_seconds: float = 0.0,
        metrics: ResourceServerMetrics | None = None,
    ) -> None:
        self.store = store
        self.facilitator = facilitator
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.routes = routes or RecoverableRoutes()
        self.stuck_after_seconds = stuck_after_seconds
        self.expiry_margin_seconds = expiry_margin_seconds
        self.retention_seconds = retention_seconds  # 0: expired challenges are kept for ever
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pass (see the module's docstring); returns how many payments were resolved."""
        await self.store.sweep_expired()
        resolved = await self.settle_pending()
        resolved += await self.resolve_stuck()
        await self.purge_expired()
        await self.refresh_gauge()
        return resolved

    # -- settlement_pending -------------------------------------------------------------------------------

    async def settle_pending(self) -> int:
        resolved = 0
        for pending in await self.store.claim_pending(self.owner, lease_seconds=self.lease_seconds):
            answer = await self._settle(pending)
            if answer is None:
                continue
            detail = {"facilitator": answer.to_wire(), "attempt": pending.attempts + 1}
            if answer.error_reason == fac_reasons.SETTLEMENT_PENDING and not answer.success:
                note = AuditEntry(
                    "still_pending",
                    pending.challenge_id,
                    payer=pending.key.payer,
                    tx_hash=answer.transaction or None,
                    detail=detail,
                )
                await self.store.release_lease(pending.challenge_id, self.owner, note=note)
                continue
            await self._record(pending.challenge_id, ChallengeStatus.SETTLEMENT_PENDING, answer, detail)
            resolved += 1
        return resolved

    # -- abandoned claims -----------------------------------------------------------------------------------

    async def resolve_stuck(self) -> int:
        if not (self.routes.settle_first or self.routes.settle_after):
            return 0
        resolved = 0
        stuck = await self.store.claim_stuck(
            self.owner,
            lease_seconds=self.lease_seconds,
            stuck_after_seconds=self.stuck_after_seconds,
            settle_first=self.routes.settle_first,
            settle_after=self.routes.settle_after,
            expiry_margin_seconds=self.expiry_margin_seconds,
        )
        for item in stuck:
            status = await self._resolve_one(item)
            if status is None:
                continue
            resolved += 1
            if self.metrics is not None:
                self.metrics.stuck_resolved.labels(status.value).inc()
            log.warning(
                "abandoned_claim_resolved",
                challenge_id=item.payment.challenge_id,
                route=item.route,
                status=status.value,
            )
        return resolved

    async def _resolve_one(self, item: StuckPayment) -> ChallengeStatus | None:
        payment = item.payment
        answer = await self._settle(payment)
        if answer is None:
            return None
        policy = "before" if item.route in self.routes.settle_first else "after"
        detail: dict[str, Any] = {
            "facilitator": answer.to_wire(),
            "attempt": payment.attempts + 1,
            "abandoned": {"policy": policy, "verifiedAt": item.verified_at.isoformat()},
        }
        if never_settled(answer):
            message = (
                "no settlement of this payment was recorded before its authorization expired, and none "
                "was made; nothing was charged"
            )
            moved = await self.store.transition(
                payment.challenge_id,
                ChallengeStatus.VERIFIED,
                ChallengeStatus.RELEASED,
                event="released",
                detail={"reason": reasons.ABANDONED_UNSETTLED, "message": message, **detail},
            )
            return ChallengeStatus.RELEASED if moved else None
        return await self._record(payment.challenge_id, ChallengeStatus.VERIFIED, answer, detail)

    # -- shared ---------------------------------------------------------------------------------------------

    async def _settle(self, payment: PendingSettlement) -> SettleResponse | None:
        """The facilitator's answer, or None (lease handed back for a later pass) when there was none."""
        try:
            return await self.facilitator.settle(payment.payload, payment.requirements)
        except FacilitatorError as exc:
            log.warning("reconcile_deferred", challenge_id=payment.challenge_id, error=str(exc))
            await self.store.release_lease(
                payment.challenge_id, self.owner, retry_after_seconds=self.interval
            )
            return None

    async def _record(
        self, challenge_id: str, current: ChallengeStatus, answer: SettleResponse, detail: dict[str, Any]
    ) -> ChallengeStatus | None:
        """Records a settle answer as the payment path does; the new status, None if another moved it."""
        # A pending answer moves only a verified row: the pending path keeps pending rows where they are.
        move = move_for(answer)
        moved = await self.store.transition(
            challenge_id,
            current,
            move.status,
            event=move.event,
            detail=detail,
            tx_hash=answer.transaction or None,
            error_reason=move.error_reason,
            settle_attempt=True,
        )
        return move.status if moved else None

    # -- retention and gauge --------------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Deletes expired, never paid challenges older than the retention, in bounded batches."""
        if self.retention_seconds <= 0:
            return 0
        purged = 0
        for _ in range(PURGE_BATCHES_PER_RUN):
            batch = await self.store.purge_expired(self.retention_seconds, limit=PURGE_BATCH)
            purged += batch
            if batch < PURGE_BATCH:
                break
        if purged:
            log.info("expired_challenges_purged", count=purged)
            if self.metrics is not None:
                self.metrics.challenges_purged.inc(purged)
        return purged

    async def refresh_gauge(self) -> None:
        if self.metrics is None:
            return
        for status, count in (await self.store.unsettled_counts()).items():
            self.metrics.unsettled.labels(status.value).set(count)

    # -- loop -----------------------------------------------------------------------------------------------

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
