"""The generation API's HTTP endpoints (Starlette):

  GET  /tools                         the catalogue: inputs (JSON Schema), limits, price rules, payment terms
  GET  /tools/{id}                    one tool
  POST /tools/{id}/quote              {"inputs"} -> price, breakdown and a payable challenge for /generate
  POST /generate                      paid (x402): {"tool", "inputs", "delivery"} -> 202, job id + token
  GET  /jobs/{id}                     status, progress, timings, result links, failure, payment
  GET  /jobs/{id}/events              Server-Sent Events of the same (Last-Event-ID resumes)
  GET  /jobs/{id}/result              the artifact; also with ?expires=&sig= (a signed link)
  POST /jobs/{id}/webhook/redeliver   replay the final webhook event, same event id
  GET  /health                        liveness plus every provider's readiness, degraded ones shown

Jobs are visible with their token (X-Job-Token or ?token=) or the payer's signature (X-Job-Auth); there
is no listing, and an unknown job and a job the caller may not see get the same 404."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import reasons
from ..api import MAX_QUOTE_BODY, OrjsonResponse, read_body
from ..challenges.requirements import payment_required_v1, payment_required_v2, resource_info
from ..generation.artifacts import ArtifactNotFound
from ..generation.engine.admission import AdmissionRefused
from ..generation.engine.records import JobRecord
from ..generation.engine.service import JobRequest
from ..generation.engine.states import JobStatus
from ..paywall import PricedRequest, SettleOutcome, StorageUnavailable
from ..priced_endpoints import PaymentHold, payment_hold
from ..pricing.engine import PricingError
from . import access, payments
from .catalogue import describe_tool, price_json
from .endpoint import STORAGE_ERRORS, accepted_request
from .offers import GENERATE_PATH
from .parsing import RequestError, find_tool, parse_quote, validate_inputs
from .service import GenerationApi
from .sse import event_stream, parse_last_event_id

NOT_FOUND = "job_not_found"
NOT_FOUND_MESSAGE = "no such job, or not visible with these credentials (X-Job-Token, ?token= or X-Job-Auth)"

Handler = Callable[[Request], Awaitable[Response]]


def _error(
    http_status: int, error: str, message: str, *, retry_after: int | None = None, **extra: Any
) -> Response:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    body = {"error": error, "message": message, **extra}
    return OrjsonResponse(body, status_code=http_status, headers=headers)


def _not_found() -> Response:
    return _error(404, NOT_FOUND, NOT_FOUND_MESSAGE)


def _api(request: Request) -> GenerationApi:
    api: GenerationApi = request.app.state.generation
    return api


def guarded(handler: Handler) -> Handler:
    """A database outage answers 503 with a reason instead of a bare 500."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except (*STORAGE_ERRORS, StorageUnavailable):
            return _error(
                503,
                reasons.STORAGE_UNAVAILABLE,
                "job storage is unavailable; try again shortly",
                retry_after=2,
            )

    return run


def _job_id(request: Request) -> UUID | None:
    try:
        return UUID(str(request.path_params["job_id"]))
    except ValueError:
        return None


async def _visible_job(request: Request, api: GenerationApi) -> JobRecord | None:
    """The job if the caller holds its token or is its payer; None for unknown and hidden alike."""
    job_id = _job_id(request)
    if job_id is None:
        return None
    token = request.headers.get(access.TOKEN_HEADER) or request.query_params.get("token")
    if token and access.token_matches(api.secret, job_id, token):
        return await api.engine.get_job(job_id)
    proof = request.headers.get(access.PAYER_AUTH_HEADER)
    if proof:
        payer = access.recover_payer(
            proof, job_id, now=api.clock(), window_seconds=api.settings.payer_auth_window_seconds
        )
        job = await api.engine.get_job(job_id)
        if (
            payer is not None
            and job is not None
            and job.payer is not None
            and job.payer.lower() == payer.lower()
        ):
            return job
    return None


# -- tools ---------------------------------------------------------------------------------------------------


async def tools_index(request: Request) -> Response:
    api = _api(request)
    base = api.base_url(request)
    tools = [describe_tool(t, api.terms, base) for t in api.engine.tools.values()]
    return OrjsonResponse({"tools": tools, "generate": f"{base}{GENERATE_PATH}"})


async def tool_detail(request: Request) -> Response:
    api = _api(request)
    try:
        tool = find_tool(api.engine.tools, str(request.path_params["tool_id"]))
    except RequestError as exc:
        return _error(exc.status, exc.error, exc.message)
    return OrjsonResponse(describe_tool(tool, api.terms, api.base_url(request)))


