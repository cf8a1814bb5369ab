"""The resource server's moving parts in one object: pricing, challenge store, facilitator client,
reconciler and metrics, opened and closed with the application's lifespan."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from .challenges.store import ChallengeStore
from .config import ResourceServerSettings
from .facilitator_client import FacilitatorClient
from .metrics import ResourceServerMetrics
from .paywall import Paywall
from .pricing.model import PricingConfig
from .reconciler import RecoverableRoutes, SettlementReconciler


@dataclass
class Runtime:
    settings: ResourceServerSettings
    pricing: PricingConfig
    store: ChallengeStore
    facilitator: FacilitatorClient
    reconciler: SettlementReconciler
    metrics: ResourceServerMetrics

    @property
    def paywall(self) -> Paywall:
        return Paywall(
            self.store, self.facilitator, challenge_ttl_seconds=self.settings.challenge_ttl_seconds
        )

    @classmethod
    def build(
        cls,
        settings: ResourceServerSettings,
        pricing: PricingConfig,
        *,
        owned: Callable[[str, str], bool] | None = None,
        endpoint_routes: Collection[str] = (),
    ) -> Runtime:
        """`owned(method, path)`: routes a priced endpoint serves, whose payments it settles itself (the
        reconciler leaves their abandoned claims alone); `endpoint_routes`: the route keys of its
        challenges, whose claims no job took over are resolved after expiry (`RecoverableRoutes.of`)."""
        metrics = ResourceServerMetrics()
        store = ChallengeStore(metrics=metrics)
        facilitator = FacilitatorClient(
            settings.facilitator_urls,
            api_key=settings.facilitator_api_key.get_secret_value() if settings.facilitator_api_key else None,
            timeout=settings.facilitator_timeout_seconds,
            settle_timeout=settings.facilitator_settle_timeout_seconds,
            metrics=metrics,
        )
        reconciler = SettlementReconciler(
            store,
            facilitator,
            interval=settings.reconcile_interval_seconds,
            lease_seconds=settings.reconcile_lease_seconds,
            routes=RecoverableRoutes.of(pricing, owned=owned, endpoint_routes=endpoint_routes),
            stuck_after_seconds=settings.stuck_verified_after_seconds,
            retention_seconds=settings.expired_retention_seconds,
            metrics=metrics,
        )
        return cls(settings, pricing, store, facilitator, reconciler, metrics)

    async def start(self, dsn: str) -> None:
        await self.store.open(dsn)
        self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        await self.facilitator.aclose()
        await self.store.close()
