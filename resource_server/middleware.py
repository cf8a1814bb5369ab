"""Pure ASGI middleware that puts a price on the routes of any Starlette/FastAPI (or plain ASGI) app.

An unpaid request to a priced route gets a 402 challenge; a paid one is matched, verified and claimed, then
settled by the route's policy:

- `after` (default): the handler runs first. In "buffered" mode its whole response is held back and settled
  only if its status is below 400; in "stream" mode (the gateway) settlement happens when the response
  headers arrive, before any body is passed on. A handler that raises or answers >= 400 settles nothing.
- `before`: settle, then run the handler and stream its response.

Usage:

    store = ChallengeStore(); facilitator = FacilitatorClient(["https://facilitator.example"], api_key=...)
    app.add_middleware(PaymentMiddleware, pricing=load_pricing(path), store=store, facilitator=facilitator)
    # and in the app's lifespan: await store.open(dsn) ... await store.close(); await facilitator.aclose()
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection
from typing import Literal

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.x402.codec import encode_json_header

from . import reasons
from .challenges.store import ChallengeStore
from .facilitator_client import FacilitatorBadResponse, FacilitatorClient, FacilitatorUnavailable
from .payment_headers import DEFAULT_MAX_HEADER_BYTES, PaymentAttempt, PaymentHeaderError, read_payment
from .paywall import Authorized, Denied, Paywall, PricedRequest, Settlement, SettleOutcome, StorageUnavailable
from .pricing.engine import PricingError, quote
from .pricing.model import PricingConfig, RouteMatch, SettlementPolicy
from .pricing.params import ParamError
from .request_params import request_params
from .responses import Headers, expose_header, send_error, send_payment_required, with_headers

log = structlog.get_logger(__name__)

Mode = Literal["buffered", "stream"]
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class _Aborted(Exception):
    """Raised into the app's `send` once our own answer replaced its response: stop producing it."""


class BodyTooLarge(Exception):
    pass


class PaymentMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        pricing: PricingConfig,
        store: ChallengeStore,
        facilitator: FacilitatorClient,
        challenge_ttl_seconds: float = 300.0,
        mode: Mode = "buffered",
        exclude_paths: Collection[str] = (),
        public_url: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_payment_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.pricing = pricing
        self.paywall = Paywall(store, facilitator, challenge_ttl_seconds=challenge_ttl_seconds)
        self.mode = mode
        self.exclude_paths = frozenset(exclude_paths)
        self.public_url = public_url.rstrip("/") if public_url else None
        self.max_body_bytes = max_body_bytes
        self.max_payment_header_bytes = max_payment_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        found = self.pricing.match(scope["method"], scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        try:
            await self._priced(scope, receive, send, found)
        except StorageUnavailable:
            await send_error(
                send, 503, reasons.STORAGE_UNAVAILABLE, "payment storage is unavailable; nothing was charged"
            )

    # -- one priced request -------------------------------------------------------------------------------

    async def _priced(self, scope: Scope, receive: Receive, send: Send, found: RouteMatch) -> None:
        route = found.route
        body: bytes | None = None
        if route.reads_body:
            try:
                body, receive = await _buffer_body(receive, self.max_body_bytes)
            except BodyTooLarge:
                await send_error(
                    send, 413, reasons.BODY_TOO_LARGE, f"the request body exceeds {self.max_body_bytes} bytes"
                )
                return
        try:
            params = request_params(
                route, found.path_params, scope.get("query_string", b"").decode("latin-1"), body
            )
            priced = PricedRequest(route, quote(route, params), self._resource_url(scope))
        except ParamError as exc:
            await send_error(send, 400, reasons.INVALID_PARAMS, str(exc), param=exc.param)
            return
        except PricingError as exc:
            await send_error(send, 400, reasons.UNPRICEABLE, str(exc))
            return

        headers = _headers(scope)
        try:
            attempt = read_payment(headers, max_bytes=self.max_payment_header_bytes)
        except PaymentHeaderError as exc:
            await send_error(send, 400, reasons.INVALID_PAYMENT_HEADER, str(exc))
            return
        if attempt is None:
            challenge = await self.paywall.issue(priced)
            await send_payment_required(
                send,
                challenge,
                route,
                error=reasons.PAYMENT_REQUIRED,
                message="this resource requires payment",
            )
            return

        try:
            decision = await self.paywall.authorize(priced, attempt)
        except FacilitatorUnavailable as exc:
            await _facilitator_down(send, exc)
            return
        except FacilitatorBadResponse as exc:
            await _facilitator_bad(send, exc)
            return
        if isinstance(decision, Denied):
            await send_payment_required(
                send, decision.challenge, route, error=decision.reason, message=decision.message
            )
            return

        if route.settlement is SettlementPolicy.BEFORE:
            await self._settle_first(scope, receive, send, decision)
        elif self.mode == "stream":
            await self._settle_on_headers(scope, receive, send, decision)
        else:
            await self._settle_after_buffered(scope, receive, send, decision)

    async def _settle_after_buffered(
        self, scope: Scope, receive: Receive, send: Send, auth: Authorized
    ) -> None:
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        await self._run_or_release(scope, receive, capture, auth)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None:
            await self.paywall.release(auth, reason="handler_status", detail={"status": None})
            await send_error(
                send, 500, "no_response", "the handler produced no response; nothing was charged"
            )
            return
        status = int(start["status"])
        if status >= 400:
            await self.paywall.release(auth, reason="handler_status", detail={"status": status})
            await _replay(send, messages, [expose_header()])
            return
        outcome = await self._settle(send, auth)
        if outcome is None:
            return
        await _replay(send, messages, _paid_headers(auth.attempt, outcome))

    async def _settle_on_headers(self, scope: Scope, receive: Receive, send: Send, auth: Authorized) -> None:
        decided = False  # the response start was seen: released or settled, never both
        replaced = False  # our own answer went out instead of the app's

        async def gate(message: Message) -> None:
            nonlocal decided, replaced
            if replaced:
                raise _Aborted
            if message["type"] != "http.response.start":
                await send(message)
                return
            decided = True
            status = int(message["status"])
            if status >= 400:
                await self.paywall.release(auth, reason="handler_status", detail={"status": status})
                await send(with_headers(message, [expose_header()]))
                return
            outcome = await self._settle(send, auth)
            if outcome is None:
                replaced = True
                raise _Aborted
            await send(with_headers(message, _paid_headers(auth.attempt, outcome)))

        with contextlib.suppress(_Aborted):
            await self._run_or_release(scope, receive, gate, auth, decided=lambda: decided)

    async def _settle_first(self, scope: Scope, receive: Receive, send: Send, auth: Authorized) -> None:
        outcome = await self._settle(send, auth)
        if outcome is None:
            return
        status = 0

        async def mark(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = with_headers(message, _paid_headers(auth.attempt, outcome))
            await send(message)

        try:
            await self.app(scope, receive, mark)
        except Exception:
            await self.paywall.note(auth, "handler_failed_after_settlement", {"error": "exception"})
            raise
        if status >= 400:
            # Paid and not served: recorded for the operator (a refund is a business decision).
            await self.paywall.note(auth, "handler_failed_after_settlement", {"status": status})

    async def _run_or_release(
        self,
        scope: Scope,
        receive: Receive,
        send: Callable[[Message], Awaitable[None]],
        auth: Authorized,
        decided: Callable[[], bool] = lambda: False,
    ) -> None:
        try:
            await self.app(scope, receive, send)
        except _Aborted:
            raise
        except Exception as exc:
            if not decided():
                await self.paywall.release(
                    auth, reason="handler_raised", detail={"error": type(exc).__name__}
                )
            raise

    async def _settle(self, send: Send, auth: Authorized) -> SettleOutcome | None:
        """The settle outcome to serve with, or None once a refusal has been sent instead."""
        try:
            outcome = await self.paywall.settle(auth)
        except FacilitatorUnavailable as exc:
            await _facilitator_down(send, exc)
            return None
        except FacilitatorBadResponse as exc:
            await _facilitator_bad(send, exc)
            return None
        if outcome.result is Settlement.FAILED:
            challenge = await self.paywall.issue(auth.priced)
            header = auth.attempt.response_header.lower().encode()
            await send_payment_required(
                send,
                challenge,
                auth.priced.route,
                error=outcome.answer.error_reason or reasons.SETTLEMENT_FAILED,
                message=outcome.answer.error_message or "the facilitator could not settle the payment",
                extra_headers=[(header, encode_json_header(outcome.answer).encode())],
            )
            return None
        return outcome

    def _resource_url(self, scope: Scope) -> str:
        path = str(scope.get("root_path", "")) + str(scope["path"])
        query = scope.get("query_string", b"").decode("latin-1")
        if self.public_url:
            base = self.public_url
        else:
            host = _headers(scope).get("host")
            if not host:
                server = scope.get("server") or ("localhost", None)
                host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
            base = f"{scope.get('scheme', 'http')}://{host}"
        return base + path + (f"?{query}" if query else "")


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _paid_headers(attempt: PaymentAttempt, outcome: SettleOutcome) -> Headers:
    return [
        (attempt.response_header.lower().encode(), encode_json_header(outcome.answer).encode()),
        expose_header(),
    ]


async def _replay(send: Send, messages: list[Message], extra: Headers) -> None:
    for message in messages:
        await send(with_headers(message, extra) if message["type"] == "http.response.start" else message)


async def _buffer_body(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that hands it to the app as if it were unread."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _facilitator_down(send: Send, exc: FacilitatorUnavailable) -> None:
    log.error("facilitator_unavailable", failures=exc.failures)
    await send_error(
        send,
        503,
        reasons.FACILITATOR_UNAVAILABLE,
        "no payment facilitator could be reached; nothing was charged, try again shortly",
        failures=exc.failures,
    )


async def _facilitator_bad(send: Send, exc: FacilitatorBadResponse) -> None:
    log.error("facilitator_bad_response", error=str(exc))
    await send_error(
        send, 502, reasons.FACILITATOR_BAD_RESPONSE, f"the payment facilitator answered unintelligibly: {exc}"
    )
