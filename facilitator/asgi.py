"""ASGI entry point for multi-process serving (`x402-facilitator --workers N`): each worker process builds
the app from the environment. The replicas coordinate through the database (leases, signer nonces), so
workers behave like replicas on one host."""

from __future__ import annotations

from starlette.applications import Starlette

from shared.telemetry.logging import configure_logging
from shared.telemetry.tracing import configure_tracing

from .app import create_app
from .config import FacilitatorSettings


def create_app_from_env() -> Starlette:
    settings = FacilitatorSettings()
    if settings.database_url is None:
        raise RuntimeError("DATABASE_URL must be set for worker processes")
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-facilitator", settings.otel_exporter)
    return create_app(settings, settings.database_url.get_secret_value())
