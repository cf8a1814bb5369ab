"""Pure parts of the payment flow: challenge states, requirement building, payment headers, matching,
gateway header filtering, and the facilitator client's failover (against local HTTP servers)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.signing import pay_v1, pay_v2
from resource_server.challenges.matching import Match, Refusal, match_v1, match_v2
from resource_server.challenges.records import Challenge
from resource_server.challenges.requirements import requirements_v1, requirements_v2
from resource_server.challenges.states import (
    ALLOWED,
    ChallengeStatus,
    IllegalTransition,
    SettleMove,
    check_transition,
    move_for,
)
from resource_server.facilitator_client import (
    FacilitatorBadResponse,
    FacilitatorClient,
    FacilitatorUnavailable,
)
from resource_server.gateway import client_response_headers, upstream_request_headers
from resource_server.payment_headers import PaymentHeaderError, read_payment
from resource_server.pricing.engine import quote
from resource_server.pricing.loader import parse_pricing
from shared.x402.codec import encode_json_header
from shared.x402.models import PaymentRequirementsV1, PaymentRequirementsV2, SettleResponse

PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
S = ChallengeStatus


def test_state_machine():
    check_transition(S.ISSUED, S.VERIFIED)
    check_transition(S.VERIFIED, S.SETTLEMENT_PENDING)
    check_transition(S.SETTLEMENT_PENDING, S.SETTLED)
    for terminal in (S.SETTLED, S.FAILED, S.RELEASED, S.EXPIRED):
        assert terminal.terminal
        assert not any(current is terminal for current, _ in ALLOWED)
    for illegal in (
        (S.ISSUED, S.SETTLED),
        (S.VERIFIED, S.ISSUED),
        (S.EXPIRED, S.VERIFIED),
        (S.SETTLED, S.RELEASED),
    ):
        with pytest.raises(IllegalTransition):
            check_transition(*illegal)
    assert [s for s in S if s.payable] == [S.ISSUED]


def test_a_settle_answer_moves_a_paid_challenge_the_same_way_wherever_it_is_read():
    def answer(success: bool, reason: str | None = None) -> SettleResponse:
        return SettleResponse(
            success=success, error_reason=reason, transaction="0xab", network="eip155:84532"
        )

    assert move_for(answer(True)) == SettleMove(S.SETTLED, "settled")
    assert move_for(answer(False, "settlement_pending")) == SettleMove(
        S.SETTLEMENT_PENDING, "settlement_pending"
    )
    assert move_for(answer(False, "insufficient_funds")) == SettleMove(
        S.FAILED, "settle_failed", "insufficient_funds"
    )
    # A refusal without a reason still records one.
    assert move_for(answer(False)) == SettleMove(S.FAILED, "settle_failed", "settlement_failed")
    for move in (move_for(answer(True)), move_for(answer(False))):
        assert (S.VERIFIED, move.status) in ALLOWED


# -- requirements and challenges ----------------------------------------------------------------------------


def render_quote(duration: int = 12) -> Any:
    pricing = parse_pricing(
        {
            "defaults": {
                "pay_to": PAY_TO,
                "accepts": [{"network": "eip155:84532"}, {"network": "eip155:8453"}],
            },
            "routes": [
                {
                    "method": "POST",
                    "path": "/render",
                    "description": "Render",
                    "params": {"duration": {"type": "integer", "min": 1}},
                    "price": {"base": "$0.001", "factors": [{"param": "duration"}]},
                }
            ],
        }
    )
    route = pricing.routes[0]
    return quote(route, {"duration": duration})


def challenge(
    *,
    cid: str = "a" * 32,
    duration: int = 12,
    status: ChallengeStatus = S.ISSUED,
    expires_in: float = 60,
    route: str = "POST /render",
) -> Challenge:
    q = render_quote(duration)
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=expires_in)
    return Challenge(
        id=cid,
        route=route,
        resource="http://test/render",
        params={"duration": duration},
        params_hash=q.params_hash,
        price=q.breakdown(),
        requirements=requirements_v2(q, challenge_id=cid, expires_at=int(expires.timestamp())),
        requirements_v1=requirements_v1(q, resource="http://test/render", challenge_id=cid, expires_at=0),
        status=status,
        issued_at=now,
        expires_at=expires,
        now=now,
    )


def test_requirements_carry_the_challenge_and_token_domain():
    q = render_quote()
    v2 = requirements_v2(q, challenge_id="c" * 32, expires_at=1_900_000_000)
    assert [r["network"] for r in v2] == ["eip155:84532", "eip155:8453"]
    assert v2[0] == {
        "scheme": "exact",
        "network": "eip155:84532",
        "amount": "12000",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {
            "name": "USDC",
            "version": "2",
            "challengeId": "c" * 32,
            "challengeExpiresAt": 1_900_000_000,
        },
    }
    assert v2[1]["extra"]["name"] == "USD Coin"  # Base mainnet's EIP-712 name differs
    v1 = requirements_v1(q, resource="http://x/render", challenge_id="c" * 32, expires_at=1)
    assert [(r["network"], r["maxAmountRequired"], r["resource"]) for r in v1] == [
        ("base-sepolia", "12000", "http://x/render"),
        ("base", "12000", "http://x/render"),
    ]
    assert v1[0]["description"] == "Render" and v1[0]["mimeType"] == "application/json"


# -- payment headers ----------------------------------------------------------------------------------------


def v2_payment(requirement: dict[str, Any]) -> dict[str, str]:
    payload = pay_v2(PAYER_KEY, PAYER, PaymentRequirementsV2.model_validate(requirement))
    return {"payment-signature": encode_json_header(payload)}


def v1_payment(requirement: dict[str, Any]) -> dict[str, str]:
    payload = pay_v1(PAYER_KEY, PAYER, PaymentRequirementsV1.model_validate(requirement))
    return {"x-payment": encode_json_header(payload)}


def test_read_payment_v2_and_v1():
    c = challenge()
    attempt = read_payment(v2_payment(c.requirements[0]))
    assert attempt is not None
    assert (attempt.version, attempt.challenge_id, attempt.payer, attempt.value) == (2, c.id, PAYER, 12000)
    assert attempt.accepted == c.requirements[0] and attempt.response_header == "PAYMENT-RESPONSE"
    legacy = read_payment(v1_payment(c.requirements_v1[0]))
    assert legacy is not None
    assert (legacy.version, legacy.network, legacy.challenge_id) == (1, "base-sepolia", None)
    assert legacy.response_header == "X-PAYMENT-RESPONSE"
    assert read_payment({}) is None
    # The JSON's version decides, whichever header carried it.
    moved = read_payment({"payment-signature": v1_payment(c.requirements_v1[0])["x-payment"]})
    assert moved is not None and moved.version == 1


def test_read_payment_refuses_garbage_with_reasons():
    c = challenge()
    good = orjson.loads(base64.b64decode(v2_payment(c.requirements[0])["payment-signature"]))
    auth = good["payload"]["authorization"]

    def enc(value: Any) -> str:
        return base64.b64encode(orjson.dumps(value)).decode()

    cases = {
        "not valid base64": "@@@",
        "does not decode to JSON": base64.b64encode(b"{").decode(),
        "must be an object": enc([1]),
        "x402Version must be 1 or 2": enc({**good, "x402Version": 7}),
        "not an x402 exact/EVM payment": enc({**good, "payload": {"permit2Authorization": {}}}),
        "authorization.value": enc(
            {**good, "payload": {**good["payload"], "authorization": {**auth, "value": "-1"}}}
        ),
        "nonce": enc({**good, "payload": {**good["payload"], "authorization": {**auth, "nonce": "0x00"}}}),
        "signature": enc({**good, "payload": {**good["payload"], "signature": "0x1234"}}),
        "20-byte hex address": enc(
            {**good, "payload": {**good["payload"], "authorization": {**auth, "to": "0x1"}}}
        ),
        "limit": "A" * 9000,
    }
    for expected, value in cases.items():
        with pytest.raises(PaymentHeaderError) as err:
            read_payment({"payment-signature": value})
        assert expected in str(err.value) and str(err.value).startswith("PAYMENT-SIGNATURE"), str(err.value)


# -- matching -----------------------------------------------------------------------------------------------


def attempt_for(c: Challenge, index: int = 0):
    a = read_payment(v2_payment(c.requirements[index]))
    assert a is not None
    return a


def test_match_v2_accepts_exact_echo_and_refuses_everything_else():
    c = challenge()
    a = attempt_for(c)
    found = match_v2(a, c, route_key=c.route, params_hash=c.params_hash)
    assert isinstance(found, Match) and found.requirement == c.requirements[0]
    assert (found.key.chain_id, found.key.payer, found.key.nonce) == (84532, PAYER, a.nonce)

    def refused(result: Match | Refusal) -> str:
        assert isinstance(result, Refusal), result
        return result.reason

    assert refused(match_v2(a, None, route_key=c.route, params_hash=c.params_hash)) == "challenge_unknown"
    expensive = challenge(duration=100)
    assert (
        refused(match_v2(a, c, route_key=c.route, params_hash=expensive.params_hash)) == "challenge_mismatch"
    )
    assert refused(match_v2(a, c, route_key="GET /other", params_hash=c.params_hash)) == "challenge_mismatch"
    tampered = {**c.requirements[0], "amount": "1"}
    cheap = read_payment(v2_payment(tampered))
    assert cheap is not None
    assert (
        refused(match_v2(cheap, c, route_key=c.route, params_hash=c.params_hash)) == "requirements_mismatch"
    )
    old = challenge(expires_in=-1)
    result = match_v2(attempt_for(old), old, route_key=old.route, params_hash=old.params_hash)
    assert isinstance(result, Refusal) and result.reason == "challenge_expired" and result.expired == old
    used = challenge(status=S.SETTLED)
    assert (
        refused(match_v2(a, used, route_key=c.route, params_hash=c.params_hash)) == "challenge_already_used"
    )
    no_id = read_payment(v2_payment({**c.requirements[0], "extra": {"name": "USDC", "version": "2"}}))
    assert no_id is not None
    assert refused(match_v2(no_id, c, route_key=c.route, params_hash=c.params_hash)) == "challenge_unknown"


def test_match_v1_takes_the_newest_open_challenge_of_the_same_price():
    newest, older = challenge(cid="1" * 32), challenge(cid="2" * 32)
    a = read_payment(v1_payment(older.requirements_v1[0]))
    assert a is not None
    found = match_v1(a, [newest, older], route_key=newest.route, params_hash=newest.params_hash)
    assert isinstance(found, Match) and found.challenge.id == newest.id

    expired = challenge(cid="3" * 32, expires_in=-1)
    late = match_v1(a, [expired], route_key=expired.route, params_hash=expired.params_hash)
    assert isinstance(late, Refusal) and late.reason == "challenge_expired" and late.expired == expired

    pricier = challenge(cid="4" * 32, duration=13)
    none = match_v1(a, [pricier], route_key=pricier.route, params_hash=pricier.params_hash)
    assert isinstance(none, Refusal) and none.reason == "no_matching_challenge"
    # Base mainnet's v1 requirement does not fit a base-sepolia payment.
    mainnet = read_payment(v1_payment(older.requirements_v1[1]))
    assert mainnet is not None
    found = match_v1(mainnet, [newest], route_key=newest.route, params_hash=newest.params_hash)
    assert isinstance(found, Match) and found.requirement["network"] == "base" and found.key.chain_id == 8453


# -- gateway headers ----------------------------------------------------------------------------------------


def test_gateway_header_filters():
    incoming = [
        (b"Host", b"gateway.example"),
        (b"Content-Type", b"application/json"),
        (b"Authorization", b"Bearer secret"),
        (b"PAYMENT-SIGNATURE", b"x"),
        (b"X-Payment", b"y"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"hop"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"X-Forwarded-Host", b"trusted.internal"),
        (b"X-Forwarded-Proto", b"http"),
        (b"Forwarded", b"for=10.0.0.1"),
        (b"X-Real-IP", b"10.0.0.1"),
        (b"Accept", b"*/*"),
        (b"Cookie", b"session=abc"),
    ]
    out = dict(
        upstream_request_headers(incoming, client="192.0.2.7", scheme="https", forward_authorization=False)
    )
    # Where the request came from is said by the connection (uvicorn resolves trusted proxies into it),
    # never by the client's own X-Forwarded-*; cookies are the upstream's business and pass.
    assert out == {
        "content-type": "application/json",
        "accept": "*/*",
        "cookie": "session=abc",
        "x-forwarded-for": "192.0.2.7",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "gateway.example",
    }
    kept = dict(upstream_request_headers(incoming, client=None, scheme="http", forward_authorization=True))
    assert kept["authorization"] == "Bearer secret"

    back = client_response_headers(
        [
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "gzip"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("PAYMENT-RESPONSE", "forged"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    assert back == [
        (b"content-type", b"text/plain"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


# -- facilitator client -------------------------------------------------------------------------------------

VALID = {"isValid": True, "payer": PAYER}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def facilitators(routes: dict[str, Handler]) -> AsyncIterator[Callable[[str], str]]:
    """One local HTTP server; `routes` maps a path prefix ("/a") to the handler of everything under it.
    Yields base_url(prefix)."""
    app = web.Application()
    for prefix, handler in routes.items():
        app.router.add_route("*", prefix + "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield lambda prefix: str(server.make_url(prefix))
    finally:
        await server.close()


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def answer(status: int, body: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if isinstance(body, bytes):
            return web.Response(status=status, body=body)
        return web.json_response(body, status=status)

    return handler


async def test_failover_on_connection_errors_timeouts_and_5xx():
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        assert request.headers["authorization"] == "Bearer k"
        body = orjson.loads(await request.read())
        assert body["x402Version"] == 2 and body["paymentRequirements"] == {"r": 1}
        if request.path.startswith("/b/"):
            return web.json_response({"error": "chain unavailable"}, status=503)
        return web.json_response(VALID)

    async with facilitators({"/b": handler, "/c": handler}) as url:
        client = FacilitatorClient([dead_url(), url("/b"), url("/c") + "/"], api_key="k")
        answer_ = await client.verify({"x402Version": 2}, {"r": 1})
        assert answer_.is_valid and seen == ["/b/verify", "/c/verify"]
        await client.aclose()


async def test_unavailable_says_whether_anything_may_have_been_sent():
    client = FacilitatorClient([dead_url(), dead_url()])
    with pytest.raises(FacilitatorUnavailable) as err:
        await client.settle({"x402Version": 2}, {})
    assert not err.value.maybe_delivered and len(err.value.failures) == 2
    await client.aclose()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.0)
        return web.json_response({"success": True})

    async def cut(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.close()  # the connection drops before any answer
        return web.Response()

    async with facilitators({"/slow": slow, "/cut": cut, "/busy": answer(502, b"bad gateway")}) as url:
        for sent in ("/slow", "/cut", "/busy"):
            client = FacilitatorClient([url(sent), dead_url()], timeout=0.3, settle_timeout=0.3)
            with pytest.raises(FacilitatorUnavailable) as err:
                await client.verify({"x402Version": 2}, {})
            assert err.value.maybe_delivered, sent
            assert len(err.value.failures) == 2 and "cannot connect" in err.value.failures[1]
            # A settle that may have been received goes nowhere else: a second facilitator would find the
            # authorization used by the first one's transfer and answer a failure for a charged payment.
            with pytest.raises(FacilitatorUnavailable) as err:
                await client.settle({"x402Version": 2}, {})
            assert err.value.maybe_delivered, sent
            assert len(err.value.failures) == 1 and err.value.failures[0].startswith(url(sent)), sent
            await client.aclose()


async def test_malformed_answers_and_refusals():
    routes = {
        "/a": answer(200, b"<html>"),
        "/b": answer(200, {"isValid": "perhaps"}),
        "/c": answer(401, {"error": "missing or invalid API key"}),
        "/d": answer(400, {"isValid": False, "invalidReason": "invalid_payload"}),
    }
    async with facilitators(routes) as url:
        for prefix in routes:
            client = FacilitatorClient([url(prefix), url("/d")])
            if prefix == "/d":
                # A protocol answer in a 4xx is still an answer (as the TypeScript client reads it).
                verdict = await client.verify({"x402Version": 2}, {})
                assert verdict.invalid_reason == "invalid_payload"
            else:
                # Not retried elsewhere: the facilitator answered.
                with pytest.raises(FacilitatorBadResponse):
                    await client.verify({"x402Version": 2}, {})
            await client.aclose()


async def test_redirects_are_followed_with_the_body():
    # The public x402.org facilitator answers with a 308 to its canonical URL.
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("/new" + request.path.removeprefix("/old"))

    async def new(request: web.Request) -> web.StreamResponse:
        assert request.headers["authorization"] == "Bearer k"  # same origin: the key goes along
        assert orjson.loads(await request.read())["paymentRequirements"] == {"r": 2}
        return web.json_response({"success": True, "transaction": "0xab", "network": "eip155:8453"})

    async with facilitators({"/old": moved, "/new": new}) as url:
        client = FacilitatorClient([url("/old")], api_key="k")
        settled = await client.settle({"x402Version": 2}, {"r": 2})
        assert settled.success and settled.transaction == "0xab"
        await client.aclose()


def test_decimal_params_hash_does_not_depend_on_spelling():
    a = render_quote(12)
    assert a.params == {"duration": 12} and a.total == Decimal("0.012")
