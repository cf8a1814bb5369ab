"""The generation API as one object the resource server app mounts: payment terms, the engine backend,
the server secret, the /generate priced endpoint and the routes; started and stopped with the app."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute

from ..config import ResourceServerSettings
from ..generation.engine.records import JobRecord
from ..generation.engine.service import GenerationEngine
from ..generation.engine.states import JobStatus
from ..generation.engine.tools import Tool
from ..generation.engine.worker import WorkerConfig
from ..generation.providers.config import ProviderSettings
from ..generation.webhooks.dispatcher import WebhookPolicy
from ..paywall import Paywall
from ..pricing.model import PricingConfig
from ..runtime import Runtime
from . import access
from .accepts import resolve_accepts
from .backend import BackendNotOpen, GenerationBackend
from .endpoint import GenerateEndpoint
from .offers import PaymentTerms
from .payments import JobPayments
from .server_secret import server_secret
from .settings import GenerationApiSettings
from .views import job_view

# Paths served by the generation API itself, never priced by the pricing file (POST /generate is priced
# by its own endpoint).
FREE_PREFIXES = ("/tools", "/jobs")
MUSIC = "music"  # build_stack always serves the music tool under this name


class GenerationConfigError(ValueError):
    pass


class GenerationApi:
    def __init__(
        self,
        settings: GenerationApiSettings,
        server: ResourceServerSettings,
        pricing: PricingConfig,
        *,
        run_worker: bool | None = None,
        extra_tools: Sequence[Tool] = (),
        provider_settings: ProviderSettings | None = None,
        worker_config: WorkerConfig | None = None,
        webhook_policy: WebhookPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Raises GenerationConfigError (or AcceptsError) for settings that cannot work, at start-up."""
        self.settings = settings
        self.server = server
        accepts = resolve_accepts(settings.accepts, pricing, settings.pay_to or server.pay_to)
        self.terms = PaymentTerms(
            accepts,
            settings.settle_margin_seconds,
            settings.signing_grace_seconds,
            frozenset(settings.settle_on_accept),
        )
        self.backend = GenerationBackend(
            settings,
            extra_tools=extra_tools,
            provider_settings=provider_settings,
            worker_config=worker_config,
            webhook_policy=webhook_policy,
        )
        names = {MUSIC, *(t.name for t in self.backend.tools)}
        unknown = sorted(set(settings.settle_on_accept) - names)
        if unknown:
            raise GenerationConfigError(
                f"X402_RS_GENERATION_SETTLE_ON_ACCEPT names unknown tools: {', '.join(unknown)}"
            )
        self.run_worker = settings.worker if run_worker is None else run_worker
        self.receipt_base_url = settings.receipt_base_url or server.facilitator_urls[0]
        # Settle-on-accept jobs wait this long for their payment before running regardless (their hook
        # then settles or releases as for deferred ones): the facilitator's settle wait plus slack.
        self.accept_hold_seconds = server.facilitator_settle_timeout_seconds + 30.0
        self.clock = clock
        self.endpoint = GenerateEndpoint(self)
        self.free_prefixes = FREE_PREFIXES
        self._secret: bytes | None = None
        self._runtime: Runtime | None = None
        self._payments: JobPayments | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, dsn: str, runtime: Runtime) -> None:
        await self.backend.open(dsn)
        try:
            self._secret = await server_secret(self.backend.pool, self.settings.secret)
            self._runtime = runtime
            self._payments = self.backend.job_payments(runtime.paywall, self.clock)
            if self.run_worker:
                await self.backend.run_background(self._payments, workers=1, dispatcher=True)
        except BaseException:
            await self.backend.close()
            raise

    async def stop(self) -> None:
        await self.backend.close()

    # -- parts -------------------------------------------------------------------------------------------

    @property
    def engine(self) -> GenerationEngine:
        return self.backend.engine

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            raise BackendNotOpen("the generation API is not started")
        return self._secret

    @property
    def paywall(self) -> Paywall:
        if self._runtime is None:
            raise BackendNotOpen("the generation API is not started")
        return self._runtime.paywall

    @property
    def payments(self) -> JobPayments:
        if self._payments is None:
            raise BackendNotOpen("the generation API is not started")
        return self._payments

    @property
    def routes(self) -> list[BaseRoute]:
        from .handlers import routes

        return routes()

    def base_url(self, request: Request) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}"

    # -- views -------------------------------------------------------------------------------------------

    def job_token(self, job: JobRecord) -> str:
        return access.job_token(self.secret, job.id)

    async def accepted(self, job: JobRecord, base_url: str) -> dict[str, Any]:
        """The 202 body of POST /generate: the job's view and its token. The token is an HMAC of the job id,
        never stored, so a payment sent again (its first answer lost) gets the very same one back."""
        view = await self.view(job, base_url)
        view["job_token"] = self.job_token(job)
        return view

    async def view(self, job: JobRecord, base_url: str) -> dict[str, Any]:
        now = self.clock()
        link = (
            access.sign_result_link(self.secret, job.id, now=now, ttl_seconds=self.settings.link_ttl_seconds)
            if job.status is JobStatus.COMPLETED
            else None
        )
        return job_view(
            job,
            base_url=base_url,
            payment=await self.payments.current(job),
            receipt_base_url=self.receipt_base_url,
            result_link=link,
            now=datetime.fromtimestamp(now, UTC),
        )
