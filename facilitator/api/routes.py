"""HTTP endpoints. 200 for every well-formed request (isValid/success false with a reason), 400 for a
body that is not a facilitator request, 503 when the chain cannot be reached: never a 5xx for bad input."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.evm.address import is_address, normalize_address
from shared.telemetry.metrics import metrics_endpoint
from shared.x402 import reasons
from shared.x402.models import SettleResponse, VerifyResponse, WireModel

from ..exact_evm.payment import Rejected
from ..health import readiness
from ..receipts import BYTES32_HEX, AmbiguousReceipt
from ..service import Facilitator, NetworkUnavailable
from ..wire import BadRequest, network_hint, parse_request


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _wire(model: WireModel, status: int = 200) -> Response:
    return OrjsonResponse(model.to_wire(), status_code=status)


def _error(status: int, message: str, **extra: Any) -> Response:
    return OrjsonResponse(
        {"error": message, **extra},
        status_code=status,
        headers={"retry-after": "2"} if status == 503 else None,
    )


async def _read_json(request: Request) -> Any:
    limit: int = request.app.state.max_body_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"request body exceeds {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None


def payer_hint(body: Any) -> str:
    """The payer a refusal names when the payment could not be read: the authorization's `from` when it is
    an address, else "". v1 requires `payer` in every verify and settle answer; v2 takes a string too."""
    payload = body.get("paymentPayload") if isinstance(body, dict) else None
    scheme_payload = payload.get("payload") if isinstance(payload, dict) else None
    authorization = scheme_payload.get("authorization") if isinstance(scheme_payload, dict) else None
    sender = authorization.get("from") if isinstance(authorization, dict) else None
    return normalize_address(sender) if isinstance(sender, str) and is_address(sender) else ""


def _facilitator(request: Request) -> Facilitator:
    fac: Facilitator = request.app.state.facilitator
    return fac


async def verify(request: Request) -> Response:
    body: Any = None
    try:
        body = await _read_json(request)
        payment = parse_request(body)
        return _wire(await _facilitator(request).verify(payment))
    except BadRequest as exc:
        return _error(400, str(exc))
    except Rejected as exc:
        return _wire(
            VerifyResponse(
                is_valid=False,
                invalid_reason=exc.reason,
                invalid_message=exc.message,
                payer=exc.payer or payer_hint(body),
            )
        )
    except NetworkUnavailable as exc:
        return _error(503, f"chain unavailable: {exc}", reason=reasons.NETWORK_UNAVAILABLE)


async def settle(request: Request) -> Response:
    body: Any = None
    try:
        body = await _read_json(request)
        payment = parse_request(body)
        return _wire(await _facilitator(request).settle(payment))
    except BadRequest as exc:
        return _error(400, str(exc))
    except Rejected as exc:
        return _wire(
            SettleResponse(
                success=False,
                error_reason=exc.reason,
                error_message=exc.message,
                payer=exc.payer or payer_hint(body),
                transaction="",
                network=network_hint(body),
            )
        )
    except NetworkUnavailable as exc:
        return _error(503, f"chain unavailable: {exc}", reason=reasons.NETWORK_UNAVAILABLE)


async def supported(request: Request) -> Response:
    return _wire(_facilitator(request).supported())


def receipt_nonce(values: list[str]) -> tuple[str | None, str | None]:
    """The `nonce` query parameter of GET /receipt, or the 400 message that says what is wrong with it."""
    if not values:
        return None, None
    if len(values) > 1:
        return None, "give one nonce, not several"
    if not BYTES32_HEX.fullmatch(values[0]):
        return None, "nonce must be 0x followed by 64 hex digits (the payment's EIP-3009 authorization nonce)"
    return values[0].lower(), None


async def receipt(request: Request) -> Response:
    tx_hash = request.path_params["tx_hash"]
    if not BYTES32_HEX.fullmatch(tx_hash):
        return _error(400, "txHash must be 0x followed by 64 hex digits")
    nonce, problem = receipt_nonce(request.query_params.getlist("nonce"))
    if problem is not None:
        return _error(400, problem)
    try:
        doc = await _facilitator(request).receipt(tx_hash, nonce)
    except AmbiguousReceipt as exc:
        return _error(409, str(exc), nonces=exc.nonces)
    except NetworkUnavailable as exc:
        return _error(503, f"chain unavailable: {exc}", reason=reasons.NETWORK_UNAVAILABLE)
    if doc is None:
        what = "with this hash" if nonce is None else "with this hash and nonce"
        return _error(404, f"no EIP-3009 transfer of a configured token {what}")
    return OrjsonResponse(doc)


async def receipt_key(request: Request) -> Response:
    return OrjsonResponse(
        {"address": _facilitator(request).receipt_signer, "scheme": "eip191-canonical-json"}
    )


async def health(request: Request) -> Response:
    return OrjsonResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    report = await readiness(_facilitator(request))
    return OrjsonResponse(report, status_code=200 if report["ok"] else 503)


async def metrics(request: Request) -> Response:
    return await metrics_endpoint(_facilitator(request).metrics.registry)(request)


ROUTES = [
    Route("/verify", verify, methods=["POST"]),
    Route("/settle", settle, methods=["POST"]),
    Route("/supported", supported, methods=["GET"]),
    Route("/receipt/{tx_hash}", receipt, methods=["GET"]),
    Route("/receipt-key", receipt_key, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
