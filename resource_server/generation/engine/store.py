"""The durable job store (PostgreSQL): jobs, their steps and events.

Writes by a worker are fenced by its lease: each runs in a transaction that locks the job row and checks
that the caller still owns an active job, so a worker whose lease ran out (and was taken over) can no
longer move the job. Every change records an event and, when the job has a webhook, writes the delivery
in the same transaction; followers are woken after the commit (EventAnnouncer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from shared.telemetry.tracing import span

from ..errors import GenerationError
from ..webhooks import outbox
from .admission import AdmissionRefused, Load, Refusal
from .records import JobEvent, JobRecord, StepRecord
from .states import (
    ACTIVE,
    FINAL,
    IllegalTransition,
    JobStatus,
    StepStatus,
    check_step_transition,
    check_transition,
)
from .wakeup import notify_queued

NOTIFY_CHANNEL = "generation_job_events"

# Admission counts and the insert must be one atomic decision across replicas; submissions are rare and
# short, so one global transaction lock costs nothing. The bytes spell "x402genq" (visible in pg_locks).
_ADMISSION_LOCK = int.from_bytes(b"x402genq", "big", signed=True)

# Appended to the RETURNING list of lease bookkeeping (claims, heartbeats, step starts, progress, the
# hook's done mark): the transaction then commits without waiting for its WAL flush. Those writes only
# ever need redoing if PostgreSQL itself crashes within the last fraction of a second, and the engine
# redoes them anyway: a lost claim or step start is claimed and started again when the lease runs out,
# lost progress is reported again, and a lost done mark calls the at-least-once hook again. Under
# concurrent workers the flush waits were what serialised them. Job creation, step results, final
# statuses, cancels and payments keep synchronous commits: a client has been told about those.
_NO_FLUSH_WAIT = "set_config('synchronous_commit', 'off', true) AS _no_flush_wait"


def _sql_list(statuses: frozenset[JobStatus]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


# Written into the SQL, not passed as parameters: the partial indexes are defined on these literal lists,
# and a prepared statement's generic plan can only use an index whose predicate the query's own text
# implies. With `status = ANY($n)` the claim fell back to scanning and sorting the whole table.
_ACTIVE_SQL = _sql_list(ACTIVE)
_FINAL_SQL = _sql_list(FINAL)


@dataclass(frozen=True, slots=True)
class NewJob:
    tool: str
    params: dict[str, Any]
    step_names: Sequence[str]
    payer: str | None = None
    price: dict[str, Any] | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_progress: bool = False
    payment_challenge_id: str | None = None
    payment_nonce: str | None = None
    settlement_status: str | None = None
    deadline_seconds: float | None = None  # from creation; past it the job fails as "timeout"
    # Not claimable for this long (the API settles a payment before letting the job run); release_hold
    # ends it early. Bounded, so a hold whose holder died still runs the job.
    hold_seconds: float | None = None


class JobNotFound(LookupError):
    pass


class JobNotRetryable(RuntimeError):
    pass


class EventAnnouncer:
    """Wakes followers of jobs (SSE streams, in any process) with NOTIFY, a few transactions' worth at once.

    A NOTIFY takes PostgreSQL's cluster-wide notification lock at commit, so a NOTIFY in every event's
    transaction made every worker's commits queue behind each other's (measured with the generation
    benchmark: 1 -> 2 worker processes 1.36-1.40x with one per transaction, 2.03x with none). One statement
    per `interval` carrying every job announced meanwhile keeps that to a few dozen lock holds a second per
    process, for at most `interval` of extra latency. A follower woken late or not at all only waits for its
    next look: events are always read from the table (events.py), never from the notification."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 0.02) -> None:
        self.pool = pool
        self.interval = interval
        self._jobs: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def announce(self, jobs: Iterable[str]) -> None:
        self._jobs.update(jobs)
        if self._jobs and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="job-event-notify")

    async def _flush(self) -> None:
        try:
            while self._jobs:
                await asyncio.sleep(self.interval)
                jobs, self._jobs = sorted(self._jobs), set()
                with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                    await self.pool.execute(
                        f"SELECT {_NO_FLUSH_WAIT}, pg_notify($1, job) FROM unnest($2::text[]) AS job",
                        NOTIFY_CHANNEL,
                        jobs,
                    )
        finally:
            self._task = None


