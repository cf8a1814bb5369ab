"""Serve our resource server (the demo handlers behind a pricing file) with uvicorn in this process.

    python -m bench.e2e_serve CONFIG.json

Used by bench/e2e_bench.py, which writes the config. The app is built as `x402-resource-server serve
--no-generation` builds it (resource_server/cli.py): settings, `load_pricing(file, default_pay_to=...)`,
logging and tracing configured as the CLI does, `create_app(settings, dsn, pricing)`; served with the same
uvicorn options as bench/serve.py serves the facilitator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import uvicorn


def resource_server_app(cfg: dict[str, Any]) -> Any:
    from resource_server.app import create_app
    from resource_server.config import ResourceServerSettings
    from resource_server.pricing.loader import load_pricing
    from shared.telemetry.logging import configure_logging
    from shared.telemetry.tracing import configure_tracing

    # Product defaults unless the benchmark was asked to override a setting (--rs-setting).
    settings = ResourceServerSettings(
        facilitator_urls=[cfg["facilitator_url"]],
        facilitator_api_key=cfg["facilitator_api_key"],
        pay_to=cfg["pay_to"],
        **cfg.get("settings", {}),
    )
    pricing = load_pricing(Path(cfg["pricing_file"]), default_pay_to=settings.pay_to)
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-resource-server", settings.otel_exporter)
    return create_app(settings, cfg["dsn"], pricing)


def main(argv: list[str]) -> None:
    cfg = json.loads(Path(argv[0]).read_text())
    uvicorn.run(
        resource_server_app(cfg),
        host="127.0.0.1",
        port=cfg["port"],
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=600,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
