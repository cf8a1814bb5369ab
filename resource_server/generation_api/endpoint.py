"""POST /generate as a priced endpoint of the payment middleware: the request is validated and admitted
before any challenge is issued (a full queue answers 503 with Retry-After, not 402), priced at the
tool's quote, and once a payment names its payer, that payer's concurrency and the payment's validity
window are checked before the payment is verified or claimed.

A payment that already created a job, sent again with the same request (its 202 was lost), gets that job's
202 again (replay.py); the middleware recognises the payment and asks `replay`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
from starlette.requests import Request
from starlette.types import Scope

from .. import reasons
from ..challenges.states import ChallengeStatus
from ..generation.engine.pricing import PriceBreakdown
from ..generation.engine.tools import Tool
from ..payment_headers import PAYMENT_SIGNATURE, X_PAYMENT, PaymentAttempt
from ..paywall import PricedRequest, Replayed, StorageUnavailable
from ..priced_endpoints import EndpointAnswer, ReplayAnswer
from ..pricing.engine import PricingError
from .offers import GENERATE_PATH
from .parsing import RequestError, Webhook, check_webhook, find_tool, parse_generate, validate_inputs
from .replay import job_of_payment, same_request

if TYPE_CHECKING:
    from .service import GenerationApi

REQUEST_STATE_KEY = "generation.request"
STORAGE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@dataclass(frozen=True, slots=True)
class AcceptedRequest:
    """A /generate request as validated before payment, handed to the handler in the request state."""

    tool: Tool
    inputs: dict[str, Any]
    webhook: Webhook | None
    breakdown: PriceBreakdown


def storage_answer() -> EndpointAnswer:
    return EndpointAnswer(
        503, reasons.STORAGE_UNAVAILABLE, "job storage is unavailable; nothing was charged", 2
    )


def accepted_request(scope: Scope) -> AcceptedRequest | None:
    found = scope.get("state", {}).get(REQUEST_STATE_KEY)
    return found if isinstance(found, AcceptedRequest) else None


class GenerateEndpoint:
    def __init__(self, api: GenerationApi) -> None:
        self.api = api

    # The route key of every challenge this endpoint issues (offers.Terms.route).
    route_keys = frozenset({f"POST {GENERATE_PATH}"})

    def matches(self, method: str, path: str) -> bool:
        return path == GENERATE_PATH and method.upper() == "POST"

    async def price(self, scope: Scope, body: bytes, resource_url: str) -> PricedRequest | EndpointAnswer:
        api = self.api
        try:
            request = parse_generate(body)
            tool = find_tool(api.engine.tools, request.tool)
            inputs = validate_inputs(tool, request.inputs)
            check_webhook(request.webhook, api.backend.allow)
            quote, breakdown = api.terms.offer(tool, inputs)
        except RequestError as exc:
            return EndpointAnswer(exc.status, exc.error, exc.message)
        except PricingError as exc:
            return EndpointAnswer(400, reasons.UNPRICEABLE, str(exc))
        # A paid request is admitted by `admit`, with its payer (the queue counts there too), after which a
        # resent payment can still be recognised when the queue has filled since its first request.
        if not _carries_payment(scope):
            refused = await self._admission(tool, None)
            if refused is not None:
                return refused
        scope.setdefault("state", {})[REQUEST_STATE_KEY] = AcceptedRequest(
            tool, inputs, request.webhook, breakdown
        )
        return PricedRequest(quote.route, quote, resource_url)

    async def admit(self, priced: PricedRequest, attempt: PaymentAttempt) -> EndpointAnswer | None:
        api = self.api
        tool = api.engine.tools[str(priced.quote.params["tool"])]
        if api.terms.deferred(tool):
            left = attempt.valid_before - api.clock()
            needed = api.terms.required_window(tool)
            if left < needed:
                return EndpointAnswer(
                    400,
                    "authorization_window_too_short",
                    f"this payment is settled when the job completes, so its authorization must stay valid "
                    f"for at least {needed:g} s; validBefore is {max(left, 0):.0f} s away (sign for the "
                    f"requirements' maxTimeoutSeconds, {api.terms.max_timeout_seconds(tool)} s)",
                )
        return await self._admission(tool, attempt.payer)

    async def replay(self, scope: Scope, replayed: Replayed) -> ReplayAnswer | EndpointAnswer | None:
        api, accepted = self.api, accepted_request(scope)
        if accepted is None:
            return None
        try:
            job = await job_of_payment(api.engine, replayed.challenge_id)
            if job is None:
                if replayed.prior.status is ChallengeStatus.VERIFIED:
                    # The first request holds the payment and has not created its job yet: ask again soon.
                    return EndpointAnswer(
                        503,
                        "payment_in_progress",
                        "this payment's first request is still being processed; retry it as it is",
                        1,
                    )
                return None  # it ended without a job (the payment was released): a used payment
            if not same_request(job, accepted):
                return None
            body = await api.accepted(job, api.base_url(Request(scope)))
        except (*STORAGE_ERRORS, StorageUnavailable):
            return storage_answer()
        location = str(body["links"]["self"])
        return ReplayAnswer(202, body, f"job:{job.id}", [(b"location", location.encode())])

    async def _admission(self, tool: Tool, payer: str | None) -> EndpointAnswer | None:
        try:
            refusal = await self.api.engine.admission_check(tool.name, payer)
        except STORAGE_ERRORS:
            return storage_answer()
        if refusal is None:
            return None
        return EndpointAnswer(refusal.http_status, refusal.code, refusal.message, refusal.retry_after)


def _carries_payment(scope: Scope) -> bool:
    names = (PAYMENT_SIGNATURE.encode(), X_PAYMENT.encode())
    return any(name.lower() in names and value for name, value in scope.get("headers", []))
