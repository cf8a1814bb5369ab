"""The resource server's own endpoints: GET /pricing (what is for sale), POST /quote (the price and exact
payment requirements for given parameters, without doing the work), GET /audit (admin) and GET /health."""

from __future__ import annotations

import hmac
import re
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from shared.evm.address import InvalidAddress, normalize_address

from . import reasons
from .challenges.requirements import payment_required_v1, payment_required_v2, resource_info
from .challenges.store import StoreNotReady
from .paywall import PricedRequest, StorageUnavailable
from .pricing.engine import PricingError, quote
from .pricing.model import AcceptOption, PriceRule, Route
from .pricing.money import format_decimal
from .pricing.params import ParamError, ParamSource, validate_params
from .request_params import loads_decimal
from .runtime import Runtime

API_PATHS = frozenset({"/pricing", "/quote", "/audit", "/health"})
_TX = re.compile(r"0x[0-9a-fA-F]{64}")
_CHALLENGE = re.compile(r"[0-9a-f]{32}")
MAX_QUOTE_BODY = 64 * 1024


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, error: str, message: str, **extra: Any) -> Response:
    return OrjsonResponse({"error": error, "message": message, **extra}, status_code=status)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _base_url(request: Request, runtime: Runtime) -> str:
    if runtime.settings.public_url:
        return runtime.settings.public_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


# -- GET /pricing -------------------------------------------------------------------------------------------


def describe_price(rule: PriceRule) -> dict[str, Any]:
    if not rule.dynamic:
        return {"type": "fixed", "unit": rule.unit, "amount": format_decimal(rule.base)}
    return {
        "type": "dynamic",
        "unit": rule.unit,
        "formula": "max(minimum, base × factors… × (1 + markupPercent / 100) + markup), rounded up per token",
        "base": format_decimal(rule.base),
        "factors": [
            {
                "param": f.param,
                **({"table": {k: format_decimal(v) for k, v in f.table.items()}} if f.table else {}),
            }
            for f in rule.factors
        ],
        "markupPercent": format_decimal(rule.markup_percent),
        "markup": format_decimal(rule.markup),
        **({"minimum": format_decimal(rule.minimum)} if rule.minimum is not None else {}),
    }


def describe_route(route: Route) -> dict[str, Any]:
    fixed: dict[str, str] = {}
    if not route.price.dynamic:
        fixed = (
            {a.option.token.address: str(a.atomic) for a in quote(route, {}).amounts}
            if not route.params
            else {}
        )
    return {
        "method": route.method,
        "path": route.pattern.pattern,
        "description": route.description,
        "mimeType": route.mime_type,
        "settlement": route.settlement.value,
        "maxTimeoutSeconds": route.max_timeout_seconds,
        "price": describe_price(route.price),
        "params": {p.name: p.describe() for p in route.params},
        "accepts": [describe_accept(o, fixed.get(o.token.address)) for o in route.accepts],
    }


