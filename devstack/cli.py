"""`x402-dev`: parse options, start the stack, print where it is, wait for Ctrl-C/SIGTERM, stop it."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

from shared.devchain.anvil import AnvilError

from .children import StartupError
from .datadir import DataDirBusy
from .ports import DEFAULT_PORT_BASE, PortInUse
from .shutdown import Interrupted, Shutdown
from .stack import RunningStack, StackOptions, say, start_stack, supervise
from .stackfile import DEFAULT_DATA_DIR

DESCRIPTION = (
    "Run the local x402 stack until Ctrl-C: Anvil (chain 84532) with Circle's USDC at the Base Sepolia "
    "address, an embedded PostgreSQL, the facilitator and a funded test payer. Connection details, "
    "dev keys included, go to <data-dir>/stack.json."
)


def _positive_float(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return seconds


def _non_negative_int(value: str) -> int:
    amount = int(value)
    if amount < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return amount


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x402-dev", description=DESCRIPTION)
    parser.add_argument(
        "--port-base",
        type=int,
        metavar="BASE",
        default=DEFAULT_PORT_BASE,
        help="facilitator on BASE, resource server on BASE+1 (reserved), Anvil on BASE+2; "
        "0 picks free ports (default %(default)s)",
    )
    parser.add_argument(
        "--block-time",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between Anvil blocks (default: a block per transaction)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help="PostgreSQL data, logs and stack.json (default %(default)s)",
    )
    parser.add_argument(
        "--payer-usdc",
        type=_non_negative_int,
        default=1000,
        metavar="AMOUNT",
        help="USDC minted to the test payer (default %(default)s)",
    )
    return parser


def summary(stack: RunningStack) -> str:
    doc = stack.document
    units = Decimal(stack.ctx.chain.balance_of(doc["payer_address"])).scaleb(-doc["asset_decimals"])
    blocks = f"a block every {doc['block_time']:g}s" if doc["block_time"] else "a block per transaction"
    rows = [
        ("chain", f"{doc['rpc_url']}  ({doc['network']}, {blocks})"),
        ("USDC", f"{doc['asset']}  (EIP-712 {doc['asset_name']}/{doc['asset_version']})"),
        ("facilitator", f"{doc['facilitator_url']}  (API key in stack.json)"),
        ("payer", f"{doc['payer_address']}  ({units.normalize():f} {doc['asset_symbol']})"),
        ("pay to", doc["pay_to"]),
        ("database", f"{doc['database_name']} on PostgreSQL in {stack.ctx.data_dir.postgres}"),
        ("stack file", f"{stack.ctx.data_dir.stack_file}  (dev keys: never use them on a real chain)"),
        ("logs", str(stack.ctx.data_dir.logs)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["x402 dev stack is up; Ctrl-C stops it", *(f"  {n.ljust(width)}  {v}" for n, v in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = StackOptions(args.data_dir, args.port_base, args.block_time, args.payer_usdc)
    shutdown = Shutdown()
    shutdown.install()
    with ExitStack() as resources:
        try:
            stack = start_stack(options, shutdown, resources)
        except Interrupted:
            say("interrupted during start-up; stopping")
            return 130
        except (StartupError, AnvilError, PortInUse, DataDirBusy, ValueError) as exc:
            say(f"could not start: {exc}")
            return 1
        print(summary(stack), flush=True)
        died = supervise(stack, shutdown)
        if died is not None:
            say(f"{died}\nstopping the rest")
            return 1
        say("stopping")
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
