"""`x402-resource-server`: sell an API through x402.

  x402-resource-server serve --pricing FILE                   the demo handlers behind the pricing file
  x402-resource-server gateway --upstream URL --pricing FILE  any upstream HTTP API behind the pricing file

Settings come from X402_RS_* environment variables (see resource_server/config.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from starlette.types import ASGIApp

from shared.serving import serve_with_database
from shared.telemetry.logging import configure_logging
from shared.telemetry.tracing import configure_tracing

from .app import create_app, create_gateway_app
from .config import ResourceServerSettings
from .pricing.loader import PricingConfigError, load_pricing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x402-resource-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "serve the demo handlers"), ("gateway", "proxy an upstream API")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--pricing", type=Path, help="pricing TOML file (default: X402_RS_PRICING_FILE)")
        sub.add_argument("--host")
        sub.add_argument("--port", type=int)
        if name == "gateway":
            sub.add_argument("--upstream", help="base URL of the API to sell (default: X402_RS_UPSTREAM_URL)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = ResourceServerSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-resource-server", settings.otel_exporter)
    pricing_file = args.pricing or settings.pricing_file
    if pricing_file is None:
        sys.exit("x402-resource-server: --pricing FILE (or X402_RS_PRICING_FILE) is required")
    try:
        pricing = load_pricing(pricing_file, default_pay_to=settings.pay_to)
    except PricingConfigError as exc:
        sys.exit(f"x402-resource-server: {exc}")
    upstream: str | None = getattr(args, "upstream", None) or settings.upstream_url
    if args.command == "gateway" and upstream is None:
        sys.exit("x402-resource-server gateway: --upstream URL (or X402_RS_UPSTREAM_URL) is required")

    def build(dsn: str) -> ASGIApp:
        if upstream is not None and args.command == "gateway":
            return create_gateway_app(settings, dsn, pricing, upstream=upstream)
        return create_app(settings, dsn, pricing)

    serve_with_database(
        build,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        data_dir=settings.data_dir,
        host=args.host or settings.host,
        port=args.port or settings.port,
    )


if __name__ == "__main__":
    main()
