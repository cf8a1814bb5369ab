"""The two applications: `create_app` (handlers behind the payment middleware, plus /pricing, /quote, /audit,
/health, /metrics, and with `generation` the generation API: /tools, /generate, /jobs) and
`create_gateway_app` (the same endpoints, and every other path proxied to an upstream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypedDict

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from shared.telemetry.metrics import metrics_endpoint

from . import reasons
from .api import API_PATHS
from .api import ROUTES as API_ROUTES
from .challenges.store import ChallengeStore
from .config import ResourceServerSettings
from .demo import DEMO_ROUTES
from .facilitator_client import FacilitatorClient
from .gateway import PathRejected, ProxyApp, normalized_scope
from .middleware import Mode, PaymentMiddleware
from .pricing.model import PricingConfig
from .responses import send_error
from .runtime import Runtime

if TYPE_CHECKING:
    from .generation_api.service import GenerationApi

METRICS_PATH = "/metrics"
# Served by the resource server itself, never priced.
OWN_PATHS = API_PATHS | {METRICS_PATH}


class _Options(TypedDict):
    pricing: PricingConfig
    store: ChallengeStore
    facilitator: FacilitatorClient
    challenge_ttl_seconds: float
    mode: Mode
    public_url: str | None
    max_body_bytes: int
    max_payment_header_bytes: int


def _middleware_options(runtime: Runtime, mode: Mode) -> _Options:
    s = runtime.settings
    return {
        "pricing": runtime.pricing,
        "store": runtime.store,
        "facilitator": runtime.facilitator,
        "challenge_ttl_seconds": s.challenge_ttl_seconds,
        "mode": mode,
        "public_url": s.public_url,
        "max_body_bytes": s.max_body_bytes,
        "max_payment_header_bytes": s.max_payment_header_bytes,
    }


def _metrics_route(runtime: Runtime) -> Route:
    return Route(METRICS_PATH, metrics_endpoint(runtime.metrics.registry), methods=["GET"])


def _generation_registry(generation: GenerationApi) -> CollectorRegistry | None:
    from .generation_api.backend import BackendNotOpen

    try:
        return generation.backend.stack.metrics.registry
    except BackendNotOpen:  # not started yet, or stopped
        return None


def create_app(
    settings: ResourceServerSettings,
    dsn: str,
    pricing: PricingConfig,
    *,
    handlers: Sequence[BaseRoute] = DEMO_ROUTES,
    generation: GenerationApi | None = None,
) -> Starlette:
    runtime = Runtime.build(
        settings,
        pricing,
        owned=generation.endpoint.matches if generation is not None else None,
        endpoint_routes=generation.endpoint.route_keys if generation is not None else (),
    )
    if generation is not None:
        # One /metrics for both: the generation stack's registry (rebuilt at each start) is followed.
        runtime.metrics.include(lambda: _generation_registry(generation))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start(dsn)
        try:
            if generation is not None:
                await generation.start(dsn, runtime)
            try:
                yield
            finally:
                if generation is not None:
                    await generation.stop()
        finally:
            await runtime.stop()

    # The generation API's routes come first: its /health reports the providers too.
    own = generation.routes if generation is not None else []
    app = Starlette(
        routes=[*own, *API_ROUTES, _metrics_route(runtime), *handlers],
        middleware=[
            Middleware(
                PaymentMiddleware,
                exclude_paths=OWN_PATHS,
                endpoints=[generation.endpoint] if generation is not None else [],
                exclude_prefixes=generation.free_prefixes if generation is not None else (),
                **_middleware_options(runtime, "buffered"),
            )
        ],
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.generation = generation
    return app


class GatewayApp:
    """Own endpoints by path, everything else through the payment middleware to the upstream."""

    def __init__(self, runtime: Runtime, api: Starlette, paid: PaymentMiddleware) -> None:
        self.runtime = runtime
        self.api = api
        self.paid = paid
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Once, before anything reads the path: priced, routed and forwarded as the same path.
            try:
                scope = normalized_scope(scope)
            except PathRejected as exc:
                await send_error(send, 400, reasons.INVALID_PATH, str(exc))
                return
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] in OWN_PATHS):
            await self.api(scope, receive, send)
        elif scope["type"] == "http":
            await self.paid(scope, receive, send)
        # websockets are not proxied: no x402 transport is defined for them


def create_gateway_app(
    settings: ResourceServerSettings, dsn: str, pricing: PricingConfig, *, upstream: str
) -> GatewayApp:
    runtime = Runtime.build(settings, pricing)
    proxy = ProxyApp(
        upstream,
        timeout=settings.upstream_timeout_seconds,
        forward_authorization=settings.forward_authorization,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start(dsn)
        try:
            yield
        finally:
            await runtime.stop()
            await proxy.aclose()

    api = Starlette(routes=[*API_ROUTES, _metrics_route(runtime)], lifespan=lifespan)
    api.state.runtime = runtime
    paid = PaymentMiddleware(proxy, **_middleware_options(runtime, "stream"))
    return GatewayApp(runtime, api, paid)
