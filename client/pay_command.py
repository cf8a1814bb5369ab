"""`x402 pay`: everything between parsed arguments and an exit code. Validation happens before anything is
sent, so a usage error can never follow a payment."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from shared.x402 import reasons
from shared.x402.models import SettleResponse

from .errors import PaymentDeclined, PaymentRejected, ProtocolError, ServerUnreachable
from .keys import KeyUnavailable, load_private_key
from .payer import PaidResponse, X402Client
from .payment import SignedPayment
from .receipt_match import payment_check
from .receipts import NOT_MINED, UNKNOWN_TRANSACTION, Check, ReceiptUnavailable, verify_receipt
from .selection import SpendingPolicy

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# Paying with no ceiling at all is never what someone trying a URL means.
DEFAULT_MAX_USD = Decimal("0.10")

# PAYMENT-RESPONSE errorReason of our resource server for paid work that outlives the request (generation
# jobs): the payment was verified and is held, settled when the work completes, released if it fails.

SettlementState = Literal["settled", "pending", "deferred", "failed"]

_NOT_MINED = frozenset({NOT_MINED, UNKNOWN_TRANSACTION})


class UsageError(ValueError):
    pass


@dataclass
class PayOutcome:
    """What happened, for the report. `response` is the last response seen, also on failure paths."""

    exit_code: int
    response: httpx.Response | None = None
    paid: PaidResponse | None = None
    payment: SignedPayment | None = None
    attempts: int = 0
    error: str | None = None
    error_code: str | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)
    receipt_checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PayPlan:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    policy: SpendingPolicy
    key: str
    key_source: str
    timeout: float
    receipt_endpoints: tuple[str, str] | None  # (facilitator URL, RPC URL) when --verify-receipt


# -- argument types (argparse turns their ArgumentTypeError into exit 2) -------------------------------


def header_arg(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("must be NAME:VALUE")
    return name.strip(), content.strip()


def data_arg(value: str) -> bytes:
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        orjson.loads(value)  # a literal is meant as JSON: catch shell-quoting accidents before paying
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError("must be JSON, or @FILE to send a file as is") from None
    return value.encode()


def env_name_arg(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # Never echo the value: the likeliest mistake is pasting the key itself here.
        raise argparse.ArgumentTypeError(
            "must be the NAME of an environment variable (the key is read from it)"
        )
    return value


def seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def usd_arg(value: str) -> Decimal:
    try:
        amount = Decimal(value.removeprefix("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError("must be a dollar amount such as 0.05") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError("must be a non-negative dollar amount")
    return amount


def atomic_arg(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError("must be a non-negative integer (token base units)")
    return int(value)


# -- planning --------------------------------------------------------------------------------------------


def plan(
    args: argparse.Namespace, stack: Mapping[str, Any], stack_path: Path, environ: Mapping[str, str]
) -> PayPlan:
    """Raises UsageError for anything the user has to fix."""
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{args.url!r} is not an http(s) URL")
    if args.pay_stack is not None and not stack:
        raise UsageError(f"no x402-dev stack file at {stack_path}")
    headers = dict(args.header or [])
    if args.data is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    # `is None`, not `or`: --max-amount 0 is a limit (pay nothing), not a missing one.
    max_usd = DEFAULT_MAX_USD if args.max_amount is None else args.max_amount
    try:
        policy = SpendingPolicy(
            max_atomic=args.max_atomic,
            max_usd=None if args.max_atomic is not None else max_usd,
            networks=frozenset(args.network) if args.network else None,
            assets=frozenset(args.asset) if args.asset else None,
            max_valid_seconds=args.max_valid_seconds,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        key, key_source = load_private_key(
            environ=environ,
            stack=stack,
            stack_name=str(stack_path),
            key_env=args.key_env,
            stack_explicit=args.pay_stack is not None,
        )
    except KeyUnavailable as exc:
        raise UsageError(str(exc)) from None
    endpoints = None
    if args.verify_receipt:
        facilitator = args.facilitator or stack.get("facilitator_url")
        rpc_url = args.rpc_url or stack.get("rpc_url")
        if not facilitator or not rpc_url:
            missing = " and ".join(
                n for n, v in (("--facilitator", facilitator), ("--rpc-url", rpc_url)) if not v
            )
            raise UsageError(f"--verify-receipt needs {missing} (no x402-dev stack file at {stack_path})")
        endpoints = (str(facilitator), str(rpc_url))
    method = args.method or ("POST" if args.data is not None else "GET")
    return PayPlan(method, args.url, headers, args.data, policy, key, key_source, args.timeout, endpoints)


# -- reading the outcome -----------------------------------------------------------------------------------


def settlement_state(settlement: SettleResponse) -> SettlementState:
    """What the server's PAYMENT-RESPONSE means. Two success:false answers are not failures: a deferred
    settlement (verified and held, settled when the job completes) and a pending one (the facilitator's
    transaction is broadcast but was not confirmed within its wait; the server served the request)."""
    if settlement.success:
        return "settled"
    if settlement.error_reason == reasons.SETTLEMENT_DEFERRED:
        return "deferred"
    if settlement.error_reason == reasons.SETTLEMENT_PENDING:
        return "pending"
    return "failed"


def status_url(response: httpx.Response) -> str | None:
    """Where to follow work the server accepted (its Location header, made absolute), if it says."""
    location: str | None = response.headers.get("location")
    if not location:
        return None
    try:
        return str(response.url.join(location))
    except (httpx.InvalidURL, RuntimeError):  # RuntimeError: a response built without a request
        return location


# -- doing -----------------------------------------------------------------------------------------------


async def pay(p: PayPlan) -> PayOutcome:
    async with X402Client(p.key, p.policy, timeout=p.timeout) as client:
        try:
            paid = await client.request(p.method, p.url, headers=p.headers, content=p.content)
        except PaymentDeclined as exc:
            rejections = [vars(r) for r in exc.refusal.rejections]
            return PayOutcome(
                EXIT_REFUSED, error=str(exc), error_code=exc.refusal.code, rejections=rejections
            )
        except PaymentRejected as exc:
            outcome = PayOutcome(
                EXIT_REFUSED,
                response=exc.response,
                payment=exc.payment,
                attempts=exc.attempts,
                error=f"the server refused the payment: {exc.error}",
                error_code="payment_rejected",
            )
            if exc.attempts > 1:
                outcome.warnings.append(
                    "the same signed payment was sent more than once after network failures; an earlier "
                    "attempt may have been settled (it cannot have been settled twice)"
                )
            return outcome
        except ProtocolError as exc:
            return PayOutcome(EXIT_UNAVAILABLE, error=str(exc), error_code="protocol_error")
        except ServerUnreachable as exc:
            outcome = PayOutcome(
                EXIT_UNAVAILABLE,
                payment=exc.payment,
                attempts=exc.attempts,
                error=str(exc),
                error_code="unreachable",
            )
            if exc.payment is not None:
                outcome.warnings.append("a signed payment was sent; it may or may not have been settled")
            return outcome
    status = paid.response.status_code
    outcome = PayOutcome(
        EXIT_OK if 200 <= status < 300 else EXIT_UNAVAILABLE,
        response=paid.response,
        paid=paid,
        payment=paid.payment,
        attempts=paid.attempts,
    )
    if outcome.exit_code != EXIT_OK:
        outcome.error, outcome.error_code = f"the server answered HTTP {status}", "http_error"
    if paid.settlement_problem:
        outcome.warnings.append(paid.settlement_problem)
    elif paid.paid and paid.settlement is None:
        outcome.warnings.append("the server sent no PAYMENT-RESPONSE: settlement unknown")
    elif paid.settlement is not None and settlement_state(paid.settlement) == "failed":
        outcome.warnings.append(f"the server reports a failed settlement: {paid.settlement.error_reason}")
    return outcome


def check_receipt(outcome: PayOutcome, facilitator: str, rpc_url: str) -> None:
    """Runs `x402 receipt`'s checks on the settlement, plus: is it the receipt of what we signed?"""
    paid = outcome.paid
    if paid is None or not paid.paid:
        outcome.warnings.append("no payment was required: there is no receipt to verify")
        return
    settlement, payment = paid.settlement, paid.payment
    state = settlement_state(settlement) if settlement is not None else None
    nonce = payment.nonce if payment is not None else "<nonce>"
    if state == "deferred":
        # Not a failure, but nothing is on chain to check yet: say when there will be.
        url = status_url(paid.response)
        later = f"once {url} shows payment.tx_hash" if url else "once it is settled"
        outcome.exit_code, outcome.error_code = EXIT_REFUSED, "receipt_not_yet_available"
        outcome.error = (
            "receipt not verified: the settlement is deferred until the job completes, so there is no "
            f"transaction yet; {later}, check it with `x402 receipt <txHash> --nonce {nonce}`"
        )
        return
    if state == "pending" and settlement is not None and not settlement.transaction:
        outcome.exit_code, outcome.error_code = EXIT_REFUSED, "receipt_not_yet_available"
        outcome.error = (
            "receipt not verified: the settlement is pending and the server reported no transaction hash, "
            "so there is no receipt to check"
        )
        return
    if (
        settlement is None
        or state not in ("settled", "pending")
        or not settlement.transaction
        or payment is None
    ):
        outcome.exit_code, outcome.error_code = EXIT_REFUSED, "receipt_not_verified"
        outcome.error = "receipt not verified: the server reported no successful settlement transaction"
        return
    try:
        # Our nonce names our payment: the facilitator may have settled it in a batch with others.
        report = verify_receipt(
            settlement.transaction, facilitator_url=facilitator, rpc_url=rpc_url, nonce=payment.nonce
        )
    except ReceiptUnavailable as exc:
        outcome.exit_code, outcome.error_code = EXIT_UNAVAILABLE, "receipt_unavailable"
        outcome.error = f"receipt: {exc}"
        return
    outcome.receipt_checks = [*report.checks, payment_check(report.receipt, payment)]
    failed = [c for c in outcome.receipt_checks if not c.ok]
    if failed and state == "pending" and not_confirmed_yet(report.receipt, failed):
        outcome.exit_code, outcome.error_code = EXIT_REFUSED, "receipt_not_confirmed"
        outcome.error = (
            "receipt not verified: the transaction is not confirmed yet; "
            f"check later with `x402 receipt {settlement.transaction} --nonce {payment.nonce}`"
        )
    elif failed:
        outcome.exit_code, outcome.error_code = EXIT_REFUSED, "receipt_not_verified"
        outcome.error = "receipt NOT verified: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)


def not_confirmed_yet(receipt: Mapping[str, Any], failed: list[Check]) -> bool:
    """Whether the facilitator calls the transaction pending and every failed check is one a transaction
    on its way into a block fails. Anything else (a bad signature, another payment, a revert, a block the
    chain disagrees with) is a failure, pending or not."""

    def explained(check: Check) -> bool:
        if check.name == "facilitator status":
            return True  # pending, as required below
        if check.name == "transaction":
            return check.detail in _NOT_MINED
        if check.name == "block":
            return receipt.get("blockNumber") is None  # mined, not yet recorded by the facilitator
        return False

    return receipt.get("status") == "pending" and bool(failed) and all(explained(c) for c in failed)


def run(
    args: argparse.Namespace, stack: Mapping[str, Any], stack_path: Path
) -> tuple[PayPlan | None, PayOutcome]:
    try:
        p = plan(args, stack, stack_path, os.environ)
    except UsageError as exc:
        return None, PayOutcome(EXIT_USAGE, error=str(exc), error_code="usage")
    outcome = asyncio.run(pay(p))
    if p.receipt_endpoints is not None and outcome.exit_code == EXIT_OK:
        check_receipt(outcome, *p.receipt_endpoints)
    return p, outcome
