"""An httpx client for any x402 facilitator's /verify and /settle, with failover across several URLs.

A URL is skipped for the next one on a connection error, a timeout or a 5xx. When every URL fails the call
raises FacilitatorUnavailable, which says whether the request may have reached a facilitator (a timeout or
a 5xx after sending) or certainly did not (every connection refused): only in the second case is it known
that nothing was settled. An answer that is not a VerifyResponse / SettleResponse raises
FacilitatorBadResponse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
import orjson
import structlog
from pydantic import ValidationError

from shared.telemetry.tracing import span
from shared.x402.codec import describe_validation_error
from shared.x402.models import SettleResponse, VerifyResponse, WireModel

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


class FacilitatorClient:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        settle_timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one facilitator URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.settle_timeout = settle_timeout
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=True,  # the public x402.org facilitator answers with a 308
            # httpcore scans every pooled connection per request: a small pool is faster under load.
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def verify(self, payload: dict[str, Any], requirements: dict[str, Any]) -> VerifyResponse:
        return await self._call("/verify", payload, requirements, VerifyResponse, self.timeout)

    async def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
        # Settling waits for a receipt: a longer read timeout, so a slow block is not taken for an outage.
        return await self._call("/settle", payload, requirements, SettleResponse, self.settle_timeout)

    async def _call(
        self,
        path: str,
        payload: dict[str, Any],
        requirements: dict[str, Any],
        model: type[M],
        read_timeout: float,
    ) -> M:
        body = orjson.dumps(
            {
                "x402Version": payload.get("x402Version"),
                "paymentPayload": payload,
                "paymentRequirements": requirements,
            }
        )
        unavailable = FacilitatorUnavailable()
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0), read=read_timeout)
        for base in self.urls:
            url = base + path
            try:
                async with span("facilitator" + path.replace("/", "."), url=base):
                    response = await self._http.post(
                        url, content=body, headers={"content-type": "application/json"}, timeout=timeout
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                unavailable.failures.append(f"{url}: cannot connect ({type(exc).__name__})")
                continue
            except httpx.TimeoutException as exc:
                unavailable.failures.append(f"{url}: timed out ({type(exc).__name__})")
                unavailable.maybe_delivered = True
                continue
            except httpx.TransportError as exc:
                unavailable.failures.append(f"{url}: {type(exc).__name__}: {exc}")
                unavailable.maybe_delivered = True
                continue
            if response.status_code >= 500:
                unavailable.failures.append(f"{url}: HTTP {response.status_code} {_snippet(response)}")
                unavailable.maybe_delivered = True
                continue
            if unavailable.failures:
                log.warning("facilitator_failover", path=path, answered=base, skipped=unavailable.failures)
            return _parse(response, model, url)
        raise unavailable


def _parse(response: httpx.Response, model: type[M], url: str) -> M:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise FacilitatorBadResponse(
            f"{url} answered HTTP {response.status_code} with a body that is not JSON: {_snippet(response)}"
        ) from None
    if response.status_code >= 400:
        # Some facilitators put a protocol answer in a 4xx (the TypeScript client accepts that); anything
        # else is the facilitator refusing our request, which no retry elsewhere will fix.
        key = "isValid" if model is VerifyResponse else "success"
        if not (isinstance(data, dict) and key in data):
            raise FacilitatorBadResponse(
                f"{url} refused the request: HTTP {response.status_code} {_snippet(response)}"
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FacilitatorBadResponse(
            f"{url} answered with an invalid {model.__name__}: {describe_validation_error(exc)}"
        ) from None


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200]