@guarded
async def tool_quote(request: Request) -> Response:
    api = _api(request)
    body = await read_body(request, MAX_QUOTE_BODY)
    if body is None:
        return _error(413, reasons.BODY_TOO_LARGE, f"the quote request exceeds {MAX_QUOTE_BODY} bytes")
    try:
        tool = find_tool(api.engine.tools, str(request.path_params["tool_id"]))
        inputs = validate_inputs(tool, parse_quote(body))
        quote, breakdown = api.terms.offer(tool, inputs)
    except RequestError as exc:
        return _error(exc.status, exc.error, exc.message)
    except PricingError as exc:
        return _error(400, reasons.UNPRICEABLE, str(exc))
    base = api.base_url(request)
    challenge = await api.paywall.issue(PricedRequest(quote.route, quote, base + GENERATE_PATH))
    route = quote.route
    v2 = payment_required_v2(
        challenge.requirements, resource_info(route, challenge.resource), reasons.PAYMENT_REQUIRED
    )
    return OrjsonResponse(
        {
            "tool": tool.name,
            "inputs": inputs,
            "price": price_json(breakdown.total, breakdown.to_json()),
            "amounts": quote.breakdown()["amounts"],
            "paramsHash": challenge.params_hash,
            "settlement": "on_completion" if api.terms.deferred(tool) else "on_accept",
            "maxTimeoutSeconds": route.max_timeout_seconds,
            "challenge": {
                "id": challenge.id,
                "expiresAt": challenge.expires_at_unix,
                "expiresAtIso": challenge.expires_at.isoformat(),
            },
            "paymentRequired": v2.to_wire(),
            "paymentRequiredV1": payment_required_v1(
                challenge.requirements_v1, reasons.PAYMENT_REQUIRED
            ).to_wire(),
            "generate": base + GENERATE_PATH,
        }
    )


# -- generate ------------------------------------------------------------------------------------------------


@guarded
async def generate(request: Request) -> Response:
    """Runs behind the payment middleware, which validated, admitted and priced the request and claimed
    its payment; the job takes charge of that payment (deferred) or waits for it (settle on accept)."""
    api = _api(request)
    hold, accepted = payment_hold(request.scope), accepted_request(request.scope)
    if hold is None or accepted is None:
        return _error(500, "not_paid", "POST /generate must run behind the payment middleware")
    tool = accepted.tool
    deferred = api.terms.deferred(tool)
    webhook = accepted.webhook
    try:
        submitted = await api.engine.submit_job(
            JobRequest(
                tool.name,
                accepted.inputs,
                payer=hold.payer,
                idempotency_key=hold.challenge_id,  # one payment, one job
                payment_challenge_id=hold.challenge_id,
                # Its authorization nonce: a batched settlement shares its tx hash with other payments.
                payment_nonce=hold.authorized.attempt.nonce,
                webhook_url=webhook.url if webhook else None,
                webhook_secret=webhook.secret if webhook else None,
                webhook_progress=webhook.include_progress if webhook else False,
                settlement_status=payments.HELD if deferred else payments.SETTLING,
                deadline_seconds=tool.limits.max_job_seconds,
                hold_seconds=None if deferred else api.accept_hold_seconds,
            )
        )
    except AdmissionRefused as exc:
        # Another submission took the last slot since the check before payment: released, not charged.
        r = exc.refusal
        return _error(r.http_status, r.code, r.message, retry_after=r.retry_after)
    job = submitted.job
    if deferred:
        hold.take(f"job:{job.id}")
    else:
        _settle_on_accept(api, hold, job)
    body = await api.accepted(job, api.base_url(request))
    return OrjsonResponse(body, status_code=202, headers={"location": body["links"]["self"]})


def _settle_on_accept(api: GenerationApi, hold: PaymentHold, job: JobRecord) -> None:
    """The middleware settles after this handler answers; the job is held until then, and runs once the
    payment settled, or is canceled when it could not be."""

    async def settled(_: SettleOutcome) -> None:
        await api.payments.current(job)
        await api.engine.release_hold(job.id)

    async def unpaid(_: str) -> None:
        await api.payments.current(await api.engine.cancel_job(job.id))

    hold.when_settled(settled)
    hold.when_unpaid(unpaid)


# -- jobs ----------------------------------------------------------------------------------------------------


@guarded
async def job_status(request: Request) -> Response:
    api = _api(request)
    job = await _visible_job(request, api)
    if job is None:
        return _not_found()
    return OrjsonResponse(await api.view(job, api.base_url(request)))


