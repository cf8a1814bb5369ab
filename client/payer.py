"""`X402Client`: an httpx client that pays x402 challenges within a spending policy.

One request, at most one payment: on a 402 it picks an option (selection.py), signs it once (payment.py)
and sends the same bytes until the request gets through (retry.py). A 402 to the paid request is the
server's verdict and is raised, never answered with a second payment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from shared.x402.models import SettleResponse

from .challenge import parse_challenge, read_settlement, rejection_reason
from .errors import PaymentDeclined, PaymentRejected, ProtocolError, ServerUnreachable
from .payment import SignedPayment, address_of, sign_payment
from .retry import RETRYABLE_ERRORS, RetryPolicy, Sleep, send_with_retry
from .selection import Choice, Refusal, SpendingPolicy, select_option

# Servers give the payer this much less than validBefore (the reference facilitators require validBefore
# >= now + 6 s), so a retry that would land later is pointless.
VALID_BEFORE_MARGIN_SECONDS = 6


@dataclass(frozen=True)
class PaidResponse:
    response: httpx.Response
    payment: SignedPayment | None  # None when the server served without asking for payment
    choice: Choice | None
    settlement: SettleResponse | None  # what the server reports in PAYMENT-RESPONSE / X-PAYMENT-RESPONSE
    settlement_problem: str | None = None  # set when that header was present but unreadable
    attempts: int = 1  # sends of the paid request (or of the only request)

    @property
    def paid(self) -> bool:
        return self.payment is not None


class X402Client:
    """Async. Use as `async with X402Client(key, SpendingPolicy(max_usd=Decimal("0.05"))) as client:`.

    Pass `http` to share a connection pool; it is then left open on close."""

    def __init__(
        self,
        private_key: str,
        policy: SpendingPolicy,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Sleep | None = None,
    ) -> None:
        self._key = private_key
        self.payer = address_of(private_key)  # also validates the key before any request is made
        self.policy = policy
        self.retry = retry or RetryPolicy()
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._sleep = sleep

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
    ) -> PaidResponse:
        """Raises PaymentDeclined (policy), PaymentRejected (402 after paying), ProtocolError (unreadable
        402) or ServerUnreachable (network, after retries for the paid request)."""
        headers = dict(headers or {})
        if json is not None:
            content = orjson.dumps(json)
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"

        def build(payment: SignedPayment | None = None) -> httpx.Request:
            extra = {payment.header_name: payment.header_value} if payment else {}
            return self._http.build_request(method, url, headers={**headers, **extra}, content=content)

        try:
            first = await self._http.send(build())
        except RETRYABLE_ERRORS as exc:
            raise ServerUnreachable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if first.status_code != 402:
            settlement, problem = _settlement(first)
            return PaidResponse(first, None, None, settlement, problem)

        challenge = parse_challenge(first.headers, first.content)
        decision = select_option(challenge, self.policy)
        if isinstance(decision, Refusal):
            raise PaymentDeclined(decision)
        payment = sign_payment(self._key, challenge, decision.option)

        try:
            response, attempts = await send_with_retry(
                self._http,
                lambda: build(payment),
                self.retry,
                deadline=payment.valid_before - VALID_BEFORE_MARGIN_SECONDS,
                sleep=self._sleep,
            )
        except ServerUnreachable as exc:
            raise ServerUnreachable(f"{method} {url}: {exc}", payment=payment, attempts=exc.attempts) from exc
        if response.status_code == 402:
            error, settlement = rejection_reason(response.headers, response.content)
            raise PaymentRejected(
                error, response=response, payment=payment, settlement=settlement, attempts=attempts
            )
        settlement, problem = _settlement(response)
        return PaidResponse(response, payment, decision, settlement, problem, attempts)

    async def get(self, url: str, **kwargs: Any) -> PaidResponse:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> PaidResponse:
        return await self.request("POST", url, **kwargs)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _settlement(response: httpx.Response) -> tuple[SettleResponse | None, str | None]:
    try:
        return read_settlement(response.headers), None
    except ProtocolError as exc:
        return None, str(exc)
