"""`x402`: the x402 client's command line. Each subcommand is one `add_<name>(subparsers)` function that
registers its arguments and a `handler(args) -> exit code`; main() only dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from devstack.stackfile import DEFAULT_STACK_FILE, StackFileError, read_stack_file
from shared.evm.address import is_address

from . import pay_command
from .keys import DEFAULT_KEY_ENV
from .pay_report import print_outcome as print_pay_outcome
from .receipts import (
    TX_HASH,
    AmbiguousReceipt,
    ReceiptReport,
    ReceiptUnavailable,
    TokenInfo,
    verify_receipt,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = "x402 client tools."
EPILOG = "exit codes: 0 success, 1 a check failed, 2 usage error, 3 something needed could not be fetched"


def _err(message: str) -> None:
    print(f"x402: {message}", file=sys.stderr)


def stack_defaults(path: Path) -> dict[str, Any]:
    """Defaults from a running `x402-dev` (its stack.json), or none."""
    try:
        return read_stack_file(path) or {}
    except StackFileError as exc:
        _err(f"ignoring {exc}")
        return {}


# -- x402 receipt ---------------------------------------------------------------------------------------


def _tx_hash(value: str) -> str:
    if not TX_HASH.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 0x followed by 64 hex digits")
    return value.lower()


def _nonce(value: str) -> str:
    if not TX_HASH.fullmatch(value):  # the same shape: 0x and 32 bytes
        raise argparse.ArgumentTypeError("must be 0x followed by 64 hex digits (an EIP-3009 nonce)")
    return value.lower()


def _address(value: str) -> str:
    if not is_address(value):
        raise argparse.ArgumentTypeError("must be a 0x-prefixed 20-byte address")
    return value


def add_receipt(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "receipt",
        help="check a facilitator's payment receipt against its signer and the chain",
        description="Fetch GET <facilitator>/receipt/<TX_HASH>, check who signed it, then check on chain "
        "that the transaction succeeded in the stated block and moved the stated amount from payer to "
        "payTo. Defaults come from x402-dev's stack.json when present.",
        epilog="One transaction may carry several payments (a facilitator batches concurrent settlements "
        "into one Multicall3 transaction). Then name yours with --nonce; without it the command lists the "
        f"payments' nonces and exits {EXIT_USAGE}.",
    )
    parser.add_argument("tx_hash", type=_tx_hash, metavar="TX_HASH")
    parser.add_argument(
        "--nonce",
        type=_nonce,
        metavar="NONCE",
        help="the payment's EIP-3009 authorization nonce (0x + 64 hex digits): which payment of a "
        "transaction that carries several; the receipt must then be for that nonce",
    )
    parser.add_argument("--facilitator", metavar="URL", help="facilitator base URL")
    parser.add_argument("--rpc-url", metavar="URL", help="JSON-RPC endpoint of the receipt's chain")
    parser.add_argument(
        "--expected-signer",
        type=_address,
        metavar="ADDRESS",
        help="the receipt key you trust (default: whatever the facilitator publishes at /receipt-key)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run_receipt)


def run_receipt(args: argparse.Namespace) -> int:
    stack = stack_defaults(args.stack)
    facilitator = args.facilitator or stack.get("facilitator_url")
    rpc_url = args.rpc_url or stack.get("rpc_url")
    if not facilitator or not rpc_url:
        missing = " and ".join(
            n for n, v in (("--facilitator", facilitator), ("--rpc-url", rpc_url)) if not v
        )
        _err(f"receipt: {missing} needed (no x402-dev stack file at {args.stack})")
        return EXIT_USAGE
    try:
        report = verify_receipt(
            args.tx_hash,
            facilitator_url=facilitator,
            rpc_url=rpc_url,
            expected_signer=args.expected_signer,
            nonce=args.nonce,
        )
    except AmbiguousReceipt as exc:
        # Nothing is wrong with the payments: the command has to say which one it means.
        if args.json:
            print(
                orjson.dumps(
                    {"ok": False, "txHash": args.tx_hash, "error": str(exc), "nonces": exc.nonces}
                ).decode()
            )
        _err(f"receipt: {exc}")
        return EXIT_USAGE
    except ReceiptUnavailable as exc:
        if args.json:
            print(orjson.dumps({"ok": False, "txHash": args.tx_hash, "error": str(exc)}).decode())
        _err(f"receipt: {exc}")
        return EXIT_UNAVAILABLE
    print(report_json(report) if args.json else report_text(report))
    if not report.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        _err(f"receipt NOT verified: {failed}")
        return EXIT_FAILED
    if not args.json:
        print("Receipt verified.")
    return EXIT_OK


def format_amount(amount: Any, token: TokenInfo) -> str:
    try:
        units = int(amount)
    except (TypeError, ValueError):
        return f"{amount!r} (not a number)"
    if token.decimals is None:
        return f"{units} base units"
    value = Decimal(units).scaleb(-token.decimals).normalize()
    return f"{value:f} {token.symbol or ''}".rstrip() + f"  ({units} base units)"


def report_text(report: ReceiptReport) -> str:
    r = report.receipt
    block = f"{r.get('blockNumber')} ({r.get('blockHash')})" if r.get("blockNumber") is not None else "-"
    source = {"ledger": "the facilitator's ledger", "chain": "the chain, via the facilitator"}.get(
        str(r.get("source")), str(r.get("source"))
    )
    rows = [
        ("status", str(r.get("status"))),
        ("amount", format_amount(r.get("amount"), report.token)),
        ("payer", str(r.get("payer"))),
        ("payTo", str(r.get("payTo"))),
        ("token", str(r.get("token"))),
        ("nonce", str(r.get("nonce"))),
        ("block", block),
        ("confirmations", "-" if report.confirmations is None else str(report.confirmations)),
    ]
    if r.get("paymentsInTransaction"):
        rows.append(("batch", f"one of {r['paymentsInTransaction']} payments in this transaction"))
    width = max(len(name) for name, _ in rows)
    check_width = max((len(c.name) for c in report.checks), default=0)
    lines = [f"Receipt for {report.tx_hash} on {r.get('network')} (from {source})"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    lines.append("Checks")
    lines += [
        f"  {'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(check_width)}  {c.detail}" for c in report.checks
    ]
    return "\n".join(lines)


def report_json(report: ReceiptReport) -> str:
    return orjson.dumps(
        {
            "ok": report.ok,
            "txHash": report.tx_hash,
            "receipt": report.receipt,
            "signature": report.document.get("signature"),
            "signer": report.document.get("signer"),
            "token": {"symbol": report.token.symbol, "decimals": report.token.decimals},
            "confirmations": report.confirmations,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        },
        option=orjson.OPT_INDENT_2,
    ).decode()


# -- x402 pay -------------------------------------------------------------------------------------------


def add_pay(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pay",
        # Without this, `--key 0x…` would be taken as `--key-env 0x…`: a key typed into argv by mistake.
        allow_abbrev=False,
        help="request a URL, paying its x402 challenge within spending limits",
        description="Request URL; if it answers 402, pick an option the limits allow, sign an EIP-3009 "
        "authorization with the local key and send the request again with it (x402 v2 PAYMENT-SIGNATURE or "
        "v1 X-PAYMENT). A network failure of the paid request is retried with the same signed payment, "
        "never a new one. The body goes to stdout, status, payment and settlement to stderr.",
        epilog=f"The key is read from ${DEFAULT_KEY_ENV} (or --key-env VAR), else from the stack file's "
        "payer_private_key; it is never taken from the command line. A deferred settlement (a generation "
        "job: the payment is verified now and settled when the job completes) counts as paid, and so does a "
        "pending one (the transaction is broadcast, not yet confirmed). Exit codes: "
        "0 paid (or free) and served, 1 refused (over a limit, no acceptable option, payment refused, "
        "receipt not verified), 2 usage error, 3 network or server error.",
    )
    parser.add_argument("url", metavar="URL")
    parser.add_argument(
        "--method",
        type=str.upper,
        choices=["GET", "POST", "PUT", "PATCH", "DELETE"],
        help="HTTP method (default POST with --data, else GET)",
    )
    parser.add_argument(
        "--data", type=pay_command.data_arg, metavar="JSON|@FILE", help="request body: JSON, or a file as is"
    )
    parser.add_argument(
        "--header",
        type=pay_command.header_arg,
        action="append",
        metavar="NAME:VALUE",
        help="extra request header (repeatable)",
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument(
        "--max-amount",
        type=pay_command.usd_arg,
        metavar="USD",
        help=f"most to pay per request, in dollars, for known USD stablecoins (default "
        f"{pay_command.DEFAULT_MAX_USD})",
    )
    limit.add_argument(
        "--max-atomic",
        type=pay_command.atomic_arg,
        metavar="N",
        help="most to pay per request, in the token's base units (any token; combine with --asset)",
    )
    parser.add_argument(
        "--max-valid-seconds",
        type=int,
        default=86_400,
        metavar="S",
        help="longest validity a server may ask for the signed authorization (its maxTimeoutSeconds; "
        "default 86400)",
    )
    parser.add_argument(
        "--network",
        action="append",
        metavar="NETWORK",
        help="allowed network, CAIP-2 or v1 name (repeatable; default any)",
    )
    parser.add_argument(
        "--asset", action="append", metavar="ADDRESS|SYMBOL", help="allowed token (repeatable; default any)"
    )
    parser.add_argument(
        "--key-env",
        type=pay_command.env_name_arg,
        metavar="VAR",
        help=f"environment variable holding the key ({DEFAULT_KEY_ENV})",
    )
    parser.add_argument(
        "--stack",
        dest="pay_stack",
        type=Path,
        metavar="FILE",
        help="x402-dev stack file to take the key (and --verify-receipt's endpoints) from",
    )
    parser.add_argument(
        "--timeout", type=pay_command.seconds_arg, default=30.0, metavar="SECONDS", help="per HTTP request"
    )
    parser.add_argument(
        "--verify-receipt",
        action="store_true",
        help="check the facilitator's signed receipt of the settlement and the chain, as `x402 receipt` does "
        "(a deferred settlement has no transaction yet, a pending one may not be confirmed yet: exit 1, "
        "check later with `x402 receipt`)",
    )
    parser.add_argument("--facilitator", metavar="URL", help="facilitator base URL, for --verify-receipt")
    parser.add_argument("--rpc-url", metavar="URL", help="JSON-RPC endpoint, for --verify-receipt")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.set_defaults(handler=run_pay)


def run_pay(args: argparse.Namespace) -> int:
    stack_path: Path = args.pay_stack or args.stack
    plan, outcome = pay_command.run(args, stack_defaults(stack_path), stack_path)
    print_pay_outcome(plan, outcome, as_json=args.json)
    return outcome.exit_code


# -- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x402", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--stack",
        type=Path,
        default=DEFAULT_STACK_FILE,
        metavar="FILE",
        help="x402-dev's stack file, source of defaults (default %(default)s)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_receipt(subparsers)
    add_pay(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
