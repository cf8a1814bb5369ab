"""The facilitator's Starlette application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from .api.auth import ApiKeyMiddleware
from .api.routes import ROUTES
from .config import FacilitatorSettings
from .service import Facilitator


def create_app(settings: FacilitatorSettings, dsn: str) -> Starlette:
    if settings.auth_required and not settings.api_keys:
        raise ValueError("API keys are required (X402_API_KEYS); set X402_AUTH_REQUIRED=false to run open")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        facilitator = await Facilitator.open(settings, dsn)
        app.state.facilitator = facilitator
        await facilitator.start()
        try:
            yield
        finally:
            await facilitator.stop()

    middleware = []
    if settings.api_keys:
        middleware.append(
            Middleware(ApiKeyMiddleware, keys=[k.get_secret_value() for k in settings.api_keys])
        )
    app = Starlette(routes=ROUTES, middleware=middleware, lifespan=lifespan)
    app.state.max_body_bytes = settings.max_body_bytes
    return app
