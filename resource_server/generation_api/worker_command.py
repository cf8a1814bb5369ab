"""`x402-resource-server worker`: generation workers and the webhook dispatcher, without the HTTP API.

Run as many as the work needs, on any host that reaches the database: they share the job queue through
leases (SKIP LOCKED), and each settles or releases the payments of the jobs it finishes through the
facilitator, exactly as the in-process worker of `serve` does. The process also runs the settlement
reconciler, so a `settlement_pending` answer one of its jobs got is finished, and a job's payment still held
once its authorization has expired is resolved (the hook waits for that, see payments.py), even with no API
running."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import structlog

from shared.storage.database import resolve_database_url

from ..config import ResourceServerSettings
from ..generation.engine.tools import Tool
from ..pricing.model import PricingConfig
from ..runtime import Runtime
from .backend import GenerationBackend
from .endpoint import GenerateEndpoint
from .settings import GenerationApiSettings

log = structlog.get_logger(__name__)


async def run_workers(
    server: ResourceServerSettings,
    settings: GenerationApiSettings,
    dsn: str,
    *,
    dispatcher: bool = True,
    extra_tools: Sequence[Tool] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Until ``stop`` is set (SIGTERM / SIGINT when not given): jobs in flight are handed back on the way
    out (their leases released), so another worker resumes them at once."""
    stop = stop or _stop_on_signals()
    runtime = Runtime.build(server, PricingConfig(routes=()), endpoint_routes=GenerateEndpoint.route_keys)
    await runtime.start(dsn)
    backend = GenerationBackend(settings, extra_tools=extra_tools)
    try:
        await backend.open(dsn, follow_events=False)  # no SSE streams here
        await backend.run_background(backend.job_payments(runtime.paywall), workers=1, dispatcher=dispatcher)
        log.info(
            "generation_worker_ready", concurrency=backend.worker_config.concurrency, dispatcher=dispatcher
        )
        await stop.wait()
    finally:
        await backend.close()
        await runtime.stop()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def worker_main(server: ResourceServerSettings, settings: GenerationApiSettings, *, dispatcher: bool) -> None:
    explicit = server.database_url.get_secret_value() if server.database_url else None
    # An embedded server in the same data folder is shared with `serve` (pgserver reuses a running one).
    dsn, embedded = resolve_database_url(explicit, server.data_dir / "postgres")
    try:
        asyncio.run(run_workers(server, settings, dsn, dispatcher=dispatcher))
    finally:
        if embedded is not None:
            embedded.stop()
