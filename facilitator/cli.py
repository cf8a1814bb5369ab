"""`x402-facilitator`: serve the facilitator with the settings from the environment / config file."""

from __future__ import annotations

import argparse

from shared.serving import serve_with_database
from shared.telemetry.logging import configure_logging
from shared.telemetry.tracing import configure_tracing

from .app import create_app
from .config import FacilitatorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="x402-facilitator", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int, help="worker processes (default: X402_WORKERS or 1)")
    args = parser.parse_args(argv)
    settings = FacilitatorSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-facilitator", settings.otel_exporter)
    serve_with_database(
        lambda dsn: create_app(settings, dsn),
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        data_dir=settings.data_dir,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        factory="facilitator.asgi:create_app_from_env",
    )


if __name__ == "__main__":
    main()
