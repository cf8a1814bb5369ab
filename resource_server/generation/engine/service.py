"""The engine's face to the API layer: admission before payment, submission after, reads, follow,
retry, cancel, payment bookkeeping and webhook replays. Workers are separate (worker.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from ..metrics import GenerationMetrics
from ..webhooks.addresses import AllowList, DestinationRefused, check_webhook_url
from ..webhooks.deliveries import Delivery, DeliveryStore
from .admission import AdmissionRefused, EngineLimits, Load, Refusal, decide
from .events import JobEventHub
from .params import InvalidParams
from .pricing import PriceBreakdown
from .progress import job_progress
from .records import JobEvent, JobRecord, StepRecord
from .store import JobStore, NewJob
from .tools import Tool, tool_map


@dataclass(frozen=True, slots=True)
class JobRequest:
    tool: str
    params: Mapping[str, Any]
    payer: str | None = None
    idempotency_key: str | None = None  # e.g. the payment challenge id: a resubmission returns the job
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_progress: bool = False  # progress events too (throttled), not only the final one
    payment_challenge_id: str | None = None
    payment_nonce: str | None = None  # its EIP-3009 nonce: with the tx hash, names the payment's receipt
    settlement_status: str | None = None  # the API layer's payment state, stored with the job
    deadline_seconds: float | None = None  # past it the job fails as "timeout" (ErrorCategory.TIMEOUT)
    hold_seconds: float | None = None  # not runnable before release_hold() or this many seconds


@dataclass(frozen=True, slots=True)
class Submitted:
    job: JobRecord
    created: bool  # False: the idempotency key matched an existing job


@dataclass(frozen=True, slots=True)
class EngineSettings:
    limits: EngineLimits = field(default_factory=EngineLimits)
    webhook_allow: AllowList = field(default_factory=AllowList)
    progress_webhook_interval_seconds: float = 5.0
    event_poll_seconds: float = 1.0


class GenerationEngine:
    def __init__(
        self,
        pool: asyncpg.Pool,
        tools: Sequence[Tool],
        settings: EngineSettings | None = None,
        *,
        metrics: GenerationMetrics | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.tools = tool_map(tools)
        self.metrics = metrics
        self.store = JobStore(pool, progress_webhook_interval=self.settings.progress_webhook_interval_seconds)
        self.deliveries = DeliveryStore(pool)
        self.hub = JobEventHub(self.store, poll_seconds=self.settings.event_poll_seconds)

    async def start(self) -> None:
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()

    # -- before payment --------------------------------------------------------------------------------

    def quote(self, tool: str, params: Mapping[str, Any]) -> PriceBreakdown:
        """The price of running ``tool`` with ``params``; raises AdmissionRefused for bad input."""
        found = self._tool(tool)
        return found.price(self._parse(found, params))

    async def admission_check(
        self, tool: str, payer: str | None, params: Mapping[str, Any] | None = None
    ) -> Refusal | None:
        """None when a job would be accepted now; otherwise why not, with a Retry-After suggestion when
        waiting can help. Call BEFORE taking payment; submit_job repeats the check atomically."""
        try:
            found = self._tool(tool)
            if params is not None:
                self._parse(found, params)
        except AdmissionRefused as exc:
            return exc.refusal
        return self._decide(found, await self.store.load(payer))

    # -- after payment ---------------------------------------------------------------------------------

    async def submit_job(self, request: JobRequest) -> Submitted:
        """Create the job (queued) or return the one with the same idempotency key.

        Raises AdmissionRefused when the input is invalid or a guardrail is hit; the API layer should then
        not settle the payment."""
        tool = self._tool(request.tool)
        params = self._parse(tool, request.params)
        self._check_webhook(request)
        job, created = await self.store.create(
            NewJob(
                tool=tool.name,
                params=params,
                step_names=[s.name for s in tool.steps],
                payer=request.payer,
                price=tool.price(params).to_json(),
                idempotency_key=request.idempotency_key,
                webhook_url=request.webhook_url,
                webhook_secret=request.webhook_secret,
                webhook_progress=request.webhook_progress,
                payment_challenge_id=request.payment_challenge_id,
                payment_nonce=request.payment_nonce,
                settlement_status=request.settlement_status,
                deadline_seconds=request.deadline_seconds,
                hold_seconds=request.hold_seconds,
            ),
            admit=lambda load: self._decide(tool, load),
        )
        return Submitted(job, created)

    async def get_job(self, job_id: UUID) -> JobRecord | None:
        return await self.store.get(job_id)

    async def job_steps(self, job_id: UUID) -> list[StepRecord]:
        return await self.store.steps(job_id)

    async def job_events(self, job_id: UUID, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        return await self.store.events(job_id, after_id, limit)

    def follow_job(self, job_id: UUID, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """Events as they happen, ending after the job's final event (raises JobNotFound)."""
        return self.hub.follow(job_id, after_id)

    async def cancel_job(self, job_id: UUID) -> JobRecord:
        """Cancel an active job (a final one is returned unchanged); on_final then runs with 'canceled'."""
        job, changed = await self.store.cancel(job_id)
        if self.metrics is not None and changed:
            self.metrics.jobs_finished.labels(job.tool, job.status.value).inc()
        return job

    async def retry_job(self, job_id: UUID) -> JobRecord:
        """Re-queue a failed job at the failed step (raises JobNotRetryable otherwise). The engine does not
        charge: whether a retry needs a new payment is the API layer's decision."""
        job = await self.store.require(job_id)
        tool = self._tool(job.tool)
        return await self.store.retry(job_id, progress=job_progress(tool.weights, job.current_step))

    async def set_payment(
        self,
        job_id: UUID,
        *,
        challenge_id: str | None = None,
        tx_hash: str | None = None,
        settlement_status: str | None = None,
    ) -> JobRecord:
        job = await self.store.set_payment(
            job_id, challenge_id=challenge_id, tx_hash=tx_hash, settlement_status=settlement_status
        )
        assert job is not None  # unconditional updates either happen or raise JobNotFound
        return job

    async def sync_payment(
        self, job_id: UUID, *, expected_status: str | None, settlement_status: str, tx_hash: str | None
    ) -> JobRecord | None:
        """set_payment only while the job's settlement status is still ``expected_status``: for readers
        bringing a job up to date from the payment's own record. None when someone got there first."""
        return await self.store.set_payment(
            job_id,
            tx_hash=tx_hash,
            settlement_status=settlement_status,
            check_status=True,
            expected_status=expected_status,
        )

    async def release_hold(self, job_id: UUID) -> bool:
        """Let a job submitted with ``hold_seconds`` run now (its payment was settled)."""
        return await self.store.release_hold(job_id)

    async def redeliver_final(self, job_id: UUID) -> UUID | None:
        """Replay the final webhook event with its original event id; None if there is none."""
        return await self.deliveries.redeliver_final(job_id)

    async def webhook_deliveries(self, job_id: UUID) -> list[Delivery]:
        return await self.deliveries.for_job(job_id)

    # -- helpers ---------------------------------------------------------------------------------------

    def _tool(self, name: str) -> Tool:
        tool = self.tools.get(name)
        if tool is None:
            raise AdmissionRefused(Refusal("unknown_tool", f"no tool named {name!r}", None, 404))
        return tool

    def _parse(self, tool: Tool, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return tool.parse_params(params, tool.limits)
        except InvalidParams as exc:
            raise AdmissionRefused(Refusal(exc.code, exc.message, None, 400)) from None

    def _check_webhook(self, request: JobRequest) -> None:
        if request.webhook_url is None:
            return
        if not request.webhook_secret:
            raise AdmissionRefused(
                Refusal("invalid_webhook", "a webhook needs a secret to sign with", None, 400)
            )
        try:
            check_webhook_url(request.webhook_url, self.settings.webhook_allow)
        except DestinationRefused as exc:
            raise AdmissionRefused(Refusal("invalid_webhook", str(exc), None, 400)) from None

    def _decide(self, tool: Tool, load: Load) -> Refusal | None:
        return decide(
            load,
            limits=self.settings.limits,
            payer_limit=tool.limits.max_active_per_payer,
            expected_seconds=tool.limits.expected_seconds,
        )
