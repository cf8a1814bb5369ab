"""What can go wrong when paying, as exceptions a caller can tell apart: the split follows who is at fault
and whether money may have moved, which is what a caller has to decide on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from shared.x402.models import SettleResponse

    from .payment import SignedPayment
    from .selection import Refusal


class X402ClientError(Exception):
    """Base of every error the paying client raises on purpose."""


class ProtocolError(X402ClientError, ValueError):
    """The server's x402 message (402 challenge, settlement header) cannot be read."""


class PaymentDeclined(X402ClientError):
    """Our spending policy accepts none of the server's options; nothing was signed."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class PaymentRejected(X402ClientError):
    """The server answered 402 to the paid request. No second payment is made: `error` is the server's
    reason. After a retry (attempts > 1) the first delivery may well have been settled."""

    def __init__(
        self,
        error: str,
        *,
        response: httpx.Response,
        payment: SignedPayment,
        settlement: SettleResponse | None,
        attempts: int,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.response = response
        self.payment = payment
        self.settlement = settlement
        self.attempts = attempts


class ServerUnreachable(X402ClientError):
    """The request could not be delivered (connect error, timeout, dropped connection) within the retry
    budget. `payment` is set when a signed payment was in flight: it may have been settled, and resending
    that same header is the only safe way to try again."""

    def __init__(self, message: str, *, payment: SignedPayment | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.payment = payment
        self.attempts = attempts
