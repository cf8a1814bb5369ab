"""The stack's child services. Each is one `start_*(ctx) -> Service` function listed in SERVICES; they start
in that order (later ones can use earlier ones through `ctx.services`) and stop in reverse."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from shared.devchain.chain import DevChain

from .children import ChildProcess, StartupError
from .datadir import DataDir
from .ports import HOST, Ports, ensure_free
from .shutdown import Shutdown


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    process: ChildProcess
    info: dict[str, Any]  # merged into stack.json


@dataclass
class StackContext:
    data_dir: DataDir
    ports: Ports
    chain: DevChain
    database_url: str
    shutdown: Shutdown
    pay_to: str
    services: dict[str, Service] = field(default_factory=dict)


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without its X402_* and DATABASE_URL (a shell set up for a real
    deployment, X402_CONFIG_FILE say, must not leak into the dev stack), plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("X402_") and k != "DATABASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they happen
    env.update(settings)
    return env


def start_python_service(
    ctx: StackContext,
    name: str,
    module: str,
    port: int,
    settings: Mapping[str, str],
    health_path: str,
    args: Sequence[str] = (),
) -> tuple[str, ChildProcess]:
    """Run `python -m module [args] --host --port` and wait for its health endpoint; the process is stopped
    again if it never becomes healthy."""
    ensure_free(port, name)
    argv = [sys.executable, "-m", module, *args, "--host", HOST, "--port", str(port)]
    process = ChildProcess.spawn(name, argv, child_env(settings), ctx.data_dir.log_file(name))
    url = f"http://{HOST}:{port}"
    try:
        process.wait_healthy(url + health_path, ctx.shutdown)
    except BaseException:
        process.stop()
        raise
    return url, process


def start_facilitator(ctx: StackContext) -> Service:
    api_key = "dev-" + secrets.token_urlsafe(24)
    keys = ctx.chain.facilitator_keys
    url, process = start_python_service(
        ctx,
        "facilitator",
        "facilitator.cli",
        ctx.ports.facilitator,
        {
            "X402_NETWORK": ctx.chain.network,
            "X402_RPC_URLS": ctx.chain.rpc_url,
            "X402_SIGNER_KEYS": ",".join(keys),
            "X402_API_KEYS": api_key,
            "X402_EIP6492_FACTORIES": ctx.chain.wallet_factory,
            "DATABASE_URL": ctx.database_url,
            "X402_PORT": str(ctx.ports.facilitator),
            "X402_LOG_JSON": "false",
        },
        "/health",
    )
    signers = [str(Account.from_key(k).address) for k in keys]
    return Service(
        "facilitator",
        url,
        process,
        {
            "facilitator_url": url,
            "facilitator_api_key": api_key,
            "facilitator_signers": signers,
            "receipt_signer": signers[0],  # the facilitator signs receipts with its first key by default
        },
    )


DEMO_PRICING = Path(__file__).resolve().parents[1] / "examples" / "pricing.toml"


def start_resource_server(ctx: StackContext) -> Service:
    facilitator = ctx.services["facilitator"]
    url, process = start_python_service(
        ctx,
        "resource_server",
        "resource_server.cli",
        ctx.ports.resource_server,
        {
            "X402_RS_FACILITATOR_URLS": facilitator.url,
            "X402_RS_FACILITATOR_API_KEY": str(facilitator.info["facilitator_api_key"]),
            "X402_RS_PAY_TO": ctx.pay_to,
            "DATABASE_URL": ctx.database_url,  # its tables are prefixed rs_, so one database serves both
            "X402_RS_LOG_JSON": "false",
            # The generation API runs with a worker and the webhook dispatcher in this same process;
            # webhooks may go to receivers on this machine, which production refuses.
            "X402_RS_GENERATION_WORKER": "true",
            "X402_RS_GENERATION_WEBHOOK_ALLOW": "127.0.0.0/8,::1",
        },
        "/health",
        args=("serve", "--pricing", str(DEMO_PRICING)),
    )
    try:
        tools = generation_tools(url)
    except BaseException:
        process.stop()
        raise
    return Service(
        "resource_server",
        url,
        process,
        {
            "resource_server_url": url,
            "pricing_file": str(DEMO_PRICING),
            "demo_routes": {
                "fixed_price": {"method": "GET", "url": f"{url}/weather"},
                "path_priced": {"method": "GET", "url": f"{url}/items/42"},
                "dynamic_price": {
                    "method": "POST",
                    "url": f"{url}/render",
                    "example_body": {"duration": 30, "resolution": "1080p"},
                    "quote": f"{url}/quote",
                },
            },
            "generate_url": f"{url}/generate",
            "tools": tools,
        },
    )


def generation_tools(url: str) -> list[dict[str, Any]]:
    """The served tool catalogue, reduced to what a client needs to find each tool."""
    try:
        catalogue = httpx.get(f"{url}/tools", timeout=10.0).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as exc:
        raise StartupError(f"the resource server's tool catalogue is unreadable: {exc}") from exc
    return [
        {
            "id": tool["id"],
            "url": tool["urls"]["self"],
            "quote_url": tool["urls"]["quote"],
            "generate_url": tool["urls"]["generate"],
            "settlement": tool["payment"]["settlement"],
            "example_body": {"tool": tool["id"], "inputs": _example_inputs(tool["inputSchema"])},
        }
        for tool in catalogue["tools"]
    ]


def _example_inputs(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    example: dict[str, Any] = {}
    if "prompt" in properties:
        example["prompt"] = "calm piano over soft rain"
    if "duration_seconds" in properties:
        example["duration_seconds"] = 10
    return example


SERVICES: tuple[Callable[[StackContext], Service], ...] = (start_facilitator, start_resource_server)
