"""The worker loop: claim a job, run its remaining steps under a heartbeated lease, settle its outcome.

Any number of workers (tasks or processes) share one queue through the store's SKIP LOCKED claims. A
worker that dies keeps nothing: its lease runs out, the next claim resumes the job at the step it was on
(finished steps' outputs are in the database), and a step that keeps killing its worker is failed after
its attempt budget instead of looping forever."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import uuid4

import orjson
import structlog

from ..backoff import Backoff
from ..errors import ErrorCategory, GenerationError, deadline_exceeded
from ..metrics import GenerationMetrics
from .failures import FailJob, after_failure, classify
from .progress import job_progress, worth_recording
from .records import JobRecord, StepRecord
from .states import StepStatus
from .store import JobStore
from .tools import StepContext, StepOutput, Tool
from .wakeup import QueueWaker

log = structlog.get_logger(__name__)

OnFinal = Callable[[JobRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0  # well under the lease, so two missed beats still keep it
    poll_seconds: float = 1.0
    concurrency: int = 1  # jobs this worker runs at once
    step_backoff: Backoff = field(default_factory=lambda: Backoff(base_seconds=2.0, cap_seconds=120.0))
    final_backoff: Backoff = field(default_factory=lambda: Backoff(base_seconds=1.0, cap_seconds=300.0))
    final_lease_seconds: float = 60.0  # how long one worker has to run on_final before another may


class LeaseLost(Exception):
    """The job was taken over or canceled: stop without touching it."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        store: JobStore,
        tools: Mapping[str, Tool],
        *,
        on_final: OnFinal | None = None,
        config: WorkerConfig | None = None,
        owner: str | None = None,
        metrics: GenerationMetrics | None = None,
        draw: Callable[[], float] = random.random,
        waker: QueueWaker | None = None,
    ) -> None:
        self.store = store
        self.waker = waker
        self.tools = dict(tools)
        self.on_final = on_final
        self.config = config or WorkerConfig()
        self.owner = owner or default_owner()
        self.metrics = metrics
        self._draw = draw

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.config.concurrency):
                group.create_task(self._slot())
            group.create_task(self._final_sweep())

    async def _slot(self) -> None:
        wake = self.waker.slot() if self.waker is not None else None
        try:
            while True:
                if wake is not None:
                    wake.clear()
                try:
                    worked = await self.run_once()
                except Exception:
                    # A database hiccup must not end the worker; the job's lease will hand it on if needed.
                    log.exception("generation_worker_error", owner=self.owner)
                    worked = False
                if worked:
                    continue
                if wake is None:
                    await asyncio.sleep(self.config.poll_seconds)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.config.poll_seconds)
        finally:
            if wake is not None and self.waker is not None:
                self.waker.leave(wake)

    async def _final_sweep(self) -> None:
        while True:
            try:
                await self.handle_finals()
            except Exception:
                log.exception("generation_final_sweep_error", owner=self.owner)
            await asyncio.sleep(self.config.poll_seconds)

    async def run_once(self) -> bool:
        """Claim and process one job; False when nothing was runnable."""
        job = await self.store.claim(self.owner, self.config.lease_seconds, list(self.tools))
        if job is None:
            return False
        await self.process(job)
        return True

    async def handle_finals(self) -> int:
        """Call on_final for final jobs whose hook has not succeeded yet; returns how many were tried."""
        tried = 0
        while (job := await self.store.claim_final(self.config.final_lease_seconds)) is not None:
            tried += 1
            await self._settle(job)
        return tried

    async def process(self, job: JobRecord) -> None:
        work = asyncio.create_task(self._run_steps(job))
        beat = asyncio.create_task(self._heartbeat(job, work))
        me = asyncio.current_task()
        outcome: JobRecord | None = None
        try:
            outcome = await work
        except LeaseLost:
            log.info("generation_lease_lost", job_id=str(job.id), owner=self.owner)
        except asyncio.CancelledError:
            if me is not None and me.cancelling():
                raise  # this worker is shutting down
            # Cancelled by the heartbeat: the job was canceled or taken over.
            log.info("generation_lease_lost", job_id=str(job.id), owner=self.owner)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                    await work
            if me is not None and me.cancelling():
                # Shutting down: hand the job on now rather than when the lease runs out.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(job.id, self.owner))
        # Outside the heartbeat's reach: a final job fails the heartbeat, which must not cut the hook short.
        if outcome is not None and outcome.status.final:
            self._count_final(outcome)
            await self._settle(outcome)

    async def _heartbeat(self, job: JobRecord, work: asyncio.Task[JobRecord | None]) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                alive = await self.store.heartbeat(job.id, self.owner, self.config.lease_seconds)
            except Exception:
                # Keep trying: if the database stays away the lease lapses and our writes are fenced.
                log.warning("generation_heartbeat_failed", job_id=str(job.id), exc_info=True)
                continue
            if not alive:
                work.cancel()
                return

    async def _run_steps(self, job: JobRecord) -> JobRecord | None:
        """The job as this run left it: final, or waiting for a retry."""
        tool = self.tools[job.tool]
        records = await self.store.steps(job.id)
        outputs: dict[str, StepOutput] = {
            r.name: r.output or {} for r in records if r.status is StepStatus.SUCCEEDED
        }
        for idx in range(job.current_step, len(tool.steps)):
            if records[idx].status is StepStatus.SUCCEEDED:
                continue
            stopped = await self._run_step(job, tool, idx, records[idx], outputs)
            if stopped is not None:
                return stopped
        return None

    async def _run_step(
        self, job: JobRecord, tool: Tool, idx: int, record: StepRecord, outputs: dict[str, StepOutput]
    ) -> JobRecord | None:
        """None to go on with the next step; otherwise the job, final or scheduled for a retry."""
        step = tool.steps[idx]
        if record.attempts >= step.max_attempts:
            # Every earlier attempt ended with its worker gone (it never recorded an outcome).
            error = GenerationError(
                ErrorCategory.INTERNAL,
                f"step {step.name} was interrupted {record.attempts} times",
                code="worker_lost",
            )
            return await self._fail(job, idx, error)
        remaining = _remaining_seconds(job)
        if remaining is not None and remaining <= 0:
            return await self._fail(
                job, idx, deadline_exceeded(f"the job's deadline passed before {step.name}")
            )
        base = job_progress(tool.weights, idx)
        started = await self.store.start_step(
            job.id, self.owner, idx, phase=step.phase, text=step.label or step.name, progress=base
        )
        if started is None:
            raise LeaseLost()
        context = StepContext(
            job_id=job.id,
            tool=tool.name,
            params=job.params,
            outputs=dict(outputs),
            attempt=started.attempts,
            limits=tool.limits,
            report=_Reporter(self, job, tool, idx, base, step.label or step.name),
            notice=_Noticer(self, job),
        )
        # A deadline cuts the step short too: work past it could not be paid for.
        limit = step.timeout_seconds if remaining is None else min(step.timeout_seconds, remaining)
        try:
            async with asyncio.timeout(limit):
                output = dict(await step.run(context))
            # Checked here so an output that cannot be stored fails the step (internal), instead of
            # failing the database write after it and looping through lease expiries.
            orjson.dumps(output)
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            if _past_deadline(job):
                error = deadline_exceeded(f"{step.name} was still running at the job's deadline")
                return await self._fail(job, idx, error)
            return await self._after_failure(job, tool, idx, started.attempts, classify(exc))
        outputs[step.name] = output
        last = idx == len(tool.steps) - 1
        finished = await self.store.finish_step(
            job.id,
            self.owner,
            idx,
            output,
            progress=job_progress(tool.weights, idx + 1),
            result=tool.result(outputs) if last else None,
            final_lease_seconds=self.config.final_lease_seconds,
        )
        if finished is None:
            raise LeaseLost()
        return finished if last else None

    async def _after_failure(
        self, job: JobRecord, tool: Tool, idx: int, attempts: int, error: GenerationError
    ) -> JobRecord:
        step = tool.steps[idx]
        decision = after_failure(
            error,
            attempts=attempts,
            max_attempts=step.max_attempts,
            backoff=self.config.step_backoff,
            draw=self._draw(),
        )
        if isinstance(decision, FailJob):
            log.info(
                "generation_step_failed", job_id=str(job.id), step=step.name, category=decision.category.value
            )
            return await self._fail(
                job, idx, GenerationError(decision.category, decision.message, code=error.code)
            )
        remaining = _remaining_seconds(job)
        if remaining is not None and decision.delay_seconds >= remaining:
            message = f"{step.name} failed and its retry would come after the job's deadline: {error.message}"
            return await self._fail(job, idx, deadline_exceeded(message))
        log.info("generation_step_retry", job_id=str(job.id), step=step.name, delay=decision.delay_seconds)
        if self.metrics is not None:
            self.metrics.step_retries.labels(tool.name, step.name).inc()
        waiting = await self.store.schedule_retry(job.id, self.owner, idx, error, decision.delay_seconds)
        if waiting is None:
            raise LeaseLost()
        return waiting

    async def _fail(self, job: JobRecord, idx: int, error: GenerationError) -> JobRecord:
        failed = await self.store.fail(
            job.id, self.owner, idx, error, final_lease_seconds=self.config.final_lease_seconds
        )
        if failed is None:
            raise LeaseLost()
        return failed

    def _count_final(self, job: JobRecord) -> None:
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(job.tool, job.status.value).inc()

    async def _settle(self, job: JobRecord) -> None:
        """Run the settlement hook; only its success marks the job handled, anything else retries later."""
        try:
            if self.on_final is not None:
                # Bounded within the hook's lease, so a hung call cannot overlap another worker's retry.
                async with asyncio.timeout(self.config.final_lease_seconds * 0.8):
                    await self.on_final(job)
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.final_hook_failures.inc()
            delay = self.config.final_backoff.delay(job.final_attempts + 1, self._draw())
            log.warning("generation_on_final_failed", job_id=str(job.id), error=str(exc), retry_in=delay)
            await self.store.defer_final(job, delay, f"{type(exc).__name__}: {exc}")
            return
        await self.store.mark_final_handled(job)

    async def _report(self, job: JobRecord, tool: Tool, idx: int, fraction: float, text: str) -> None:
        if not await self.store.report_progress(
            job.id, self.owner, job_progress(tool.weights, idx, fraction), text
        ):
            raise LeaseLost()

    async def _notice(self, job: JobRecord, code: str, message: str) -> None:
        if not await self.store.add_notice(job.id, self.owner, code, message):
            raise LeaseLost()


