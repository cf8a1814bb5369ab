"""Gateway mode: a streaming reverse proxy to any upstream HTTP API, with the payment middleware in front.

Request and response bodies stream through (httpx, raw bytes, so compressed bodies and their lengths pass
unchanged). Headers are filtered both ways: hop-by-hop headers (and any the Connection header names) never
cross, the payment headers stay with the gateway, X-Forwarded-* are the gateway's own (from the connection),
and the client's Authorization is not forwarded unless configured (it may be meant for the gateway, and it
must never reach an upstream by accident). Cookies pass: an upstream API may need them.

The path is priced and forwarded as one: `normalize_path` resolves dot segments and merges repeated slashes
before pricing, and the upstream URL is built from that same path. Otherwise the HTTP client (or the
upstream) would resolve `/free/../paid` after pricing saw a path no route matches."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from urllib.parse import quote, unquote

import httpx
import structlog
from starlette.types import Receive, Scope, Send

from . import reasons
from .responses import send_error

log = structlog.get_logger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
PAYMENT_REQUEST_HEADERS = frozenset({"payment-signature", "x-payment"})
# Where the request came from is the gateway's to say (from the connection, which uvicorn already took from
# trusted proxies' X-Forwarded-*): a client's own claim would reach the upstream as the gateway's word.
CLIENT_ORIGIN_HEADERS = frozenset({"forwarded", "x-real-ip"})
# Only the gateway speaks x402 to the client: an upstream's own payment headers would contradict it.
PAYMENT_RESPONSE_HEADERS = frozenset(
    {"payment-required", "payment-response", "x-payment-response", "x-challenge-id", "x-challenge-expires-at"}
)


# Encoded '.', '/' and '\\' would be decoded by some upstreams into dot segments or separators the pricing
# never saw; control characters (NUL above all) end a path early in others.
_AMBIGUOUS = re.compile(rb"%(?:2e|2f|5c|[01][0-9a-f]|7f)|[\\\x00-\x1f\x7f]", re.IGNORECASE)


class PathRejected(ValueError):
    """A path the gateway will not price: the upstream could read it as another path."""


def normalize_path(raw_path: bytes) -> bytes:
    """The raw (still percent-encoded) path with dot segments resolved and repeated slashes merged, as it
    is priced and forwarded. Idempotent. Raises PathRejected. Pure."""
    if not raw_path.startswith(b"/"):
        raise PathRejected("the path must start with '/'")
    if _AMBIGUOUS.search(raw_path):
        raise PathRejected(
            "the path may not carry an encoded '.', '/' or '\\' (%2e, %2f, %5c), a backslash or a control "
            "character"
        )
    segments = raw_path.split(b"/")[1:]
    kept: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if not kept:
                raise PathRejected("the path climbs above the root ('..')")
            kept.pop()
        elif segment not in (b"", b"."):
            kept.append(segment)
    trailing = bool(kept) and segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")


def normalized_scope(scope: Scope) -> Scope:
    """`scope` with its path and raw_path normalised together (see normalize_path); raises PathRejected."""
    raw = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    clean = normalize_path(raw)
    if clean == raw and "raw_path" in scope:
        return scope
    return {**scope, "raw_path": clean, "path": unquote(clean.decode("latin-1"))}


def _connection_listed(headers: Iterable[tuple[str, str]]) -> set[str]:
    listed: set[str] = set()
    for name, value in headers:
        if name == "connection":
            listed |= {v.strip().lower() for v in value.split(",") if v.strip()}
    return listed


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client: str | None,
    scheme: str,
    forward_authorization: bool,
) -> list[tuple[str, str]]:
    """The client's headers as the upstream should see them. Pure."""
    decoded = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers]
    drop = HOP_BY_HOP | PAYMENT_REQUEST_HEADERS | CLIENT_ORIGIN_HEADERS | {"host"}
    drop = drop | _connection_listed(decoded)
    if not forward_authorization:
        drop = drop | {"authorization"}
    out = [(n, v) for n, v in decoded if n not in drop and not n.startswith("x-forwarded-")]
    if client:
        out.append(("x-forwarded-for", client))
    out.append(("x-forwarded-proto", scheme))
    host = dict(decoded).get("host")
    if host is not None:
        out.append(("x-forwarded-host", host))
    return out


def client_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client should see them. Pure."""
    decoded = [(n.lower(), v) for n, v in headers]
    drop = HOP_BY_HOP | PAYMENT_RESPONSE_HEADERS | _connection_listed(decoded)
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in decoded if n not in drop]


class ProxyApp:
    """Forwards every request to `upstream` (a base URL; its path is a prefix)."""

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = 60.0,
        forward_authorization: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.forward_authorization = forward_authorization
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,  # redirects are the client's to follow, with the gateway in front
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        try:
            if normalize_path(raw_path) != raw_path:
                # Priced on another path than the one it would reach: scopes come through normalized_scope.
                raise PathRejected("the path was not normalised before it was priced")
        except PathRejected as exc:
            await send_error(send, 400, reasons.INVALID_PATH, str(exc))
            return
        query = scope.get("query_string", b"")
        url = self.upstream + raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        client = scope.get("client")
        headers = upstream_request_headers(
            scope["headers"],
            client=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            forward_authorization=self.forward_authorization,
        )
        # Only requests that carry a body stream one: an empty chunked body on a GET confuses some servers.
        has_body = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in scope["headers"])
        request = self._http.build_request(
            scope["method"], url, headers=headers, content=_body(receive) if has_body else None
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("upstream_unavailable", url=url, error=repr(exc))
            await send_error(
                send, 502, reasons.UPSTREAM_UNAVAILABLE, f"the upstream could not be reached: {exc!r}"
            )
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": client_response_headers(response.headers.multi_items()),
                }
            )
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