@guarded
async def job_events(request: Request) -> Response:
    api = _api(request)
    job = await _visible_job(request, api)
    if job is None:
        return _not_found()
    after = parse_last_event_id(
        request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    )
    if after is None:
        return _error(
            400, reasons.INVALID_REQUEST, "Last-Event-ID must be an event id (a non-negative integer)"
        )
    return StreamingResponse(
        event_stream(api.engine, job.id, after),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@guarded
async def job_result(request: Request) -> Response:
    api = _api(request)
    expires, sig = request.query_params.get("expires"), request.query_params.get("sig")
    job: JobRecord | None
    if expires is not None or sig is not None:
        job_id = _job_id(request)
        if job_id is None:
            return _not_found()
        verdict = access.check_result_link(api.secret, job_id, expires or "", sig or "", now=api.clock())
        if verdict is access.LinkVerdict.INVALID:
            return _not_found()
        if verdict is access.LinkVerdict.EXPIRED:
            return _error(403, "link_expired", "this result link has expired; GET the job for a fresh one")
        job = await api.engine.get_job(job_id)
    else:
        job = await _visible_job(request, api)
    if job is None:
        return _not_found()
    if job.status is not JobStatus.COMPLETED:
        waiting = job.status.active
        return _error(
            409,
            "job_not_completed",
            f"the job is {job.status.value}; a result exists once it completes",
            retry_after=2 if waiting else None,
            status=job.status.value,
        )
    withheld = await _withheld(api, job)
    if withheld is not None:
        return withheld
    return await _artifact(api, job, request.query_params.get("artifact"))


async def _withheld(api: GenerationApi, job: JobRecord) -> Response | None:
    """A paid job's result goes out once its payment settled (or is confirming), never before."""
    if job.payment_challenge_id is None:
        return None
    state = await api.payments.current(job)
    if state.status in payments.RESULT_RELEASED_BY:
        return None
    if state.status in (payments.HELD, payments.SETTLING):
        return _error(
            409, "payment_settling", "the job's payment is being settled; retry in a moment", retry_after=1
        )
    return _error(
        409,
        "payment_failed",
        f"the job's payment could not be settled ({state.status}); the result is withheld",
        settlement_status=state.status,
    )


async def _artifact(api: GenerationApi, job: JobRecord, wanted: str | None) -> Response:
    artifacts = [a for a in job.result.get("artifacts", []) if isinstance(a, dict) and "id" in a]
    chosen = next((a for a in artifacts if wanted is None or a["id"] == wanted), None)
    if chosen is None:
        what = f"artifact {wanted!r}" if wanted else "an artifact"
        return _error(404, "no_artifact", f"the job's result has no {what}")
    store = api.backend.stack.artifacts
    try:
        ref = await store.ref(UUID(str(chosen["id"])))
        if ref.job_id != job.id or not ref.published:
            raise ArtifactNotFound(str(ref.id))
        data = await store.content(ref.id)
    except (ArtifactNotFound, ValueError):
        return _error(404, "no_artifact", "the job's artifact is no longer stored")
    return Response(
        data,
        media_type=ref.media_type,
        headers={
            "content-disposition": f'attachment; filename="{ref.name}"',
            "etag": f'"{ref.sha256}"',
            "cache-control": "private, max-age=0",
        },
    )


@guarded
async def job_redeliver(request: Request) -> Response:
    api = _api(request)
    job = await _visible_job(request, api)
    if job is None:
        return _not_found()
    if job.webhook_url is None:
        return _error(409, "no_webhook", "the job was submitted without webhook delivery")
    if not job.status.final:
        return _error(
            409, "job_not_final", f"the job is {job.status.value}; only a final event can be replayed"
        )
    event_id = await api.engine.redeliver_final(job.id)
    if event_id is None:
        return _error(409, "no_final_event", "the job's final event has not been written yet")
    return OrjsonResponse({"event_id": str(event_id), "status": "queued"}, status_code=202)


# -- health --------------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    api = _api(request)
    readiness = await api.backend.stack.readiness()
    try:
        queued: int | None = (await api.engine.store.load(None)).queued
    except STORAGE_ERRORS:
        queued = None
    if queued is None or not readiness["ok"]:
        status = "unavailable"
    else:
        status = "degraded" if readiness["degraded"] else "ok"
    body = {
        "status": status,
        "database": "ok" if queued is not None else "unavailable",
        "providers": readiness["providers"],
        "queue": {"queued": queued, "max": api.settings.max_queued},
        "worker": {"inProcess": api.run_worker},
    }
    return OrjsonResponse(body, status_code=503 if status == "unavailable" else 200)


def routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/tools", tools_index, methods=["GET"]),
        Route("/tools/{tool_id}", tool_detail, methods=["GET"]),
        Route("/tools/{tool_id}/quote", tool_quote, methods=["POST"]),
        Route(GENERATE_PATH, generate, methods=["POST"]),
        Route("/jobs/{job_id}", job_status, methods=["GET"]),
        Route("/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/jobs/{job_id}/result", job_result, methods=["GET"]),
        Route("/jobs/{job_id}/webhook/redeliver", job_redeliver, methods=["POST"]),
    ]
