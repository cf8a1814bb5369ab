"""Pure ASGI middleware that puts a price on the routes of any Starlette/FastAPI (or plain ASGI) app.

An unpaid request to a priced route gets a 402 challenge; a paid one is matched, verified and claimed, then
settled by the route's policy:

- `after` (default): the handler runs first. In "buffered" mode its whole response is held back and settled
  only if its status is below 400; in "stream" mode (the gateway) settlement happens when the response
  headers arrive, before any body is passed on. A handler that raises or answers >= 400 settles nothing.
- `before`: settle, then run the handler and stream its response.
- `deferred` (routes of priced endpoints only, see priced_endpoints.py): verify and claim, run the handler,
  settle nothing. The handler takes charge of the payment (`PaymentHold.take`) and settles or releases it
  later through the paywall, e.g. when the job it queued ends; a payment nobody took is released. The
  response carries a PAYMENT-RESPONSE with errorReason `settlement_deferred` and no transaction yet.
  The same payment sent again for the same request (a client retrying after a lost answer) gets that
  answer again from the endpoint (`PricedEndpoint.replay`), marked `Idempotent-Replayed: true`, and nothing
  is claimed, created or charged; any other reuse is refused as a used payment.

The handler of every paid request finds the claimed payment in scope["state"]["x402.payment"].

Usage:

    store = ChallengeStore(); facilitator = FacilitatorClient(["https://facilitator.example"], api_key=...)
    app.add_middleware(PaymentMiddleware, pricing=load_pricing(path), store=store, facilitator=facilitator)
    # and in the app's lifespan: await store.open(dsn) ... await store.close(); await facilitator.aclose()
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Literal

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.x402 import reasons as fac_reasons
from shared.x402.codec import encode_json_header
from shared.x402.models import SettleResponse

from . import reasons
from .challenges.store import ChallengeStore
from .facilitator_client import (
    FacilitatorBadResponse,
    FacilitatorClient,
    FacilitatorRefused,
    FacilitatorUnavailable,
)
from .payment_headers import DEFAULT_MAX_HEADER_BYTES, PaymentAttempt, PaymentHeaderError, read_payment
from .paywall import (
    Authorized,
    Denied,
    Paywall,
    PricedRequest,
    Replayed,
    Settlement,
    SettleOutcome,
    SettleUnrecorded,
    StorageUnavailable,
)
from .priced_endpoints import EndpointAnswer, PaymentHold, PricedEndpoint, attach_hold
from .pricing.engine import PricingError, quote
from .pricing.model import PricingConfig, RouteMatch, SettlementPolicy
from .pricing.params import ParamError
from .request_params import request_params
from .responses import Headers, expose_header, send_error, send_json, send_payment_required, with_headers

log = structlog.get_logger(__name__)

Mode = Literal["buffered", "stream"]
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on the answer to a deferred payment sent again


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
        endpoints: Sequence[PricedEndpoint] = (),
        exclude_prefixes: Collection[str] = (),
    ) -> None:
        self.app = app
        self.pricing = pricing
        self.paywall = Paywall(store, facilitator, challenge_ttl_seconds=challenge_ttl_seconds)
        self.mode = mode
        self.exclude_paths = frozenset(exclude_paths)
        self.public_url = public_url.rstrip("/") if public_url else None
        self.max_body_bytes = max_body_bytes
        self.max_payment_header_bytes = max_payment_header_bytes
        # Priced endpoints come before the pricing file: their paths belong to the application.
        self.endpoints = tuple(endpoints)
        self.exclude_prefixes = tuple(p.rstrip("/") for p in exclude_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        endpoint = next((e for e in self.endpoints if e.matches(method, path)), None)
        found = self.pricing.match(method, path) if endpoint is None else None
        if endpoint is None and found is None:
            await self.app(scope, receive, send)
            return
        try:
            if endpoint is not None:
                await self._priced_endpoint(scope, receive, send, endpoint)
            else:
                assert found is not None
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
        await self._pay(scope, receive, send, priced)

    async def _priced_endpoint(
        self, scope: Scope, receive: Receive, send: Send, endpoint: PricedEndpoint
    ) -> None:
        try:
            body, receive = await _buffer_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            await send_error(
                send, 413, reasons.BODY_TOO_LARGE, f"the request body exceeds {self.max_body_bytes} bytes"
            )
            return
        priced = await endpoint.price(scope, body, self._resource_url(scope))
        if isinstance(priced, EndpointAnswer):
            await _answer(send, priced)
            return
        await self._pay(scope, receive, send, priced, endpoint)

    async def _pay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        priced: PricedRequest,
        endpoint: PricedEndpoint | None = None,
    ) -> None:
        route = priced.route
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
        if endpoint is not None:
            refused = await endpoint.admit(priced, attempt)
            if refused is not None:
                # A resent payment may be refused for what its own first request caused (the payer's job
                # now counts against their limit) or for the time since it was signed: its answer stands.
                replayed = await self.paywall.replayed(priced, attempt)
                if replayed is not None:
                    await self._answer_replay(scope, send, replayed, endpoint)
                else:
                    await _answer(send, refused)
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
        if isinstance(decision, Replayed):
            await self._answer_replay(scope, send, decision, endpoint)
            return

        hold = PaymentHold(decision)
        attach_hold(scope, hold)
        if route.settlement is SettlementPolicy.BEFORE:
            await self._settle_first(scope, receive, send, decision)
        elif route.settlement is SettlementPolicy.DEFERRED:
            await self._settle_deferred(scope, receive, send, hold)
        elif self.mode == "stream":
            await self._settle_on_headers(scope, receive, send, decision)
        else:
            await self._settle_after_buffered(scope, receive, send, hold)

    async def _answer_replay(
        self, scope: Scope, send: Send, replayed: Replayed, endpoint: PricedEndpoint | None
    ) -> None:
        """The first answer again, from what owns the payment; nothing is claimed or settled here."""
        reply = await endpoint.replay(scope, replayed) if endpoint is not None else None
        if reply is None:
            denied = await self.paywall.refuse_replay(replayed)
            await send_payment_required(
                send, denied.challenge, replayed.priced.route, error=denied.reason, message=denied.message
            )
            return
        if isinstance(reply, EndpointAnswer):
            await _answer(send, reply)
            return
        await self.paywall.note(replayed, "payment_replayed", {"owner": reply.owner, "status": reply.status})
        headers = [
            *reply.headers,
            *_deferred_headers(replayed.attempt, replayed.challenge_id),
            (REPLAYED_HEADER.lower().encode(), b"true"),
            (b"access-control-expose-headers", REPLAYED_HEADER.encode()),
        ]
        await send_json(send, reply.status, reply.body, headers)

    def _excluded(self, path: str) -> bool:
        return path in self.exclude_paths or any(
            path == p or path.startswith(p + "/") for p in self.exclude_prefixes
        )

    async def _settle_after_buffered(
        self, scope: Scope, receive: Receive, send: Send, hold: PaymentHold
    ) -> None:
        auth = hold.authorized
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        try:
            await self._run_or_release(scope, receive, capture, auth)
        except Exception:
            await hold.unpaid("handler_raised")
            raise
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None:
            await self.paywall.release(auth, reason="handler_status", detail={"status": None})
            await hold.unpaid("handler_status")
            await send_error(
                send, 500, "no_response", "the handler produced no response; nothing was charged"
            )
            return
        status = int(start["status"])
        if status >= 400:
            await self.paywall.release(auth, reason="handler_status", detail={"status": status})
            await hold.unpaid("handler_status")
            await _replay(send, messages, [expose_header()])
            return
        try:
            outcome = await self._settle(send, auth)
        except StorageUnavailable:
            await hold.unpaid(reasons.STORAGE_UNAVAILABLE)
            raise
        if outcome is None:
            await hold.unpaid("settlement_refused")
            return
        await hold.settled(outcome)
        await _replay(send, messages, _paid_headers(auth.attempt, outcome))

    async def _settle_deferred(self, scope: Scope, receive: Receive, send: Send, hold: PaymentHold) -> None:
        """Nothing is settled here: the handler took the payment (its job settles it) or it is released."""
        auth = hold.authorized
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            if hold.owner is None:
                await self.paywall.release(
                    auth, reason="handler_raised", detail={"error": type(exc).__name__}
                )
            raise
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        status = int(start["status"]) if start is not None else None
        if hold.owner is None:
            await self.paywall.release(auth, reason="not_taken", detail={"status": status})
            if status is not None and status < 400:
                # A handler bug: it answered success without taking charge of the payment. Serving free
                # is the safe side; the payment would otherwise stay verified with nobody to settle it.
                log.error("deferred_payment_not_taken", challenge_id=auth.challenge_id, status=status)
        else:
            await self.paywall.note(auth, "settlement_deferred", {"owner": hold.owner, "status": status})
        if start is None:
            await send_error(send, 500, "no_response", "the handler produced no response")
            return
        extra = (
            [*_deferred_headers(auth.attempt, auth.challenge_id), expose_header()]
            if hold.owner is not None
            else [expose_header()]
        )
        await _replay(send, messages, extra)

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
        except FacilitatorRefused as exc:
            await _facilitator_bad(send, exc)
            return None
        except SettleUnrecorded as exc:
            # Charged (or maybe): the response is owed. The challenge stays verified; the reconciler settles
            # it again, which answers with this settlement and records it (the nonce moves money once).
            log.error(
                "settlement_unrecorded",
                challenge_id=auth.challenge_id,
                outcome=exc.outcome.result.value,
                transaction=exc.outcome.answer.transaction,
                error=str(exc),
            )
            return exc.outcome
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


def _deferred_headers(attempt: PaymentAttempt, challenge_id: str) -> Headers:
    answer = SettleResponse(
        success=False,
        error_reason=fac_reasons.SETTLEMENT_DEFERRED,
        error_message="the payment is verified and held; it is settled when the work completes",
        transaction="",
        network=attempt.network,
        payer=attempt.payer,
        extensions={"deferred": {"challengeId": challenge_id}},
    )
    return [(attempt.response_header.lower().encode(), encode_json_header(answer).encode())]


async def _answer(send: Send, answer: EndpointAnswer) -> None:
    await send_json(send, answer.status, answer.body(), answer.headers())


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
