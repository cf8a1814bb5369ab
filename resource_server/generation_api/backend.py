"""The generation engine on its own connection pool, and the background work a process runs with it:
workers (whose settlement hook settles or releases job payments through the paywall) and the webhook
dispatcher. `serve` runs one in-process; `x402-resource-server worker` runs only this, for scale-out."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import time
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from shared.storage.database import connect_pool, migrate

from ..generation.engine.admission import EngineLimits
from ..generation.engine.service import EngineSettings, GenerationEngine
from ..generation.engine.tools import Tool
from ..generation.engine.wakeup import QueueWaker
from ..generation.engine.worker import WorkerConfig
from ..generation.providers.config import ProviderSettings
from ..generation.schema import migrate_schema
from ..generation.stack import GenerationStack, build_stack
from ..generation.tools.echo import echo_tool
from ..generation.webhooks.addresses import AllowList
from ..generation.webhooks.dispatcher import WebhookPolicy
from ..paywall import Paywall
from .payments import JobPayments
from .settings import GenerationApiSettings

log = structlog.get_logger(__name__)

API_MIGRATIONS = "generation_api"


class BackendNotOpen(RuntimeError):
    pass


def settings_tools(settings: GenerationApiSettings) -> list[Tool]:
    """Tools served besides music, as configured."""
    return [echo_tool()] if settings.echo_tool else []


class GenerationBackend:
    def __init__(
        self,
        settings: GenerationApiSettings,
        *,
        extra_tools: Sequence[Tool] = (),
        provider_settings: ProviderSettings | None = None,
        worker_config: WorkerConfig | None = None,
        webhook_policy: WebhookPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.allow = AllowList.parse(settings.webhook_allow)
        self.tools = [*settings_tools(settings), *extra_tools]
        self.provider_settings = provider_settings
        self.worker_config = worker_config or WorkerConfig(concurrency=settings.worker_concurrency)
        self.webhook_policy = webhook_policy or WebhookPolicy(allow=self.allow)
        self._pool: asyncpg.Pool | None = None
        self._stack: GenerationStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waker: QueueWaker | None = None

    @property
    def stack(self) -> GenerationStack:
        if self._stack is None:
            raise BackendNotOpen("the generation backend is not open")
        return self._stack

    @property
    def engine(self) -> GenerationEngine:
        return self.stack.engine

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendNotOpen("the generation backend is not open")
        return self._pool

    async def open(self, dsn: str, *, follow_events: bool = True) -> None:
        """Connects, applies the generation migrations and builds the engine (idempotent across replicas).
        ``follow_events`` listens for job events, which only processes serving SSE streams need: every
        listener is woken by every job event."""
        pool = await connect_pool(dsn, min_size=1, max_size=8 + self.worker_config.concurrency)
        try:
            await migrate_schema(pool)
            await migrate(
                pool,
                importlib.resources.files("resource_server.generation_api.migrations"),
                namespace=API_MIGRATIONS,
            )
            s = self.settings
            engine_settings = EngineSettings(
                limits=EngineLimits(
                    max_queued=s.max_queued,
                    max_active_per_payer=s.max_active_per_payer,
                    parallelism_hint=self.worker_config.concurrency,
                ),
                webhook_allow=self.allow,
            )
            stack = build_stack(
                pool,
                provider_settings=self.provider_settings,
                engine_settings=engine_settings,
                extra_tools=self.tools,
            )
            if follow_events:
                await stack.engine.start()
        except BaseException:
            await pool.close()
            raise
        self._pool, self._stack = pool, stack

    def job_payments(self, paywall: Paywall, clock: Callable[[], float] = time.time) -> JobPayments:
        # Within a quarter of the margin left, a settlement could not land in time: release instead.
        return JobPayments(
            paywall,
            self.engine,
            release_before_expiry_seconds=self.settings.settle_margin_seconds / 4,
            clock=clock,
        )

    async def run_background(self, payments: JobPayments, *, workers: int, dispatcher: bool) -> None:
        """Start ``workers`` worker loops (each runs worker_config.concurrency jobs) whose settlement hook
        is ``payments``, and the webhook dispatcher."""
        if workers:
            # One listening connection wakes every idle slot of this process when a job is queued.
            self._waker = QueueWaker(self.pool)
            await self._waker.start()
        for i in range(workers):
            worker = self.stack.worker(payments.on_final, self.worker_config, waker=self._waker)
            self._tasks.append(asyncio.create_task(worker.run(), name=f"generation-worker-{i}"))
        if dispatcher:
            webhooks = self.stack.dispatcher(self.webhook_policy)
            self._tasks.append(asyncio.create_task(webhooks.run(), name="generation-webhooks"))
        log.info("generation_background_started", workers=workers, dispatcher=dispatcher)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._waker is not None:
            await self._waker.stop()
            self._waker = None
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
