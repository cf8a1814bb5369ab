"""An aiohttp client for any x402 facilitator's /verify and /settle, with failover across several URLs.

A URL is skipped for the next one on a connection error, a timeout or a 5xx. When every URL fails the call
raises FacilitatorUnavailable, which says whether the request may have reached a facilitator (a timeout or
a 5xx after sending) or certainly did not (every connection refused): only in the second case is it known
that nothing was settled. A /settle that may have reached a facilitator is not sent to the next one: if the
first broadcast it, the next would answer that the authorization is used, and the payment would be recorded
failed while the payer was charged. It raises FacilitatorUnavailable (maybe delivered) at once, and the
payment waits for the reconciler to ask again. An answer that is not a VerifyResponse / SettleResponse
raises FacilitatorBadResponse.

aiohttp rather than httpx: two calls per paid request, and per call httpx cost the resource server several
times the CPU (measured ~1.1-2.8 ms against ~0.15-0.3 ms of client CPU per call, at 1 and 32 in flight)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
import structlog
from pydantic import ValidationError

from shared.telemetry.tracing import span
from shared.x402.codec import describe_validation_error
from shared.x402.models import SettleResponse, VerifyResponse, WireModel
from shared.x402.reasons import SETTLEMENT_PENDING

if TYPE_CHECKING:
    from .metrics import ResourceServerMetrics

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=WireModel)


class FacilitatorError(Exception):
    pass


class FacilitatorUnavailable(FacilitatorError):
    def __init__(self) -> None:
        super().__init__()
        self.failures: list[str] = []
        self.maybe_delivered = False  # a facilitator may have received (and acted on) the request

    def __str__(self) -> str:
        return "no facilitator answered: " + "; ".join(self.failures)


class FacilitatorBadResponse(FacilitatorError):
    """The facilitator answered, but not with the protocol's JSON (or refused our request with a 4xx)."""


class FacilitatorRefused(FacilitatorBadResponse):
    """A 4xx without a protocol answer (a wrong API key or URL, a rate limit): the facilitator refused our
    request before acting on it, so nothing was sent."""


class FacilitatorClient:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        settle_timeout: float = 60.0,
        max_connections: int = 32,
        metrics: ResourceServerMetrics | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one facilitator URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.settle_timeout = settle_timeout
        self.max_connections = max_connections
        self._headers = {"content-type": "application/json"}
        if api_key:
            # Dropped by aiohttp when a redirect leads to another origin.
            self._headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self.metrics = metrics
        # `connect` bounds the wait for a pooled connection plus connecting; `sock_read` each read. Settling
        # waits for a receipt: a longer read timeout, so a slow block is not taken for an outage.
        self._timeouts = {
            path: aiohttp.ClientTimeout(
                total=None, connect=timeout, sock_connect=min(timeout, 5.0), sock_read=read
            )
            for path, read in (("/verify", timeout), ("/settle", settle_timeout))
        }

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, not in __init__: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections,
                    # Below uvicorn's 5 s keep-alive: reusing a connection the server is closing would
                    # fail a request that may have been delivered.
                    keepalive_timeout=4.0,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, payload: dict[str, Any], requirements: dict[str, Any]) -> VerifyResponse:
        return await self._call(
            "verify", payload, requirements, VerifyResponse, lambda a: "valid" if a.is_valid else "invalid"
        )

    async def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
        return await self._call("settle", payload, requirements, SettleResponse, _settle_outcome)

    async def _call(
        self,
        endpoint: str,
        payload: dict[str, Any],
        requirements: dict[str, Any],
        model: type[M],
        outcome: Callable[[M], str],
    ) -> M:
        """POST /`endpoint`, timed into the metrics by outcome."""
        start = time.perf_counter()
        try:
            answer = await self._post("/" + endpoint, payload, requirements, model)
        except FacilitatorError as exc:
            self._observe(endpoint, _error_outcome(exc), start)
            raise
        self._observe(endpoint, outcome(answer), start)
        return answer

    def _observe(self, endpoint: str, outcome: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.facilitator_call(endpoint, outcome, time.perf_counter() - start)

    async def _post(
        self, path: str, payload: dict[str, Any], requirements: dict[str, Any], model: type[M]
    ) -> M:
        body = orjson.dumps(
            {
                "x402Version": payload.get("x402Version"),
                "paymentPayload": payload,
                "paymentRequirements": requirements,
            }
        )
        unavailable = FacilitatorUnavailable()
        timeout = self._timeouts[path]
        http = self._http()
        for base in self.urls:
            url = base + path
            try:
                async with (
                    span("facilitator" + path.replace("/", "."), url=base),
                    http.post(url, data=body, headers=self._headers, timeout=timeout) as response,
                ):
                    status, content = response.status, await response.read()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing was sent: no connection was made.
                unavailable.failures.append(f"{url}: cannot connect ({type(exc).__name__})")
                continue
            except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
                unavailable.failures.append(f"{url}: timed out ({type(exc).__name__})")
            except aiohttp.ClientError as exc:
                unavailable.failures.append(f"{url}: {type(exc).__name__}: {exc}")
            else:
                if status < 500:
                    if unavailable.failures:
                        log.warning(
                            "facilitator_failover", path=path, answered=base, skipped=unavailable.failures
                        )
                    return _parse(status, content, model, url)
                unavailable.failures.append(f"{url}: HTTP {status} {_snippet(content)}")
            # Sent, maybe received: a verify may go elsewhere, a settle must not (see the docstring).
            unavailable.maybe_delivered = True
            if path == "/settle":
                break
        raise unavailable


def _settle_outcome(answer: SettleResponse) -> str:
    if answer.success:
        return "success"
    return "pending" if answer.error_reason == SETTLEMENT_PENDING else "failed"


def _error_outcome(exc: FacilitatorError) -> str:
    return "unavailable" if isinstance(exc, FacilitatorUnavailable) else "bad_response"


def _parse(status: int, content: bytes, model: type[M], url: str) -> M:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise FacilitatorBadResponse(
            f"{url} answered HTTP {status} with a body that is not JSON: {_snippet(content)}"
        ) from None
    if status >= 400:
        # Some facilitators put a protocol answer in a 4xx (the TypeScript client accepts that); anything
        # else is the facilitator refusing our request, which no retry elsewhere will fix.
        key = "isValid" if model is VerifyResponse else "success"
        if not (isinstance(data, dict) and key in data):
            raise FacilitatorRefused(f"{url} refused the request: HTTP {status} {_snippet(content)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FacilitatorBadResponse(
            f"{url} answered with an invalid {model.__name__}: {describe_validation_error(exc)}"
        ) from None


def _snippet(content: bytes) -> str:
    text = content[:400].decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text[:200]
