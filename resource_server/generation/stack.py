"""Wiring for the API layer: one call builds the engine with the music tool, providers, artifact store and
metrics; workers and webhook dispatchers are made from it and run as background tasks (or processes)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .artifacts import ArtifactStore
from .engine.service import EngineSettings, GenerationEngine
from .engine.tools import Tool
from .engine.wakeup import QueueWaker
from .engine.worker import OnFinal, Worker, WorkerConfig, default_owner
from .metrics import GenerationMetrics
from .providers.base import MusicProvider, PromptRefiner
from .providers.chain import ProviderChain
from .providers.config import ProviderSettings, build_providers, build_refiner
from .providers.readiness import provider_readiness
from .tools.music import music_tool
from .webhooks.deliveries import DeliveryStore
from .webhooks.dispatcher import WebhookDispatcher, WebhookPolicy


@dataclass
class GenerationStack:
    engine: GenerationEngine
    artifacts: ArtifactStore
    providers: list[MusicProvider]
    refiner: PromptRefiner
    metrics: GenerationMetrics
    _closers: list[Any] = field(default_factory=list)

    def worker(
        self,
        on_final: OnFinal | None,
        config: WorkerConfig | None = None,
        owner: str | None = None,
        waker: QueueWaker | None = None,
    ) -> Worker:
        return Worker(
            self.engine.store,
            self.engine.tools,
            on_final=on_final,
            config=config,
            owner=owner,
            metrics=self.metrics,
            waker=waker,
        )

    def dispatcher(self, policy: WebhookPolicy | None = None, owner: str | None = None) -> WebhookDispatcher:
        # The dispatcher's allow-list should match the one submissions were checked against.
        policy = policy or WebhookPolicy(allow=self.engine.settings.webhook_allow)
        dispatcher = WebhookDispatcher(
            DeliveryStore(self.engine.store.pool),
            policy,
            owner=owner or default_owner(),
            metrics=self.metrics,
        )
        self._closers.append(dispatcher)
        return dispatcher

    async def readiness(self) -> dict[str, Any]:
        return await provider_readiness(self.providers)

    async def aclose(self) -> None:
        await self.engine.stop()
        for item in [*self._closers, *self.providers, self.refiner]:
            close = getattr(item, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def build_stack(
    pool: asyncpg.Pool,
    *,
    provider_settings: ProviderSettings | None = None,
    engine_settings: EngineSettings | None = None,
    metrics: GenerationMetrics | None = None,
    extra_tools: Sequence[Tool] = (),
) -> GenerationStack:
    """Providers and refiner from the environment unless settings are given; the local synthesizer is
    always the last provider, so the stack works offline. ``extra_tools`` are served next to music."""
    settings = provider_settings if provider_settings is not None else ProviderSettings()
    metrics = metrics or GenerationMetrics()
    providers = build_providers(settings)
    refiner = build_refiner(settings)
    artifacts = ArtifactStore(pool)
    tool = music_tool(chain=ProviderChain(providers, metrics), refiner=refiner, artifacts=artifacts)
    engine = GenerationEngine(pool, [tool, *extra_tools], engine_settings, metrics=metrics)
    return GenerationStack(engine, artifacts, providers, refiner, metrics)