class JobStore:
    def __init__(self, pool: asyncpg.Pool, *, progress_webhook_interval: float = 5.0) -> None:
        self.pool = pool
        self._progress_interval = timedelta(seconds=progress_webhook_interval)
        self._unsent: dict[int, list[str]] = {}  # per open transaction (by connection): jobs to notify
        self._announcer = EventAnnouncer(pool)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A transaction whose job events are announced after it commits (see EventAnnouncer)."""
        async with self.pool.acquire() as conn:
            key = id(conn)
            self._unsent[key] = []
            try:
                async with conn.transaction():
                    yield conn
                self._announcer.announce(self._unsent.get(key, ()))
            finally:
                self._unsent.pop(key, None)

    # -- submission and reads ------------------------------------------------------------------------

    async def load(self, payer: str | None, conn: Any = None) -> Load:
        c = conn if conn is not None else self.pool
        row = await c.fetchrow(
            f"""SELECT
                 (SELECT count(*) FROM generation_jobs WHERE payer = $1 AND status IN {_ACTIVE_SQL})
                   AS payer_active,
                 (SELECT extract(epoch FROM now() - min(queued_at)) FROM generation_jobs
                   WHERE payer = $1 AND status IN {_ACTIVE_SQL}) AS oldest_age,
                 (SELECT count(*) FROM generation_jobs WHERE status = 'queued') AS queued""",
            payer,
        )
        assert row is not None
        age = row["oldest_age"]
        return Load(int(row["payer_active"]), int(row["queued"]), float(age) if age is not None else None)

    async def create(
        self, new: NewJob, *, admit: Callable[[Load], Refusal | None] | None = None
    ) -> tuple[JobRecord, bool]:
        """The new job (True), or the existing one with the same idempotency key (False).

        ``admit`` re-checks the guardrails under the admission lock: the pre-payment admission_check may
        have raced with other submissions, and this is the check that cannot."""
        async with span("db.generation.create_job"), self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADMISSION_LOCK)
            if new.idempotency_key is not None:
                existing = await conn.fetchrow(
                    "SELECT * FROM generation_jobs WHERE idempotency_key=$1", new.idempotency_key
                )
                if existing is not None:
                    return JobRecord.from_record(existing), False
            if admit is not None:
                refusal = admit(await self.load(new.payer, conn))
                if refusal is not None:
                    raise AdmissionRefused(refusal)
            record = await conn.fetchrow(
                """INSERT INTO generation_jobs (id, tool, params, payer, idempotency_key, status, status_text,
                       price, webhook_url, webhook_secret, webhook_progress, payment_challenge_id,
                       payment_nonce, settlement_status, deadline_at, run_after)
                   VALUES ($1, $2, $3, $4, $5, 'queued', 'queued', $6, $7, $8, $9, $10, $11, $12,
                       now() + make_interval(secs => $13::float8),
                       now() + make_interval(secs => COALESCE($14::float8, 0)))
                   RETURNING *""",
                uuid4(),
                new.tool,
                new.params,
                new.payer,
                new.idempotency_key,
                new.price,
                new.webhook_url,
                new.webhook_secret,
                new.webhook_progress,
                new.payment_challenge_id,
                new.payment_nonce,
                new.settlement_status,
                new.deadline_seconds,
                new.hold_seconds,
            )
            assert record is not None
            job = JobRecord.from_record(record)
            await conn.executemany(
                "INSERT INTO generation_job_steps (job_id, idx, name) VALUES ($1, $2, $3)",
                [(job.id, i, name) for i, name in enumerate(new.step_names)],
            )
            await self._record(conn, job, "status", {})
            if new.hold_seconds is None:
                await notify_queued(conn)
            return job, True

    async def get(self, job_id: UUID) -> JobRecord | None:
        r = await self.pool.fetchrow("SELECT * FROM generation_jobs WHERE id=$1", job_id)
        return JobRecord.from_record(r) if r else None

    async def get_by_payment(self, challenge_id: str) -> JobRecord | None:
        """The job a payment created (its challenge id is the job's idempotency key), if any."""
        r = await self.pool.fetchrow(
            "SELECT * FROM generation_jobs WHERE idempotency_key = $1 AND payment_challenge_id = $1",
            challenge_id,
        )
        return JobRecord.from_record(r) if r else None

    async def require(self, job_id: UUID) -> JobRecord:
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(str(job_id))
        return job

    async def steps(self, job_id: UUID) -> list[StepRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM generation_job_steps WHERE job_id=$1 ORDER BY idx", job_id
        )
        return [StepRecord.from_record(r) for r in rows]

    async def events(self, job_id: UUID, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        rows = await self.pool.fetch(
            "SELECT * FROM generation_job_events WHERE job_id=$1 AND id > $2 ORDER BY id LIMIT $3",
            job_id,
            after_id,
            limit,
        )
        return [JobEvent.from_record(r) for r in rows]

    async def status(self, job_id: UUID) -> JobStatus | None:
        value = await self.pool.fetchval("SELECT status FROM generation_jobs WHERE id=$1", job_id)
        return JobStatus(value) if value is not None else None

    # -- worker side: claiming and leases ------------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float, tools: Sequence[str]) -> JobRecord | None:
        """Lease the next runnable job: queued, or active with its lease run out (its worker is gone)."""
        r = await self.pool.fetchrow(
            f"""UPDATE generation_jobs SET lease_owner=$1, lease_until=now() + make_interval(secs => $2),
                   heartbeat_at=now(), updated_at=now()
               WHERE id = (SELECT id FROM generation_jobs
                           WHERE status IN {_ACTIVE_SQL} AND run_after <= now()
                             AND (lease_until IS NULL OR lease_until < now())
                             AND tool = ANY($3::text[])
                           ORDER BY run_after, queued_at LIMIT 1 FOR UPDATE SKIP LOCKED)
               RETURNING *, {_NO_FLUSH_WAIT}""",
            owner,
            lease_seconds,
            list(tools),
        )
        return JobRecord.from_record(r) if r else None

    async def heartbeat(self, job_id: UUID, owner: str, lease_seconds: float) -> bool:
        """False when the lease is gone (expired and taken, or the job was canceled): stop working."""
        done = await self.pool.fetchval(
            f"""UPDATE generation_jobs SET lease_until=now() + make_interval(secs => $3), heartbeat_at=now()
               WHERE id=$1 AND lease_owner=$2 AND status IN {_ACTIVE_SQL} RETURNING 1, {_NO_FLUSH_WAIT}""",
            job_id,
            owner,
            lease_seconds,
        )
        return done is not None

    async def release(self, job_id: UUID, owner: str) -> None:
        """Give the job back at once (graceful shutdown) instead of letting the lease run out."""
        await self.pool.execute(
            "UPDATE generation_jobs SET lease_owner=NULL, lease_until=NULL WHERE id=$1 AND lease_owner=$2",
            job_id,
            owner,
        )

    # -- worker side: step lifecycle (all fenced by the lease) ---------------------------------------

    async def start_step(
        self, job_id: UUID, owner: str, idx: int, *, phase: JobStatus, text: str, progress: float
    ) -> StepRecord | None:
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return None
            check_transition(job.status, phase)
            step = await _locked_step(conn, job_id, idx)
            check_step_transition(step.status, StepStatus.RUNNING)
            sr = await conn.fetchrow(
                """UPDATE generation_job_steps SET status='running', attempts=attempts+1, started_at=now(),
                       error_category=NULL, error_message=NULL
                   WHERE job_id=$1 AND idx=$2 RETURNING *""",
                job_id,
                idx,
            )
            jr = await conn.fetchrow(
                """UPDATE generation_jobs SET status=$2, status_text=$3, progress=$4, current_step=$5,
                       started_at=COALESCE(started_at, now()), updated_at=now()
                   WHERE id=$1 RETURNING *, """
                + _NO_FLUSH_WAIT,
                job_id,
                phase.value,
                text,
                progress,
                idx,
            )
            assert sr is not None and jr is not None
            started = StepRecord.from_record(sr)
            await self._record(
                conn, JobRecord.from_record(jr), "status", {"step": started.name, "attempt": started.attempts}
            )
            return started

    async def report_progress(self, job_id: UUID, owner: str, progress: float, text: str) -> bool:
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return False
            jr = await conn.fetchrow(
                """UPDATE generation_jobs SET progress=$2, status_text=$3, updated_at=now()
                   WHERE id=$1 RETURNING *, """
                + _NO_FLUSH_WAIT,
                job_id,
                progress,
                text,
            )
            assert jr is not None
            await self._record(conn, JobRecord.from_record(jr), "progress", {})
            return True

    async def add_notice(self, job_id: UUID, owner: str, code: str, message: str) -> bool:
        """Append a notice once per code: a step retried after a crash must not repeat it."""
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return False
            if any(n.get("code") == code for n in job.notices):
                return True
            jr = await conn.fetchrow(
                """UPDATE generation_jobs SET notices = notices || jsonb_build_array($2::jsonb),
                       updated_at=now() WHERE id=$1 RETURNING *""",
                job_id,
                {"code": code, "message": message},
            )
            assert jr is not None
            await self._record(conn, JobRecord.from_record(jr), "notice", {"code": code, "message": message})
            return True

    async def finish_step(
        self,
        job_id: UUID,
        owner: str,
        idx: int,
        output: dict[str, Any],
        *,
        progress: float,
        result: dict[str, Any] | None,
        final_lease_seconds: float,
    ) -> JobRecord | None:
        """Persist a step's output; with ``result`` (the last step) the job completes in the same
        transaction, so there is no moment where every step is done but the job is not."""
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return None
            step = await _locked_step(conn, job_id, idx)
            check_step_transition(step.status, StepStatus.SUCCEEDED)
            await conn.execute(
                """UPDATE generation_job_steps SET status='succeeded', output=$3, finished_at=now()
                   WHERE job_id=$1 AND idx=$2""",
                job_id,
                idx,
                output,
            )
            if result is None:
                jr = await conn.fetchrow(
                    """UPDATE generation_jobs SET current_step=$2, progress=$3, updated_at=now()
                       WHERE id=$1 RETURNING *""",
                    job_id,
                    idx + 1,
                    progress,
                )
                assert jr is not None
                return JobRecord.from_record(jr)
            check_transition(job.status, JobStatus.COMPLETED)
            jr = await conn.fetchrow(
                f"""UPDATE generation_jobs SET status='completed', current_step=$2, progress=1,
                        status_text='completed', result=$3, finished_at=now(), updated_at=now(),
                        {_final_reset(4)}
                    WHERE id=$1 RETURNING *""",
                job_id,
                idx + 1,
                result,
                final_lease_seconds,
            )
            assert jr is not None
            done = JobRecord.from_record(jr)
            await self._record(conn, done, "status", {"step": step.name})
            return done

    async def schedule_retry(
        self, job_id: UUID, owner: str, idx: int, error: GenerationError, delay_seconds: float
    ) -> JobRecord | None:
        """Put the step back to pending and the job out of reach until the backoff has passed."""
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return None
            step = await _locked_step(conn, job_id, idx)
            check_step_transition(step.status, StepStatus.PENDING)
            await conn.execute(
                """UPDATE generation_job_steps SET status='pending', error_category=$3, error_message=$4
                   WHERE job_id=$1 AND idx=$2""",
                job_id,
                idx,
                error.category.value,
                error.message,
            )
            text = f"{step.name}: temporary error, retrying in {delay_seconds:.0f}s"
            jr = await conn.fetchrow(
                """UPDATE generation_jobs SET run_after=now() + make_interval(secs => $2), lease_owner=NULL,
                       lease_until=NULL, status_text=$3, updated_at=now()
                   WHERE id=$1 RETURNING *""",
                job_id,
                delay_seconds,
                text,
            )
            assert jr is not None
            updated = JobRecord.from_record(jr)
            await self._record(
                conn,
                updated,
                "status",
                {"step": step.name, "retry_in_seconds": round(delay_seconds, 3), "error": error.message},
            )
            return updated

    async def fail(
        self,
        job_id: UUID,
        owner: str,
        idx: int | None,
        error: GenerationError,
        *,
        final_lease_seconds: float,
    ) -> JobRecord | None:
        async with self._transaction() as conn:
            job = await _owned(conn, job_id, owner)
            if job is None:
                return None
            step_name: str | None = None
            if idx is not None:
                step = await _locked_step(conn, job_id, idx)
                # A step that was never started again (attempts used up by dead workers) is still
                # 'running' here, which may go to failed; a pending one is marked as if it had run.
                if step.status is StepStatus.PENDING:
                    await conn.execute(
                        "UPDATE generation_job_steps SET status='running' WHERE job_id=$1 AND idx=$2",
                        job_id,
                        idx,
                    )
                else:
                    check_step_transition(step.status, StepStatus.FAILED)
                await conn.execute(
                    """UPDATE generation_job_steps SET status='failed', error_category=$3, error_message=$4,
                           finished_at=now() WHERE job_id=$1 AND idx=$2""",
                    job_id,
                    idx,
                    error.category.value,
                    error.message,
                )
                step_name = step.name
            check_transition(job.status, JobStatus.FAILED)
            jr = await conn.fetchrow(
                f"""UPDATE generation_jobs SET status='failed', status_text='failed', failure_category=$2,
                        failure_code=$3, failure_message=$4, failed_step=$5, finished_at=now(),
                        updated_at=now(), {_final_reset(6)}
                    WHERE id=$1 RETURNING *""",
                job_id,
                error.category.value,
                error.code,
                error.message,
                step_name,
                final_lease_seconds,
            )
            assert jr is not None
            failed = JobRecord.from_record(jr)
            await self._record(conn, failed, "status", {"step": step_name, "category": error.category.value})
            return failed

    # -- API side --------------------------------------------------------------------------------------

    async def cancel(self, job_id: UUID) -> tuple[JobRecord, bool]:
        """Cancel an active job (True); a final job is returned unchanged (False). A worker running it
        stops at its next heartbeat (the lease is cleared here, and every write it attempts is fenced)."""
        async with self._transaction() as conn:
            job = await _locked_job(conn, job_id)
            if job.status.final:
                return job, False
            check_transition(job.status, JobStatus.CANCELED)
            jr = await conn.fetchrow(
                f"""UPDATE generation_jobs SET status='canceled', status_text='canceled', finished_at=now(),
                        updated_at=now(), {_final_reset(2)}
                    WHERE id=$1 RETURNING *""",
                job_id,
                0.0,  # no lease on the hook: any worker's sweep may call it at once
            )
            assert jr is not None
            canceled = JobRecord.from_record(jr)
            await self._record(conn, canceled, "status", {})
            return canceled, True

    async def retry(self, job_id: UUID, *, progress: float) -> JobRecord:
        """Re-queue a failed job at its failed step; finished steps keep their outputs."""
        async with self._transaction() as conn:
            job = await _locked_job(conn, job_id)
            try:
                check_transition(job.status, JobStatus.QUEUED)
            except IllegalTransition:
                raise JobNotRetryable(
                    f"job {job_id} is {job.status}, only failed jobs can be retried"
                ) from None
            await conn.execute(
                """UPDATE generation_job_steps SET status='pending', attempts=0, error_category=NULL,
                       error_message=NULL, finished_at=NULL
                   WHERE job_id=$1 AND status IN ('failed', 'running')""",
                job_id,
            )
            jr = await conn.fetchrow(
                """UPDATE generation_jobs SET status='queued', status_text='queued for retry', progress=$2,
                       runs=runs+1, run_after=now(), lease_owner=NULL, lease_until=NULL, finished_at=NULL,
                       failure_category=NULL, failure_code=NULL, failure_message=NULL, failed_step=NULL,
                       final_handled=false, final_attempts=0, final_error=NULL, final_lease_until=NULL,
                       updated_at=now()
                   WHERE id=$1 RETURNING *""",
                job_id,
                progress,
            )
            assert jr is not None
            queued = JobRecord.from_record(jr)
            await self._record(
                conn, queued, "status", {"retry_of_run": job.runs, "resume_step": job.failed_step}
            )
            await notify_queued(conn)
            return queued

    async def set_payment(
        self,
        job_id: UUID,
        *,
        challenge_id: str | None = None,
        tx_hash: str | None = None,
        settlement_status: str | None = None,
        check_status: bool = False,
        expected_status: str | None = None,
    ) -> JobRecord | None:
        """Opaque payment bookkeeping for the API layer; None leaves a field as it is. With
        ``check_status`` the update happens only while the settlement status is still
        ``expected_status`` (so a reader syncing from a stale view cannot undo a newer write), and None
        says it was not."""
        r = await self.pool.fetchrow(
            """UPDATE generation_jobs SET payment_challenge_id=COALESCE($2, payment_challenge_id),
                   payment_tx_hash=COALESCE($3, payment_tx_hash),
                   settlement_status=COALESCE($4, settlement_status), updated_at=now()
               WHERE id=$1 AND (NOT $5 OR settlement_status IS NOT DISTINCT FROM $6)
               RETURNING *""",
            job_id,
            challenge_id,
            tx_hash,
            settlement_status,
            check_status,
            expected_status,
        )
        if r is None:
            if check_status and await self.status(job_id) is not None:
                return None
            raise JobNotFound(str(job_id))
        return JobRecord.from_record(r)

    async def release_hold(self, job_id: UUID) -> bool:
        """Make a held, still queued job claimable now; False if it was not waiting (or is gone)."""
        async with self._transaction() as conn:
            done = await conn.fetchval(
                """UPDATE generation_jobs SET run_after=now(), updated_at=now()
                   WHERE id=$1 AND status='queued' AND run_after > now() RETURNING 1""",
                job_id,
            )
            if done is not None:
                await notify_queued(conn)
            return done is not None

    # -- settlement hook bookkeeping -------------------------------------------------------------------

    async def claim_final(self, lease_seconds: float) -> JobRecord | None:
        """A final job whose on_final has not succeeded yet and is due, leased so one worker calls it."""
        r = await self.pool.fetchrow(
            f"""UPDATE generation_jobs SET final_lease_until=now() + make_interval(secs => $1)
               WHERE id = (SELECT id FROM generation_jobs
                           WHERE NOT final_handled AND status IN {_FINAL_SQL}
                             AND final_next_attempt_at <= now()
                             AND (final_lease_until IS NULL OR final_lease_until < now())
                           ORDER BY final_next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)
               RETURNING *""",
            lease_seconds,
        )
        return JobRecord.from_record(r) if r else None

    async def mark_final_handled(self, job: JobRecord) -> bool:
        # Fenced on runs and status: if the job was retried meanwhile, this outcome is no longer current.
        done = await self.pool.fetchval(
            """UPDATE generation_jobs SET final_handled=true, final_lease_until=NULL, final_error=NULL
               WHERE id=$1 AND runs=$2 AND status=$3 RETURNING 1, """
            + _NO_FLUSH_WAIT,
            job.id,
            job.runs,
            job.status.value,
        )
        return done is not None

    async def defer_final(self, job: JobRecord, delay_seconds: float, error: str) -> None:
        await self.pool.execute(
            """UPDATE generation_jobs SET final_attempts=final_attempts+1, final_error=$4,
                   final_next_attempt_at=now() + make_interval(secs => $3), final_lease_until=NULL
               WHERE id=$1 AND runs=$2 AND NOT final_handled""",
            job.id,
            job.runs,
            delay_seconds,
            error[:1000],
        )

    # -- events ----------------------------------------------------------------------------------------

    async def _record(self, conn: Any, job: JobRecord, kind: str, detail: dict[str, Any]) -> None:
        await conn.execute(
            """INSERT INTO generation_job_events (job_id, kind, status, progress, text, detail)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            job.id,
            kind,
            job.status.value,
            job.progress,
            job.status_text,
            detail,
        )
        # Announced once the transaction has committed (_transaction), so a woken follower finds the row.
        unsent = self._unsent.get(id(conn))
        if unsent is not None:
            unsent.append(str(job.id))
        else:
            self._announcer.announce([str(job.id)])
        if job.webhook_url is None:
            return
        if kind == "status" and job.status.final:
            await outbox.enqueue(conn, job.id, outbox.final_event_type(job.status.value), job.public_view())
        elif job.webhook_progress and job.status.active:
            await outbox.enqueue_progress(conn, job.id, job.public_view(), self._progress_interval)


# Final statuses hand the job to the settlement hook: $N is the lease the finishing worker keeps on it, so
# it calls on_final right away while the sweep of other workers leaves it alone.
_FINAL_RESET = (
    "lease_owner=NULL, lease_until=NULL, final_handled=false, final_attempts=0, final_error=NULL, "
    "final_next_attempt_at=now(), final_lease_until=now() + make_interval(secs => $%s)"
)


def _final_reset(param: int) -> str:
    return _FINAL_RESET % param


async def _locked_job(conn: Any, job_id: UUID) -> JobRecord:
    r = await conn.fetchrow("SELECT * FROM generation_jobs WHERE id=$1 FOR UPDATE", job_id)
    if r is None:
        raise JobNotFound(str(job_id))
    return JobRecord.from_record(r)


async def _owned(conn: Any, job_id: UUID, owner: str) -> JobRecord | None:
    """The job, locked, if ``owner`` still holds an active lease on it; otherwise None (stop working)."""
    r = await conn.fetchrow("SELECT * FROM generation_jobs WHERE id=$1 FOR UPDATE", job_id)
    if r is None:
        return None
    job = JobRecord.from_record(r)
    if job.lease_owner != owner or not job.status.active:
        return None
    return job


async def _locked_step(conn: Any, job_id: UUID, idx: int) -> StepRecord:
    r = await conn.fetchrow(
        "SELECT * FROM generation_job_steps WHERE job_id=$1 AND idx=$2 FOR UPDATE", job_id, idx
    )
    if r is None:
        raise JobNotFound(f"{job_id} step {idx}")
    return StepRecord.from_record(r)
