"""The resource server's own answers, as raw ASGI sends: 402 challenges (v2 header and v1 body at once),
JSON errors, and header edits on the handler's response."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from starlette.types import Message, Send

from shared.x402.codec import encode_json_header

from .challenges.records import Challenge
from .challenges.requirements import payment_required_v1, payment_required_v2, resource_info
from .payment_headers import CHALLENGE_EXPIRES_HEADER, CHALLENGE_ID_HEADER, EXPOSE_HEADERS, PAYMENT_REQUIRED
from .pricing.model import Route

Headers = list[tuple[bytes, bytes]]


def expose_header() -> tuple[bytes, bytes]:
    return b"access-control-expose-headers", EXPOSE_HEADERS.encode()


def challenge_headers(challenge: Challenge) -> Headers:
    return [
        (CHALLENGE_ID_HEADER.lower().encode(), challenge.id.encode()),
        (CHALLENGE_EXPIRES_HEADER.lower().encode(), str(challenge.expires_at_unix).encode()),
    ]


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                expose_header(),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, status: int, error: str, message: str, **extra: Any) -> None:
    headers: Headers = [(b"retry-after", b"2")] if status == 503 else []
    await send_json(send, status, {"error": error, "message": message, **extra}, headers)


async def send_payment_required(
    send: Send,
    challenge: Challenge,
    route: Route,
    *,
    error: str,
    message: str,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """402 with the v2 `PAYMENT-REQUIRED` header and the v1 PaymentRequirementsResponse body, so clients of
    either generation can pay; `message` (a sentence for people) rides in the body next to the v1 fields."""
    v2 = payment_required_v2(challenge.requirements, resource_info(route, challenge.resource), error)
    v1 = payment_required_v1(challenge.requirements_v1, error).to_wire()
    body = {
        **v1,
        "message": message,
        "challengeId": challenge.id,
        "challengeExpiresAt": challenge.expires_at_unix,
    }
    headers = [
        (PAYMENT_REQUIRED.lower().encode(), encode_json_header(v2).encode()),
        *challenge_headers(challenge),
        *extra_headers,
    ]
    await send_json(send, 402, body, headers)


def with_headers(message: Message, extra: Sequence[tuple[bytes, bytes]]) -> Message:
    """A response start with headers added, replacing any the handler set under the same names."""
    names = {name.lower() for name, _ in extra}
    kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
    return {**message, "headers": [*kept, *extra]}
