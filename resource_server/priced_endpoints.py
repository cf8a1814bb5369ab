"""Priced endpoints whose price the application computes itself, and what a paid request's handler gets.

The pricing file prices routes from their parameters with a fixed rule. Some work is priced by code
instead (a generation tool's quote for given inputs), and must be admitted before any payment is asked
for (a full queue answers 503, not 402). A `PricedEndpoint` plugs that into `PaymentMiddleware`: it
prices the request (or answers it, e.g. 400/503), and once the payer is known it may refuse them (429)
before the payment is verified or claimed.

Every paid request's handler finds a `PaymentHold` in ``scope["state"]["x402.payment"]``: the payment
that was claimed for it. Under the `deferred` policy the handler must `take()` it, naming what will
settle or release it later (a job); an untaken hold is released when the handler returns, so the payer
keeps the money. Under `after` (buffered mode), the handler may register callbacks for the settlement's
outcome, e.g. to start or cancel what it queued.

A deferred route's payment presented again (a client resending it after a lost answer) never reaches the
handler: the endpoint's `replay` gives the answer the owner of the payment got, or refuses it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from starlette.types import Scope

from .payment_headers import PaymentAttempt
from .paywall import Authorized, PricedRequest, Replayed, SettleOutcome

log = structlog.get_logger(__name__)

PAYMENT_STATE_KEY = "x402.payment"


@dataclass(frozen=True, slots=True)
class EndpointAnswer:
    """An answer given instead of a challenge: a JSON error (``error`` code, ``message``)."""

    status: int
    error: str
    message: str
    retry_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        retry = {"retryAfter": self.retry_after} if self.retry_after is not None else {}
        return {"error": self.error, "message": self.message, **retry, **self.extra}

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())] if self.retry_after is not None else []


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    """The answer a replayed payment's first request got, rebuilt from what now owns the payment; the
    middleware adds the PAYMENT-RESPONSE it had and marks the answer as a replay."""

    status: int
    body: dict[str, Any]
    owner: str  # what holds the payment, e.g. "job:<id>"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class PricedEndpoint(Protocol):
    def matches(self, method: str, path: str) -> bool: ...

    async def price(self, scope: Scope, body: bytes, resource_url: str) -> PricedRequest | EndpointAnswer:
        """The priced request, or the answer to send instead (nothing is issued or charged then)."""
        ...

    async def admit(self, priced: PricedRequest, attempt: PaymentAttempt) -> EndpointAnswer | None:
        """Called with a payment (its payer now known) before it is verified or claimed: an answer
        refuses it untouched."""
        ...

    async def replay(self, scope: Scope, replayed: Replayed) -> ReplayAnswer | EndpointAnswer | None:
        """Deferred routes: the payment already unlocked `replayed.prior` for the same route and priced
        parameters. The first answer again (nothing created), another answer (e.g. 503 while the first
        request is still running), or None when nothing of this endpoint owns the payment or the request
        differs from the first: it is then refused as a used payment."""
        ...


SettledCallback = Callable[[SettleOutcome], Awaitable[None]]
UnpaidCallback = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class PaymentHold:
    authorized: Authorized
    owner: str | None = None  # what took charge of settling (deferred policy), e.g. "job:<id>"
    _on_settled: list[SettledCallback] = field(default_factory=list)
    _on_unpaid: list[UnpaidCallback] = field(default_factory=list)

    @property
    def challenge_id(self) -> str:
        return self.authorized.challenge_id

    @property
    def payer(self) -> str:
        return self.authorized.attempt.payer

    def take(self, owner: str) -> None:
        """Deferred policy: `owner` now settles or releases the payment; the middleware leaves it held."""
        self.owner = owner

    def when_settled(self, callback: SettledCallback) -> None:
        """`after` policy: called once the payment settled (or is pending at the facilitator)."""
        self._on_settled.append(callback)

    def when_unpaid(self, callback: UnpaidCallback) -> None:
        """`after` policy: called with a reason when the payment was released or could not be settled."""
        self._on_unpaid.append(callback)

    async def settled(self, outcome: SettleOutcome) -> None:
        for callback in self._on_settled:
            await _quietly(callback(outcome), "settled", self.challenge_id)

    async def unpaid(self, reason: str) -> None:
        for callback in self._on_unpaid:
            await _quietly(callback(reason), "unpaid", self.challenge_id)


async def _quietly(call: Awaitable[None], which: str, challenge_id: str) -> None:
    # The response is decided by now; a callback's failure is the handler's to recover from.
    try:
        await call
    except Exception:
        log.exception("payment_hold_callback_failed", callback=which, challenge_id=challenge_id)


def attach_hold(scope: Scope, hold: PaymentHold) -> None:
    state: MutableMapping[str, Any] = scope.setdefault("state", {})
    state[PAYMENT_STATE_KEY] = hold


def payment_hold(scope: Scope) -> PaymentHold | None:
    """The payment the middleware claimed for this request, if it is a paid one."""
    hold = scope.get("state", {}).get(PAYMENT_STATE_KEY)
    return hold if isinstance(hold, PaymentHold) else None
