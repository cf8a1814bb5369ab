"""The resource server's moving parts in one object: pricing, challenge store, facilitator client and
reconciler, opened and closed with the application's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from .challenges.store import ChallengeStore
from .config import ResourceServerSettings
from .facilitator_client import FacilitatorClient
from .paywall import Paywall
from .pricing.model import PricingConfig
from .reconciler import SettlementReconciler


@dataclass
class Runtime:
    settings: ResourceServerSettings
    pricing: PricingConfig
    store: ChallengeStore
    facilitator: FacilitatorClient
    reconciler: SettlementReconciler

    @property
    def paywall(self) -> Paywall:
        return Paywall(
            self.store, self.facilitator, challenge_ttl_seconds=self.settings.challenge_ttl_seconds
        )

    @classmethod
    def build(cls, settings: ResourceServerSettings, pricing: PricingConfig) -> Runtime:
        store = ChallengeStore()
        facilitator = FacilitatorClient(
            settings.facilitator_urls,
            api_key=settings.facilitator_api_key.get_secret_value() if settings.facilitator_api_key else None,
            timeout=settings.facilitator_timeout_seconds,
            settle_timeout=settings.facilitator_settle_timeout_seconds,
        )
        reconciler = SettlementReconciler(
            store,
            facilitator,
            interval=settings.reconcile_interval_seconds,
            lease_seconds=settings.reconcile_lease_seconds,
        )
        return cls(settings, pricing, store, facilitator, reconciler)

    async def start(self, dsn: str) -> None:
        await self.store.open(dsn)
        self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        await self.facilitator.aclose()
        await self.store.close()
