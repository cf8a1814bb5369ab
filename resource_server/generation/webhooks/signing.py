"""HMAC-SHA256 webhook signatures: ``X-Signature: t=<unix>,v1=<hex>`` over f"{t}.{body}". Pure.

The timestamp is signed with the body, so a captured delivery cannot be replayed after ``tolerance``;
the event id (X-Event-Id) is what makes a legitimate redelivery idempotent for the receiver."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Signature"
EVENT_ID_HEADER = "X-Event-Id"
EVENT_TYPE_HEADER = "X-Event-Type"
DEFAULT_TOLERANCE_SECONDS = 300.0


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Signature header value."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> bool:
    """True when ``header`` carries a v1 signature of ``body`` by ``secret`` made within ``tolerance``.

    Several v1 entries are accepted (a sender rotating secrets may sign with both); unknown schemes are
    ignored so a future v2 does not break old receivers."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body)
    # Compare against every candidate without stopping early, so timing leaks nothing about which matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched
