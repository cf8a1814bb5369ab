"""`x402-resource-server`: sell an API through x402.

  x402-resource-server serve --pricing FILE                   the demo handlers behind the pricing file, plus
                                                              the generation API (/tools, /generate, /jobs)
                                                              with a worker and the webhook dispatcher
  x402-resource-server worker                                 generation workers only (scale-out)
  x402-resource-server gateway --upstream URL --pricing FILE  any upstream HTTP API behind the pricing file

Settings come from X402_RS_* environment variables (see resource_server/config.py) and, for generation,
X402_RS_GENERATION_* (resource_server/generation_api/settings.py)."""

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
from .generation_api.accepts import AcceptsError
from .generation_api.service import GenerationApi, GenerationConfigError
from .generation_api.settings import GenerationApiSettings
from .generation_api.worker_command import worker_main
from .pricing.loader import PricingConfigError, load_pricing
from .pricing.model import PricingConfig


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
        else:
            sub.add_argument(
                "--no-worker",
                action="store_true",
                help="no generation worker in this process (X402_RS_GENERATION_WORKER=false)",
            )
            sub.add_argument(
                "--no-generation",
                action="store_true",
                help="do not offer the generation API (X402_RS_GENERATION_ENABLED=false)",
            )
    worker = commands.add_parser("worker", help="run generation workers and the webhook dispatcher only")
    worker.add_argument(
        "--concurrency", type=int, help="jobs run at once (X402_RS_GENERATION_WORKER_CONCURRENCY)"
    )
    worker.add_argument("--no-dispatcher", action="store_true", help="do not send webhooks from this process")
    return parser


def _generation(
    args: argparse.Namespace, settings: ResourceServerSettings, pricing: PricingConfig
) -> GenerationApi | None:
    generation = GenerationApiSettings()
    if args.no_generation or not generation.enabled:
        return None
    try:
        return GenerationApi(
            generation, settings, pricing, run_worker=generation.worker and not args.no_worker
        )
    except (AcceptsError, GenerationConfigError) as exc:
        sys.exit(f"x402-resource-server: {exc}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = ResourceServerSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-resource-server", settings.otel_exporter)
    if args.command == "worker":
        generation = GenerationApiSettings()
        if args.concurrency is not None:
            if args.concurrency < 1:
                sys.exit("x402-resource-server worker: --concurrency must be at least 1")
            generation = generation.model_copy(update={"worker_concurrency": args.concurrency})
        worker_main(settings, generation, dispatcher=not args.no_dispatcher)
        return
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
    generation_api = _generation(args, settings, pricing) if args.command == "serve" else None

    def build(dsn: str) -> ASGIApp:
        if upstream is not None and args.command == "gateway":
            return create_gateway_app(settings, dsn, pricing, upstream=upstream)
        return create_app(settings, dsn, pricing, generation=generation_api)

    serve_with_database(
        build,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        data_dir=settings.data_dir,
        host=args.host or settings.host,
        port=args.port or settings.port,
    )


if __name__ == "__main__":
    main()
