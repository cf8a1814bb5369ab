"""Reading a server's x402 messages: the 402 challenge (both generations), the settlement header and the
reason of a refused payment. Pure functions of headers and body bytes, no I/O.

Generation detection follows the reference clients: a `PAYMENT-REQUIRED` header means v2; otherwise a JSON
body with `x402Version: 1` means v1. Options are validated one by one so that one option this client cannot
read (another chain family, a newer scheme) does not hide the others."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from shared.x402.codec import HeaderDecodeError, decode_json_header, describe_validation_error
from shared.x402.models import PaymentRequirementsV1, PaymentRequirementsV2, SettleResponse

from .errors import ProtocolError

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
X_PAYMENT = "X-PAYMENT"
X_PAYMENT_RESPONSE = "X-PAYMENT-RESPONSE"

Headers = Mapping[str, str]


@dataclass(frozen=True)
class PaymentOption:
    """One entry of the server's `accepts`, validated, with the server's own JSON kept in `raw`: v2 servers
    compare the echoed `accepted` with what they sent, unknown keys included."""

    index: int  # position in `accepts`, for messages
    requirements: PaymentRequirementsV1 | PaymentRequirementsV2
    raw: Mapping[str, Any]

    @property
    def x402_version(self) -> Literal[1, 2]:
        return 2 if isinstance(self.requirements, PaymentRequirementsV2) else 1

    @property
    def amount(self) -> int:
        r = self.requirements
        return int(r.amount if isinstance(r, PaymentRequirementsV2) else r.max_amount_required)

    @property
    def scheme(self) -> str:
        return self.requirements.scheme

    @property
    def network(self) -> str:
        return self.requirements.network

    @property
    def asset(self) -> str:
        return self.requirements.asset

    @property
    def pay_to(self) -> str:
        return self.requirements.pay_to

    @property
    def extra(self) -> Mapping[str, Any]:
        return self.requirements.extra or {}

    def describe(self) -> str:
        return f"#{self.index + 1} {self.scheme} {self.amount} of {self.asset} on {self.network}"


@dataclass(frozen=True)
class PaymentChallenge:
    x402_version: Literal[1, 2]
    options: tuple[PaymentOption, ...]
    malformed: tuple[tuple[int, str], ...] = ()  # (index in `accepts`, what is wrong)
    error: str | None = None
    resource: Mapping[str, Any] | None = None  # v2: echoed in the payment, as the SDK clients do
    extensions: Mapping[str, Any] | None = None  # v2: echoed in the payment, as the spec asks


def header(headers: Headers, name: str) -> str | None:
    """Case-insensitive lookup that works on plain dicts too (httpx.Headers already is)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_challenge(headers: Headers, body: bytes) -> PaymentChallenge:
    """The payment challenge of a 402 response. Raises ProtocolError saying what is unreadable."""
    value = header(headers, PAYMENT_REQUIRED)
    if value is not None:
        return _parse_v2(value)
    document = _json_object(body)
    if document is None or "x402Version" not in document:
        raise ProtocolError(
            "402 without a PAYMENT-REQUIRED header (x402 v2) and without an x402 v1 JSON body"
        )
    if document["x402Version"] != 1:
        raise ProtocolError(
            f"402 body declares x402Version {document['x402Version']!r} but there is no PAYMENT-REQUIRED "
            "header; only v1 is carried in the body"
        )
    options, malformed = _options(document, PaymentRequirementsV1, "body")
    return PaymentChallenge(1, options, malformed, error=_text(document.get("error")))


def _parse_v2(value: str) -> PaymentChallenge:
    try:
        document = decode_json_header(value)
    except HeaderDecodeError as exc:
        raise ProtocolError(f"malformed {PAYMENT_REQUIRED} header: {exc}") from None
    if document.get("x402Version") != 2:
        raise ProtocolError(
            f"{PAYMENT_REQUIRED} header declares x402Version {document.get('x402Version')!r}, expected 2"
        )
    options, malformed = _options(document, PaymentRequirementsV2, f"{PAYMENT_REQUIRED} header")
    resource, extensions = document.get("resource"), document.get("extensions")
    return PaymentChallenge(
        2,
        options,
        malformed,
        error=_text(document.get("error")),
        resource=resource if isinstance(resource, dict) else None,
        extensions=extensions if isinstance(extensions, dict) else None,
    )


def _options(
    document: Mapping[str, Any], model: type[PaymentRequirementsV1 | PaymentRequirementsV2], where: str
) -> tuple[tuple[PaymentOption, ...], tuple[tuple[int, str], ...]]:
    accepts = document.get("accepts")
    if not isinstance(accepts, list):
        raise ProtocolError(f"the {where} has no `accepts` list")
    options: list[PaymentOption] = []
    malformed: list[tuple[int, str]] = []
    for index, raw in enumerate(accepts):
        if not isinstance(raw, dict):
            malformed.append((index, "not a JSON object"))
            continue
        try:
            requirements = model.model_validate(raw)
        except ValidationError as exc:
            malformed.append((index, describe_validation_error(exc)))
            continue
        option = PaymentOption(index, requirements, raw)
        amount = str(raw.get("amount" if option.x402_version == 2 else "maxAmountRequired"))
        # ASCII digits only: int() would also take " 1", "1_000" and non-Latin digits.
        if not (amount.isascii() and amount.isdigit()):
            malformed.append((index, f"amount {amount!r} is not a decimal integer"))
            continue
        options.append(option)
    return tuple(options), tuple(malformed)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- after paying ---------------------------------------------------------------------------------------


def read_settlement(headers: Headers) -> SettleResponse | None:
    """The settlement the server reports (`PAYMENT-RESPONSE`, else v1's `X-PAYMENT-RESPONSE`), or None
    when it sent neither. Raises ProtocolError for a header that is there but unreadable."""
    for name in (PAYMENT_RESPONSE, X_PAYMENT_RESPONSE):
        value = header(headers, name)
        if value is None:
            continue
        try:
            data = decode_json_header(value)
            return SettleResponse.model_validate(data)
        except HeaderDecodeError as exc:
            raise ProtocolError(f"malformed {name} header: {exc}") from None
        except ValidationError as exc:
            raise ProtocolError(
                f"{name} header is not a settlement: {describe_validation_error(exc)}"
            ) from None
    return None


def rejection_reason(headers: Headers, body: bytes) -> tuple[str, SettleResponse | None]:
    """Why a paid request came back 402, in the server's words: a failed settlement's reason first (the
    more specific), then the new challenge's `error`. Never raises: this is already the failure path."""
    settlement: SettleResponse | None = None
    with contextlib.suppress(ProtocolError):  # a garbled settlement header still leaves the 402's error
        settlement = read_settlement(headers)
    if settlement is not None and not settlement.success:
        reason = settlement.error_reason or "settlement failed"
        return (f"{reason}: {settlement.error_message}" if settlement.error_message else reason), settlement
    try:
        challenge = parse_challenge(headers, body)
    except ProtocolError as exc:
        return f"HTTP 402 without a readable reason ({exc})", settlement
    return challenge.error or "HTTP 402 without a reason", settlement
