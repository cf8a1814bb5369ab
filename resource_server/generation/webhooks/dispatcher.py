"""The delivery worker loop: claim due deliveries (SKIP LOCKED), send them, record, back off, give up.

Any number of dispatchers share the table. Delivery is at-least-once; receivers deduplicate on X-Event-Id,
which stays the same across retries and replays of one event."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import structlog

from ..backoff import Backoff
from ..metrics import GenerationMetrics
from .addresses import AllowList
from .deliveries import Delivery, DeliveryStore
from .guarded_transport import Resolver, guarded_client, system_resolver
from .sender import SendResult, body_of, send

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    max_attempts: int = 6
    backoff: Backoff = field(default_factory=lambda: Backoff(base_seconds=5.0, cap_seconds=3600.0))
    timeout_seconds: float = 10.0  # whole attempt: connect, send, and the bounded read of the reply
    connect_timeout_seconds: float = 5.0
    max_response_bytes: int = 64 * 1024
    lease_seconds: float = 60.0
    batch: int = 20
    poll_seconds: float = 1.0
    allow: AllowList = field(default_factory=AllowList)  # empty: public destinations only

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


class WebhookDispatcher:
    def __init__(
        self,
        store: DeliveryStore,
        policy: WebhookPolicy | None = None,
        *,
        owner: str,
        client: httpx.AsyncClient | None = None,
        resolver: Resolver = system_resolver,
        metrics: GenerationMetrics | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.policy = policy or WebhookPolicy()
        self.owner = owner
        self.client = client or guarded_client(
            self.policy.allow,
            resolver=resolver,
            timeout=httpx.Timeout(self.policy.timeout_seconds, connect=self.policy.connect_timeout_seconds),
        )
        self.metrics = metrics
        self._draw = draw

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            try:
                sent = await self.run_once()
            except Exception:
                log.exception("webhook_dispatcher_error", owner=self.owner)
                sent = 0
            if sent == 0:
                await asyncio.sleep(self.policy.poll_seconds)

    async def run_once(self) -> int:
        """One batch; returns how many deliveries were attempted."""
        due = await self.store.claim_due(self.owner, self.policy.lease_seconds, self.policy.batch)
        outcomes = await asyncio.gather(*(self._deliver(d) for d in due), return_exceptions=True)
        for delivery, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, Exception):
                # Its lease runs out and the attempt (already counted) is retried by the next claim.
                log.error("webhook_delivery_error", event_id=str(delivery.event_id), error=repr(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        return len(due)

    async def _deliver(self, delivery: Delivery) -> None:
        if delivery.url is None or delivery.secret is None:
            await self.store.mark_failed(
                delivery.event_id, self.owner, status=None, error="job has no webhook", retry_in=None
            )
            return
        result = await send(
            self.client,
            url=delivery.url,
            secret=delivery.secret,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            body=body_of(delivery.payload),
            max_response_bytes=self.policy.max_response_bytes,
            deadline_seconds=self.policy.timeout_seconds,
        )
        self._count(result)
        if result.delivered:
            assert result.status is not None
            await self.store.mark_delivered(delivery.event_id, self.owner, result.status)
            return
        give_up = result.refused or delivery.attempts >= self.policy.max_attempts
        retry_in = None if give_up else self.policy.backoff.delay(delivery.attempts, self._draw())
        log.info(
            "webhook_attempt_failed",
            event_id=str(delivery.event_id),
            attempt=delivery.attempts,
            error=result.error,
            retry_in=retry_in,
        )
        await self.store.mark_failed(
            delivery.event_id, self.owner, status=result.status, error=result.error or "", retry_in=retry_in
        )

    def _count(self, result: SendResult) -> None:
        if self.metrics is None:
            return
        outcome = "delivered" if result.delivered else "refused" if result.refused else "failed"
        self.metrics.webhook_attempts.labels(outcome).inc()
