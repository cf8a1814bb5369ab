"""Bring the stack up in dependency order, registering each part's stop on an ExitStack so that whatever
started is stopped, in reverse, however start-up or the run ends."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account

from shared.devchain.chain import DevChain
from shared.storage.database import resolve_database_url

from .database import DATABASE_NAME, recreate_database
from .datadir import DataDir
from .ports import Ports
from .services import SERVICES, StackContext
from .shutdown import Shutdown
from .stackfile import remove_stack_file, write_stack_file


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    port_base: int
    block_time: float | None
    payer_usdc: int  # whole tokens minted to the test payer


@dataclass(frozen=True)
class RunningStack:
    ctx: StackContext
    document: dict[str, Any]  # what stack.json holds


def say(message: str) -> None:
    print(f"x402-dev: {message}", file=sys.stderr, flush=True)


def start_stack(options: StackOptions, shutdown: Shutdown, resources: ExitStack) -> RunningStack:
    data_dir = DataDir(options.data_dir.resolve())
    resources.enter_context(data_dir.locked())
    # A file left by a stack that was SIGKILLed would point clients at dead URLs.
    remove_stack_file(data_dir.stack_file)
    ports = Ports.from_base(options.port_base)
    ports.check_free()

    say(f"starting PostgreSQL in {data_dir.postgres}")
    server_dsn, embedded = resolve_database_url(None, data_dir.postgres)
    if embedded is not None:
        resources.callback(embedded.stop)
    shutdown.check()
    database_url = recreate_database(server_dsn)

    say("starting Anvil with USDC")
    chain = DevChain.start(port=ports.anvil, block_time=options.block_time)
    resources.callback(chain.stop)
    shutdown.check()
    payer = chain.new_payer(options.payer_usdc * 10**chain.usdc.decimals)
    pay_to = str(Account.create().address)

    ctx = StackContext(data_dir, ports, chain, database_url, shutdown, pay_to)
    for start in SERVICES:
        shutdown.check()
        service = start(ctx)
        resources.callback(service.process.stop)
        ctx.services[service.name] = service
        say(f"{service.name} is up at {service.url}")

    document: dict[str, Any] = {
        "network": chain.network,
        "chain_id": chain.chain_id,
        "rpc_url": chain.rpc_url,
        "block_time": options.block_time,
        "asset": chain.usdc.address,
        "asset_name": chain.usdc.name,
        "asset_version": chain.usdc.version,
        "asset_symbol": chain.usdc.symbol,
        "asset_decimals": chain.usdc.decimals,
        "wallet_factory": chain.wallet_factory,
        "payer_address": str(payer.address),
        "payer_private_key": "0x" + bytes(payer.key).hex(),
        "pay_to": pay_to,
        "database_url": database_url,
        "database_name": DATABASE_NAME,
        "data_dir": str(data_dir.root),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pids": {
            "x402_dev": os.getpid(),
            "anvil": chain.anvil.pid,
            **{name: s.process.pid for name, s in ctx.services.items()},
        },
        "logs": {name: str(s.process.log_path) for name, s in ctx.services.items()},
    }
    for service in ctx.services.values():
        document.update(service.info)
    write_stack_file(data_dir.stack_file, document)
    # Registered last, so it runs first: clients stop finding the stack before its parts go away.
    resources.callback(remove_stack_file, data_dir.stack_file)
    return RunningStack(ctx, document)


def supervise(stack: RunningStack, shutdown: Shutdown) -> str | None:
    """Block until stop is requested (None) or a part of the stack dies (what died)."""
    while not shutdown.wait(0.5):
        if not stack.ctx.chain.anvil.running:
            return f"Anvil exited (code {stack.ctx.chain.anvil.returncode})"
        for service in stack.ctx.services.values():
            if not service.process.running:
                return f"{service.name} exited; last lines of {service.process.log_path}:\n" + (
                    service.process.log_tail()
                )
    return None
