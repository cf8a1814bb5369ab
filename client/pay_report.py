"""How `x402 pay` shows what happened. Text mode keeps stdout for the response body alone (pipeable, like
curl) and puts status, payment and settlement on stderr; --json puts one document on stdout.

The settlement is the server's PAYMENT-RESPONSE as sent, plus our reading of it: `state` is "settled",
"failed", "pending" (errorReason settlement_pending: the facilitator's transaction is broadcast but not yet
confirmed, and the server served the request anyway) or "deferred" (verified and held, settled when the job
completes). Pending and deferred are success:false on the wire, yet not failures. A deferred one carries
`statusUrl`, where to follow the job (the Location header)."""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

import httpx
import orjson

from shared.networks import UnknownNetwork, chain_id_of
from shared.tokens import BUILTIN_TOKENS
from shared.x402.models import SettleResponse

from .challenge import PaymentOption
from .pay_command import PayOutcome, PayPlan, settlement_state, status_url
from .payment import SignedPayment


def amount_text(option: PaymentOption) -> str:
    try:
        chain_id = chain_id_of(option.network)
    except UnknownNetwork:
        chain_id = None
    token = next(
        (t for t in BUILTIN_TOKENS if t.chain_id == chain_id and t.address.lower() == option.asset.lower()),
        None,
    )
    if token is None:
        return f"{option.amount} base units of {option.asset}"
    value = Decimal(option.amount).scaleb(-token.decimals).normalize()
    return f"{value:f} {token.symbol} ({option.amount} base units)"


def _body(response: httpx.Response) -> Any:
    if "json" in response.headers.get("content-type", ""):
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
    return response.text


def _payment_json(payment: SignedPayment, attempts: int) -> dict[str, Any]:
    option = payment.option
    return {
        "x402Version": option.x402_version,
        "header": payment.header_name,
        "scheme": option.scheme,
        "network": option.network,
        "asset": option.asset,
        "amount": str(option.amount),
        "payTo": option.pay_to,
        "payer": payment.payer,
        "nonce": payment.nonce,
        "attempts": attempts,
    }


def _settlement_json(settlement: SettleResponse, response: httpx.Response) -> dict[str, Any]:
    state = settlement_state(settlement)
    document: dict[str, Any] = {**settlement.to_wire(), "state": state}
    if state == "deferred":
        document["statusUrl"] = status_url(response)
    return document


def report_json(outcome: PayOutcome) -> str:
    paid, response = outcome.paid, outcome.response
    settlement = (
        _settlement_json(paid.settlement, paid.response)
        if paid is not None and paid.settlement is not None
        else None
    )
    document = {
        "ok": outcome.exit_code == 0,
        "exitCode": outcome.exit_code,
        "status": response.status_code if response is not None else None,
        "body": _body(response) if response is not None else None,
        "payment": _payment_json(outcome.payment, outcome.attempts) if outcome.payment else None,
        "settlement": settlement,
        "receipt": (
            {
                "ok": all(c.ok for c in outcome.receipt_checks),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in outcome.receipt_checks],
            }
            if outcome.receipt_checks
            else None
        ),
        "error": (
            {"code": outcome.error_code, "message": outcome.error, "rejections": outcome.rejections}
            if outcome.error
            else None
        ),
        "warnings": outcome.warnings,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def report_lines(plan: PayPlan | None, outcome: PayOutcome) -> list[str]:
    """The stderr summary, without the error line (the caller prefixes that)."""
    lines: list[str] = []
    response, payment = outcome.response, outcome.payment
    if response is not None:
        lines.append(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
    if payment is not None:
        option = payment.option
        tries = "" if outcome.attempts <= 1 else f", sent {outcome.attempts} times (same signature)"
        source = f" (key from {plan.key_source})" if plan is not None else ""
        lines.append(
            f"payment: {amount_text(option)} to {option.pay_to} on {option.network} "
            f"via x402 v{option.x402_version} {payment.header_name}{tries}"
        )
        lines.append(f"payer: {payment.payer}{source}")
    if outcome.paid is not None and outcome.paid.settlement is not None:
        nonce = outcome.payment.nonce if outcome.payment is not None else None
        lines += _settlement_lines(outcome.paid.settlement, outcome.paid.response, nonce)
    if outcome.receipt_checks:
        width = max(len(c.name) for c in outcome.receipt_checks)
        lines.append("receipt:")
        lines += [
            f"  {'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}"
            for c in outcome.receipt_checks
        ]
        if all(c.ok for c in outcome.receipt_checks):
            settlement = outcome.paid.settlement if outcome.paid is not None else None
            pending = settlement is not None and settlement_state(settlement) == "pending"
            lines.append(
                "Receipt verified (the transaction is confirmed since the server answered)."
                if pending
                else "Receipt verified."
            )
    return lines


def _settlement_lines(settlement: SettleResponse, response: httpx.Response, nonce: str | None) -> list[str]:
    """`nonce`: our payment's, which names it in a transaction that settled several (`--nonce`)."""
    state = settlement_state(settlement)
    if state == "deferred":
        lines = [
            "settlement: deferred (settled when the job completes, released if it does not); "
            f"payment verified, payer {settlement.payer or '-'}, network {settlement.network}"
        ]
        url = status_url(response)
        if url:
            lines.append(f"job: {url}")
        return lines
    if state == "pending":
        where = f"network {settlement.network}, payer {settlement.payer or '-'}"
        if not settlement.transaction:  # the facilitator's answer was lost, or nothing is broadcast yet
            return [f"settlement: pending (not yet confirmed; the server reported no transaction), {where}"]
        return [
            f"settlement: pending (broadcast, not yet confirmed), tx {settlement.transaction}, {where}; "
            f"check it later with `x402 receipt {settlement.transaction}"
            + (f" --nonce {nonce}`" if nonce else "`")
        ]
    verdict = "success" if state == "settled" else f"FAILED ({settlement.error_reason})"
    return [
        f"settlement: {verdict}, tx {settlement.transaction or '-'}, network {settlement.network}, "
        f"payer {settlement.payer or '-'}"
    ]


def print_outcome(plan: PayPlan | None, outcome: PayOutcome, *, as_json: bool) -> None:
    if as_json:
        print(report_json(outcome))
    else:
        if outcome.response is not None:
            _write_body(outcome.response.content)
        for line in report_lines(plan, outcome):
            print(line, file=sys.stderr)
    for warning in outcome.warnings:
        print(f"x402: warning: {warning}", file=sys.stderr)
    if outcome.error:
        print(f"x402: pay: {outcome.error}", file=sys.stderr)


def _write_body(content: bytes) -> None:
    # Bytes, not text: a paid resource may be an image or an archive.
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(content.decode("utf-8", "replace"))
    else:
        buffer.write(content)
        buffer.flush()
    if content and not content.endswith(b"\n") and sys.stdout.isatty():
        print()