def describe_accept(option: AcceptOption, amount: str | None = None) -> dict[str, Any]:
    """One way to pay, as /pricing and the generation catalogue list it; `amount` when the price is fixed."""
    return {
        "scheme": "exact",
        "network": option.token.network,
        **({"v1Network": option.token.v1_network} if option.token.v1_network else {}),
        "asset": option.token.address,
        "symbol": option.token.symbol,
        "decimals": option.token.decimals,
        "payTo": option.pay_to,
        **({"amount": amount} if amount is not None else {}),
    }


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds `limit` bytes (the rest is not read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def pricing(request: Request) -> Response:
    routes = _runtime(request).pricing.routes
    return OrjsonResponse(
        {"x402Version": 2, "quote": "/quote", "routes": [describe_route(r) for r in routes]}
    )


# -- POST /quote --------------------------------------------------------------------------------------------


async def quote_endpoint(request: Request) -> Response:
    runtime = _runtime(request)
    body = await read_body(request, MAX_QUOTE_BODY)
    if body is None:
        return _error(413, reasons.BODY_TOO_LARGE, f"the quote request exceeds {MAX_QUOTE_BODY} bytes")
    try:
        data = loads_decimal(body)
    except ValueError:
        return _error(400, reasons.INVALID_REQUEST, "the body must be JSON: {method, path, params}")
    if not isinstance(data, dict):
        return _error(400, reasons.INVALID_REQUEST, "the body must be a JSON object: {method, path, params}")
    method, path, params = data.get("method", "GET"), data.get("path"), data.get("params", {})
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        return _error(400, reasons.INVALID_REQUEST, "method must be a string and path must start with '/'")
    if not isinstance(params, dict):
        return _error(400, reasons.INVALID_REQUEST, "params must be a JSON object")
    found = runtime.pricing.match(method, path.split("?", 1)[0])
    if found is None:
        return _error(404, reasons.NO_PRICED_ROUTE, f"nothing is for sale at {method.upper()} {path}")
    route = found.route
    raw: dict[str, object] = {}
    for spec in route.params:
        source = found.path_params if spec.source is ParamSource.PATH else params
        if spec.name in source:
            raw[spec.name] = source[spec.name]
    try:
        priced = PricedRequest(
            route, quote(route, validate_params(route.params, raw)), _base_url(request, runtime) + path
        )
    except ParamError as exc:
        return _error(400, reasons.INVALID_PARAMS, str(exc), param=exc.param)
    except PricingError as exc:
        return _error(400, reasons.UNPRICEABLE, str(exc))
    try:
        challenge = await runtime.paywall.issue(priced)
    except StorageUnavailable:
        return _error(503, reasons.STORAGE_UNAVAILABLE, "payment storage is unavailable")
    v2 = payment_required_v2(
        challenge.requirements, resource_info(route, challenge.resource), reasons.PAYMENT_REQUIRED
    )
    v1 = payment_required_v1(challenge.requirements_v1, reasons.PAYMENT_REQUIRED)
    return OrjsonResponse(
        {
            "route": route.key,
            "resource": challenge.resource,
            "params": challenge.params,
            "paramsHash": challenge.params_hash,
            "price": priced.quote.breakdown(),
            "challenge": {
                "id": challenge.id,
                "expiresAt": challenge.expires_at_unix,
                "expiresAtIso": challenge.expires_at.isoformat(),
            },
            "paymentRequired": v2.to_wire(),
            "paymentRequiredV1": v1.to_wire(),
        }
    )


# -- GET /audit ---------------------------------------------------------------------------------------------


async def audit(request: Request) -> Response:
    runtime = _runtime(request)
    key = runtime.settings.admin_api_key
    if key is None:
        return _error(
            403, reasons.UNAUTHORIZED, "the audit trail is closed: set X402_RS_ADMIN_API_KEY to open it"
        )
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        return _error(
            401, reasons.UNAUTHORIZED, "missing or invalid admin API key (Authorization: Bearer <key>)"
        )
    q = request.query_params
    challenge, payer, tx = q.get("challenge"), q.get("payer"), q.get("tx")
    if not (challenge or payer or tx):
        return _error(400, reasons.INVALID_REQUEST, "give challenge=<id>, payer=<address> or tx=<hash>")
    if challenge and not _CHALLENGE.fullmatch(challenge):
        return _error(400, reasons.INVALID_REQUEST, "challenge must be 32 lower-case hex digits")
    if tx and not _TX.fullmatch(tx):
        return _error(400, reasons.INVALID_REQUEST, "tx must be 0x followed by 64 hex digits")
    if payer:
        try:
            payer = normalize_address(payer)
        except InvalidAddress as exc:
            return _error(400, reasons.INVALID_REQUEST, f"payer: {exc}")
    limit_text = q.get("limit", "200")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        return _error(400, reasons.INVALID_REQUEST, "limit must be an integer from 1 to 1000")
    try:
        events = await runtime.store.audit(
            challenge_id=challenge, payer=payer, tx_hash=tx, limit=int(limit_text)
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, StoreNotReady) as exc:
        return _error(503, reasons.STORAGE_UNAVAILABLE, str(exc))
    return OrjsonResponse({"events": [e.to_json() for e in events]})


async def health(request: Request) -> Response:
    return OrjsonResponse({"status": "ok"})


ROUTES = [
    HttpRoute("/pricing", pricing, methods=["GET"]),
    HttpRoute("/quote", quote_endpoint, methods=["POST"]),
    HttpRoute("/audit", audit, methods=["GET"]),
    HttpRoute("/health", health, methods=["GET"]),
]
