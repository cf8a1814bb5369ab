"""A job's payment: settled through the paywall when the job completes, released when it does not.

`JobPayments.on_final` is the worker's settlement hook (called at least once per final outcome, retried
until it returns). It acts only on a payment that is still held (challenge `verified`):

- completed: settle it (the facilitator is idempotent for one authorization, so a repeat after a crash
  gets the same transaction). A facilitator that cannot be reached leaves it held and the hook raises,
  to be retried, until too little of the authorization's window is left; then it is released.
- failed, canceled or timed out: release it; the authorization is never submitted.

A payment whose settle may have gone out with no outcome recorded (`settle_may_have_gone_out`) is never
released here, nor settled unless its job completed in time: releasing could record as unpaid money that
moved, settling could charge for a job that failed. The hook waits (raising `SettleUnresolved`) until the
reconciler, which owns every payment still held once its authorization has expired (reconciler.py), has
asked the facilitator which it was; then it copies the outcome.

Either way the outcome is copied onto the job (`set_payment`) from the challenge, which stays the source
of truth: the audit trail records every move with the job id, and a `settlement_pending` answer is
finished by the resource server's reconciler; readers of the job bring it up to date (`current`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from ..challenges.records import Challenge
from ..challenges.states import ChallengeStatus
from ..facilitator_client import FacilitatorRefused, FacilitatorUnavailable
from ..generation.engine.records import JobRecord
from ..generation.engine.service import GenerationEngine
from ..generation.engine.states import JobStatus
from ..held_payments import load_held
from ..paywall import HeldPayment, Paywall

log = structlog.get_logger(__name__)

# Job payment states (JobRecord.settlement_status), as API clients see them.
HELD: Final = "held"  # verified; settled when the job completes
SETTLING: Final = "settling"  # settle-on-accept: being settled before the job may run
SETTLED: Final = "settled"
PENDING: Final = "pending"  # broadcast, not confirmed yet: the reconciler finishes it
FAILED: Final = "failed"  # the facilitator refused to settle it
RELEASED: Final = "released"  # never submitted: the payer keeps the money

_OF_CHALLENGE: Final = {
    ChallengeStatus.SETTLED: SETTLED,
    ChallengeStatus.SETTLEMENT_PENDING: PENDING,
    ChallengeStatus.FAILED: FAILED,
    ChallengeStatus.RELEASED: RELEASED,
}
# States a job's copy may still move on from; the others are final, as the challenge's are.
OPEN: Final = frozenset({HELD, SETTLING, PENDING})
# A result is handed out once its payment is settled or on its way (or when nothing was paid).
RESULT_RELEASED_BY: Final = frozenset({SETTLED, PENDING})


class PaymentStillHeld(RuntimeError):
    """The payment could not be decided this time (the hook is retried)."""


class SettleNotSent(PaymentStillHeld):
    """This run failed and no settle of the payment has gone out: neither in it (it failed before sending
    one, or the facilitator was certainly not reached) nor, as far as recorded, in an earlier run."""


class SettleUnresolved(PaymentStillHeld):
    """A settle of the payment may have gone out and its outcome is not recorded: left to the reconciler."""


def settle_may_have_gone_out(job: JobRecord) -> bool:
    """Whether a settle of the job's payment may have gone out with no outcome recorded: the one sent with
    a settle-on-accept job's 202 (a job still `settling` never had its outcome recorded; a refusal or a
    facilitator not reached would have failed or released the challenge), or one a completed job's hook
    sent in a run that then failed. A run that failed knowing nothing went out says so (`SettleNotSent`);
    any other failure counts (a timeout, a transport error after sending, an answer lost or not recorded),
    and a run that follows one that counts raises `SettleUnresolved` whatever stops it, so it stays
    counted. A deferred job that did not complete was never settled."""
    if job.settlement_status == SETTLING:
        return True
    if job.status is not JobStatus.COMPLETED or job.final_attempts == 0:
        return False
    # The worker records a failed run as "<exception type>: <message>" (worker._settle): text of any
    # other form counts as a settle that may have gone out.
    return not (job.final_error or "").startswith(f"{SettleNotSent.__name__}:")


def _sent_nothing(job: JobRecord) -> type[PaymentStillHeld]:
    """The failure of a run that sent no settle: unresolved all the same if an earlier run may have."""
    return SettleUnresolved if settle_may_have_gone_out(job) else SettleNotSent


@dataclass(frozen=True, slots=True)
class PaymentState:
    status: str | None
    tx_hash: str | None


def state_of(challenge: Challenge, held_as: str | None) -> PaymentState:
    """The job-facing state of a claimed challenge; while verified, whatever the job says it is held as."""
    return PaymentState(_OF_CHALLENGE.get(challenge.status, held_as), challenge.tx_hash)


class JobPayments:
    def __init__(
        self,
        paywall: Paywall,
        engine: GenerationEngine,
        *,
        release_before_expiry_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paywall = paywall
        self.engine = engine
        # Closer than this to validBefore, a settlement could not land: release instead of trying.
        self.release_before_expiry_seconds = release_before_expiry_seconds
        self.clock = clock

    async def on_final(self, job: JobRecord) -> None:
        try:
            await self._on_final(job)
        except PaymentStillHeld:
            raise
        except Exception as exc:
            # Raised outside a settle call (reading, releasing or copying the payment): this run sent nothing.
            raise _sent_nothing(job)(f"job {job.id}: {type(exc).__name__}: {exc}") from exc

    async def _on_final(self, job: JobRecord) -> None:
        cid = job.payment_challenge_id
        if cid is None:
            return
        record = await load_held(self.paywall.store, cid)
        if record is None:
            # The job names a payment that was never claimed: nothing can be settled or released.
            log.error("job_payment_missing", job_id=str(job.id), challenge_id=cid)
            return
        if record.challenge.status is ChallengeStatus.VERIFIED:
            await self._decide(job, record.payment)
            record = await load_held(self.paywall.store, cid)
            assert record is not None
            if record.challenge.status is ChallengeStatus.VERIFIED:
                raise PaymentStillHeld(f"the payment of job {job.id} is still held; retrying")
        await self._copy(job, state_of(record.challenge, job.settlement_status))

    async def _decide(self, job: JobRecord, held: HeldPayment) -> None:
        context: dict[str, object] = {"jobId": str(job.id), "jobStatus": job.status.value}
        left = held.valid_before - self.clock()
        if job.status is JobStatus.COMPLETED and left >= self.release_before_expiry_seconds:
            await self._settle(job, held, context)
            return
        if settle_may_have_gone_out(job):
            raise SettleUnresolved(
                f"job {job.id}: a settle may have been sent; the reconciler resolves the payment once its "
                "authorization has expired"
            )
        if job.status is not JobStatus.COMPLETED:
            if job.failure_code:
                context["failure"] = job.failure_code
            await self.paywall.release(held, reason=f"job_{job.status.value}", detail=context)
            return
        # Completed too close to the authorization's expiry for a settlement to land, none ever sent.
        context["secondsLeft"] = round(left, 1)
        await self.paywall.release(held, reason="authorization_expiring", detail=context)

    async def _settle(self, job: JobRecord, held: HeldPayment, context: dict[str, object]) -> None:
        """Settles the payment and records the outcome. On failure, with the payment still held (the hook
        is retried), raises what the failure says of whether a settle went out; a repeat of one that did
        gets its outcome."""
        try:
            await self.paywall.settle(held, release_unsent=False, context=context)
        except (FacilitatorUnavailable, FacilitatorRefused) as exc:
            # No facilitator reached (a maybe-delivered settle is recorded pending, not raised), or a request
            # refused before it was acted on: nothing went out this time.
            maybe = isinstance(exc, FacilitatorUnavailable) and exc.maybe_delivered
            raise (SettleUnresolved if maybe else _sent_nothing(job))(f"job {job.id}: {exc}") from exc
        except Exception as exc:
            # An outcome the database did not take (or anything else raised by then): the settle was sent.
            raise SettleUnresolved(f"job {job.id}: {type(exc).__name__}: {exc}") from exc

    async def _copy(self, job: JobRecord, state: PaymentState) -> None:
        if (state.status, state.tx_hash) == (job.settlement_status, job.payment_tx_hash):
            return
        await self.engine.set_payment(job.id, tx_hash=state.tx_hash, settlement_status=state.status)

    async def current(self, job: JobRecord) -> PaymentState:
        """The job's payment as of now. While the job's copy may still change, the challenge is read, and
        a newer state is written back (only over the state it replaces, so a stale reader cannot undo a
        newer write)."""
        cid = job.payment_challenge_id
        mine = PaymentState(job.settlement_status, job.payment_tx_hash)
        if cid is None or job.settlement_status not in OPEN:
            return mine
        challenge = await self.paywall.store.get(cid)
        if challenge is None:
            return mine
        state = state_of(challenge, job.settlement_status)
        if state != mine and state.status is not None:
            await self.engine.sync_payment(
                job.id,
                expected_status=job.settlement_status,
                settlement_status=state.status,
                tx_hash=state.tx_hash,
            )
        return state
