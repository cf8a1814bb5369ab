"""Serve one facilitator (ours or the SDK's) with uvicorn in this process.

    python -m bench.serve CONFIG.json


The benchmark starts each target as its own process so the load generator never shares an event loop
(or a GIL) with the server it measures. The config file is written by bench/facilitator_bench.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn


def ours_app(cfg: dict[str, Any]) -> Any:
    from facilitator.app import create_app
    from facilitator.config import FacilitatorSettings, NetworkSettings
    from shared.telemetry.logging import configure_logging
    from shared.telemetry.tracing import configure_tracing

    network = NetworkSettings(
        network=cfg["network"],
        rpc_urls=[cfg["rpc_url"]],
        signer_keys=cfg["signer_keys"],
        eip6492_factories=cfg.get("eip6492_factories", []),
        receipt_timeout_seconds=cfg["receipt_timeout_seconds"],
        **cfg.get("network_settings", {}),
    )
    # Product defaults unless the benchmark was asked to override a setting (--ours-setting).
    settings = FacilitatorSettings(networks=[network], api_keys=[cfg["api_key"]], **cfg.get("settings", {}))
    # As `x402-facilitator` (facilitator/cli.py) does: structured JSON logs, tracing off unless asked.
    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing("x402-facilitator", settings.otel_exporter)
    return create_app(settings, cfg["dsn"])


def sdk_app(cfg: dict[str, Any]) -> Any:
    from bench.sdk_facilitator import create_app

    return create_app(
        private_key=cfg["private_key"],
        rpc_url=cfg["rpc_url"],
        network=cfg["network"],
        mode=cfg.get("mode", "thread"),
        threads=cfg.get("threads", 32),
        confirmation_timeout_seconds=cfg["receipt_timeout_seconds"],
    )


def install_sniffio_shim() -> None:
    """Experiment only (--exp-sniffio-shim): httpcore calls `import sniffio` on every request and the
    package is not installed (anyio 4.16 no longer depends on it), so each call searches sys.path and
    fails. A stand-in module shows what installing `sniffio` would save."""
    import types

    if "sniffio" in sys.modules:
        return
    try:
        import sniffio  # noqa: F401

        return
    except ImportError:
        pass
    shim = types.ModuleType("sniffio")
    shim.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
    sys.modules["sniffio"] = shim


def worker_app() -> Any:
    """App factory for multi-process serving: each uvicorn worker reads the config named in the env."""
    return ours_app(json.loads(Path(os.environ["BENCH_SERVE_CONFIG"]).read_text()))


def main(argv: list[str]) -> None:
    cfg = json.loads(Path(argv[0]).read_text())
    if cfg.get("sniffio_shim"):
        install_sniffio_shim()
    workers = int(cfg.get("workers") or 1)
    if cfg["kind"] == "ours" and workers > 1:
        os.environ["BENCH_SERVE_CONFIG"] = argv[0]
        app: Any = "bench.serve:worker_app"
    else:
        app = ours_app(cfg) if cfg["kind"] == "ours" else sdk_app(cfg)
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=workers if isinstance(app, str) else None,
        host="127.0.0.1",
        port=cfg["port"],
        log_level="warning",
        access_log=False,
        # Enough for the block-time scenario's 1,000 simultaneous connections.
        backlog=4096,
        timeout_keep_alive=600,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