def _remaining_seconds(job: JobRecord) -> float | None:
    """Seconds left before the job's deadline (negative once past), None without one. The worker's clock
    against the database's: the API's settlement margin absorbs ordinary skew."""
    if job.deadline_at is None:
        return None
    return (job.deadline_at - datetime.now(UTC)).total_seconds()


def _past_deadline(job: JobRecord) -> bool:
    remaining = _remaining_seconds(job)
    return remaining is not None and remaining <= 0


class _Reporter:
    """A step's progress callback: maps the step's own fraction onto the job and drops noise."""

    def __init__(self, worker: Worker, job: JobRecord, tool: Tool, idx: int, base: float, text: str) -> None:
        self._worker, self._job, self._tool, self._idx = worker, job, tool, idx
        self._last, self._text = base, text

    async def __call__(self, fraction: float, text: str | None = None) -> None:
        new_text = text if text is not None else self._text
        new = job_progress(self._tool.weights, self._idx, fraction)
        if not worth_recording(self._last, new, self._text, new_text):
            return
        await self._worker._report(self._job, self._tool, self._idx, fraction, new_text)
        self._last, self._text = new, new_text


class _Noticer:
    def __init__(self, worker: Worker, job: JobRecord) -> None:
        self._worker, self._job = worker, job

    async def __call__(self, code: str, message: str) -> None:
        await self._worker._notice(self._job, code, message)
