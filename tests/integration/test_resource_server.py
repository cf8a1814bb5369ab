"""The resource server end to end: our facilitator over HTTP, the dev chain's real USDC, real PostgreSQL.

Every paid test checks balances on-chain; every refused one checks that nothing moved."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import orjson
import pytest
from eth_account.signers.local import LocalAccount
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client.signing import pay_v1, pay_v2
from resource_server.demo import DEMO_ROUTES
from shared.devchain.chain import DevChain
from shared.evm import calls
from shared.x402 import reasons
from shared.x402.codec import decode_model_header, encode_json_header
from shared.x402.models import (
    PaymentRequiredV1,
    PaymentRequiredV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
    SettleResponse,
)
from tests.fixtures.facilitator import RunningFacilitator, StartFacilitator, free_port
from tests.fixtures.resource_server import (
    ADMIN_KEY,
    RunningResourceServer,
    StartResourceServer,
    pricing_defaults,
)
from tests.support.payments import new_address

pytestmark = pytest.mark.integration

NETWORK = "eip155:84532"
FUNDS = 1_000_000
WEATHER_PRICE = 1_000  # $0.001
ITEM_PRICE = 2_500


def pricing_toml(pay_to: str) -> str:
    return (
        pricing_defaults(pay_to, NETWORK)
        + f"""
[[routes]]
method = "GET"
path = "/weather"
price = "$0.001"
description = "Current weather"

[[routes]]
method = "GET"
path = "/items/{{id}}"
price = {{ atomic = "{ITEM_PRICE}", token = "USDC" }}
settlement = "before"
[routes.params.id]
type = "integer"
min = 1

[[routes]]
method = "POST"
path = "/render"
description = "Render a clip"
[routes.params.duration]
type = "integer"
min = 1
max = 600
[routes.params.resolution]
type = "enum"
values = ["480p", "1080p"]
default = "480p"
[routes.price]
base = "$0.0004"
factors = [{{ param = "duration" }}, {{ param = "resolution", table = {{ "480p" = "1", "1080p" = "2.25" }} }}]
markup_percent = "10"
markup = "$0.002"

[[routes]]
method = "GET"
path = "/boom"
price = "$0.001"

[[routes]]
method = "GET"
path = "/fail"
price = "$0.001"
"""
    )


async def boom(request: Request) -> Response:
    raise RuntimeError("the handler broke")


async def fail(request: Request) -> Response:
    return JSONResponse({"error": "upstream model unavailable"}, status_code=500)


HANDLERS = [*DEMO_ROUTES, Route("/boom", boom), Route("/fail", fail)]


# -- helpers ------------------------------------------------------------------------------------------------


def challenge_of(response: httpx.Response) -> tuple[PaymentRequiredV2, PaymentRequiredV1]:
    assert response.status_code == 402, f"HTTP {response.status_code}: {response.text}"
    v2 = decode_model_header(response.headers["payment-required"], PaymentRequiredV2)
    v1 = PaymentRequiredV1.model_validate(response.json())
    return v2, v1


def v2_header(payer: LocalAccount, requirements: PaymentRequirementsV2) -> dict[str, str]:
    payload = pay_v2(payer.key.hex(), payer.address, requirements)
    return {"PAYMENT-SIGNATURE": encode_json_header(payload)}


def v1_header(payer: LocalAccount, requirements: PaymentRequirementsV1) -> dict[str, str]:
    payload = pay_v1(payer.key.hex(), payer.address, requirements)
    return {"X-PAYMENT": encode_json_header(payload)}


def settlement(response: httpx.Response, header: str = "payment-response") -> SettleResponse:
    return decode_model_header(response.headers[header], SettleResponse)


def authorization_used(chain: DevChain, header_value: str) -> bool:
    payload = orjson.loads(base64.b64decode(header_value))
    auth = payload["payload"]["authorization"]
    data = chain.rpc.eth_call(
        chain.usdc.address, calls.authorization_state(auth["from"], bytes.fromhex(auth["nonce"][2:]))
    )
    return calls.decode_bool(data)


@pytest.fixture
def payer(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.new_payer(FUNDS)


@pytest.fixture
def pay_to() -> str:
    return new_address()


async def start_rs(
    start_resource_server: StartResourceServer,
    facilitator: RunningFacilitator,
    pay_to: str,
    **overrides: Any,
) -> RunningResourceServer:
    """This module's pricing and handlers, paid through `facilitator`; `overrides` are server settings."""
    return await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], handlers=HANDLERS, **overrides
    )


@pytest.fixture
async def rs(
    start_resource_server: StartResourceServer, facilitator: RunningFacilitator, pay_to: str
) -> RunningResourceServer:
    return await start_rs(start_resource_server, facilitator, pay_to)


async def challenge_row(rs: RunningResourceServer, challenge_id: str) -> dict[str, Any]:
    row = await rs.runtime.store.pool.fetchrow("SELECT * FROM rs_challenges WHERE id = $1", challenge_id)
    assert row is not None
    return dict(row)


# -- tests --------------------------------------------------------------------------------------------------


async def test_unpaid_request_gets_both_challenge_generations_and_a_stored_challenge(rs, pay_to):
    response = await rs.get("/weather?city=Porto")
    v2, v1 = challenge_of(response)

    assert v2.x402_version == 2 and v2.error == "payment_required"
    assert v2.resource.url == rs.url + "/weather?city=Porto"
    assert v2.resource.description == "Current weather"
    [req] = v2.accepts
    assert (req.scheme, req.network, req.amount, req.pay_to) == ("exact", NETWORK, str(WEATHER_PRICE), pay_to)
    assert req.extra is not None and (req.extra["name"], req.extra["version"]) == ("USDC", "2")
    challenge_id = req.extra["challengeId"]

    assert v1.x402_version == 1 and v1.error == "payment_required"
    [legacy] = v1.accepts
    assert (legacy.network, legacy.max_amount_required, legacy.pay_to) == ("base-sepolia", "1000", pay_to)
    assert legacy.resource == rs.url + "/weather?city=Porto"
    assert legacy.extra is not None and legacy.extra["challengeId"] == challenge_id

    expose = response.headers["access-control-expose-headers"]
    for name in ("PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"):
        assert name in expose
    assert response.headers["x-challenge-id"] == challenge_id
    assert int(response.headers["x-challenge-expires-at"]) == req.extra["challengeExpiresAt"]

    head = await rs.request("HEAD", "/weather")  # HEAD runs the GET handler: it is priced the same
    assert head.status_code == 402 and "payment-required" in head.headers

    row = await challenge_row(rs, challenge_id)
    assert row["status"] == "issued" and row["route"] == "GET /weather"
    assert row["requirements"] == [req.to_wire()]
    assert row["expires_at"] > row["issued_at"]


async def test_v2_payment_is_served_settled_and_audited(dev_chain, rs, payer, pay_to):
    v2, _ = challenge_of(await rs.get("/weather"))
    response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))

    assert response.status_code == 200, response.text
    assert response.json()["report"] == "sunny"
    settled = settlement(response)
    assert settled.success and settled.network == NETWORK and settled.payer == payer.address
    assert dev_chain.balance_of(payer.address) == FUNDS - WEATHER_PRICE
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE

    challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    row = await challenge_row(rs, challenge_id)
    assert (row["status"], row["tx_hash"], row["payer"]) == ("settled", settled.transaction, payer.address)

    for query in (f"challenge={challenge_id}", f"payer={payer.address}", f"tx={settled.transaction}"):
        audit = await rs.get(f"/audit?{query}", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert audit.status_code == 200, audit.text
        events = [e["event"] for e in audit.json()["events"]]
        assert events == ["payment_received", "verified", "settled"], (query, events)
    assert (await rs.get(f"/audit?challenge={challenge_id}")).status_code == 401


async def test_v1_payment_is_served_and_settled(dev_chain, rs, payer, pay_to):
    _, v1 = challenge_of(await rs.get("/weather"))
    response = await rs.get("/weather", headers=v1_header(payer, v1.accepts[0]))

    assert response.status_code == 200, response.text
    assert "payment-response" not in response.headers
    settled = settlement(response, "x-payment-response")
    assert settled.success and settled.network == "base-sepolia" and settled.payer == payer.address
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE
    row = await challenge_row(rs, v1.accepts[0].extra["challengeId"])  # type: ignore[index]
    assert (row["status"], row["x402_version"]) == ("settled", 1)


async def test_a_cheap_challenge_does_not_pay_for_expensive_parameters(dev_chain, rs, payer, pay_to):
    cheap_v2, cheap_v1 = challenge_of(await rs.post("/render", json={"duration": 1}))
    assert cheap_v2.accepts[0].amount == "2440"  # 0.0004 × 1 × 1 × 1.1 + 0.002

    expensive = {"duration": 100, "resolution": "1080p"}
    swapped = await rs.post("/render", json=expensive, headers=v2_header(payer, cheap_v2.accepts[0]))
    v2, _ = challenge_of(swapped)
    assert v2.error == "challenge_mismatch", swapped.json()
    assert v2.accepts[0].amount == "101000"  # a fresh challenge at the right price: 0.0004×100×2.25×1.1+0.002

    swapped_v1 = await rs.post("/render", json=expensive, headers=v1_header(payer, cheap_v1.accepts[0]))
    assert challenge_of(swapped_v1)[0].error == "no_matching_challenge", swapped_v1.json()

    # Editing the amount inside `accepted` (challenge id kept) is refused too.
    edited = cheap_v2.accepts[0].model_copy(update={"amount": "1"})
    tampered = await rs.post("/render", json={"duration": 1}, headers=v2_header(payer, edited))
    assert challenge_of(tampered)[0].error == "requirements_mismatch", tampered.json()

    assert dev_chain.balance_of(payer.address) == FUNDS
    assert dev_chain.balance_of(pay_to) == 0


async def test_dynamic_price_is_paid_as_quoted(dev_chain, rs, payer, pay_to):
    params = {"duration": 12, "resolution": "1080p"}
    quoted = await rs.post("/quote", json={"method": "POST", "path": "/render", "params": params})
    assert quoted.status_code == 200, quoted.text
    body = quoted.json()
    assert body["route"] == "POST /render"
    assert body["params"] == params
    price = body["price"]
    assert (price["unit"], price["base"], price["markupPercent"], price["markup"]) == (
        "USD",
        "0.0004",
        "10",
        "0.002",
    )
    assert [(f["param"], f["multiplier"], f["subtotal"]) for f in price["factors"]] == [
        ("duration", "12", "0.0048"),
        ("resolution", "2.25", "0.0108"),
    ]
    assert price["total"] == "0.01388"
    assert price["amounts"][0]["amount"] == "13880" and price["amounts"][0]["roundedUp"] is False
    required = PaymentRequiredV2.model_validate(body["paymentRequired"])
    legacy = PaymentRequiredV1.model_validate(body["paymentRequiredV1"])
    assert required.accepts[0].amount == legacy.accepts[0].max_amount_required == "13880"
    assert required.accepts[0].extra["challengeId"] == body["challenge"]["id"]  # type: ignore[index]
    assert required.resource.url == rs.url + "/render"

    # The quote's requirements pay the request directly, without a 402 first.
    response = await rs.post("/render", json=params, headers=v2_header(payer, required.accepts[0]))
    assert response.status_code == 200, response.text
    assert response.json()["resolution"] == "1080p"
    assert settlement(response).success
    assert dev_chain.balance_of(pay_to) == 13_880


async def test_pricing_lists_routes_and_quote_refuses_bad_input(rs, pay_to):
    listing = (await rs.get("/pricing")).json()
    routes = {f"{r['method']} {r['path']}": r for r in listing["routes"]}
    assert set(routes) == {"GET /weather", "GET /items/{id}", "POST /render", "GET /boom", "GET /fail"}
    weather = routes["GET /weather"]
    assert weather["price"] == {"type": "fixed", "unit": "USD", "amount": "0.001"}
    [option] = weather["accepts"]
    assert (option["network"], option["v1Network"], option["amount"], option["payTo"]) == (
        NETWORK,
        "base-sepolia",
        "1000",
        pay_to,
    )
    render = routes["POST /render"]
    assert render["price"]["type"] == "dynamic"
    assert render["params"]["duration"] == {
        "type": "integer",
        "in": "body",
        "required": True,
        "minimum": "1",
        "maximum": "600",
    }
    assert render["params"]["resolution"]["enum"] == ["480p", "1080p"]
    assert routes["GET /items/{id}"]["settlement"] == "before"

    async def quote(body: Any) -> httpx.Response:
        response: httpx.Response = await rs.post("/quote", json=body)
        return response

    assert (await quote({"method": "GET", "path": "/nothing"})).status_code == 404
    bad = await quote({"method": "POST", "path": "/render", "params": {"duration": 0}})
    assert (bad.status_code, bad.json()["error"], bad.json()["param"]) == (400, "invalid_params", "duration")
    bad = await quote({"method": "POST", "path": "/render", "params": {"duration": 5, "resolution": "8k"}})
    assert bad.status_code == 400 and "480p, 1080p" in bad.json()["message"]
    assert (await quote({"method": "POST", "path": "/render"})).json()["param"] == "duration"
    assert (await quote(["not", "an", "object"])).status_code == 400
    # The same validation guards the priced route itself, before any challenge.
    direct = await rs.post("/render", json={"duration": "many"})
    assert (direct.status_code, direct.json()["error"]) == (400, "invalid_params")
    assert (await rs.get("/items/0")).status_code == 400


async def test_ambiguous_or_malformed_parameters_are_400_not_500(rs):
    # A key given twice: the handler could read another value than the one priced.
    twice = await rs.post(
        "/render", content=b'{"duration": 1, "duration": 600}', headers={"content-type": "application/json"}
    )
    assert (twice.status_code, twice.json()["error"], twice.json()["param"]) == (
        400,
        "invalid_params",
        "duration",
    )
    # An integer beyond 64 bits on a route without a maximum: refused, not failed while hashing it.
    huge = await rs.get("/items/99999999999999999999")
    assert (huge.status_code, huge.json()["error"], huge.json()["param"]) == (400, "invalid_params", "id")
    # Nested deeper than the recursion limit (the /quote body is limited to 64 KiB).
    for deep in (b"[" * 60_000, b'{"a":' * 12_000):
        response = await rs.post("/render", content=deep, headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["error"]) == (400, "invalid_params")
        quoted = await rs.post("/quote", content=deep)
        assert (quoted.status_code, quoted.json()["error"]) == (400, "invalid_request")


async def test_expired_challenge_gets_a_fresh_one(
    dev_chain, start_resource_server, facilitator, payer, pay_to
):
    rs = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], handlers=HANDLERS, challenge_ttl_seconds=1.0
    )
    old_v2, old_v1 = challenge_of(await rs.get("/weather"))
    v2_pay = v2_header(payer, old_v2.accepts[0])
    v1_pay = v1_header(payer, old_v1.accepts[0])
    await asyncio.sleep(1.3)

    # v1 first: v1 payments match any open challenge of the route and parameters, and the v2 refusal
    # below issues a fresh one, which this (valid, merely late) v1 payment would then rightly pay.
    late_v1 = await rs.get("/weather", headers=v1_pay)
    assert challenge_of(late_v1)[0].error == "challenge_expired", late_v1.json()

    late = await rs.get("/weather", headers=v2_pay)
    fresh, _ = challenge_of(late)
    assert fresh.error == "challenge_expired"
    assert "expired" in late.json()["message"]
    old_id = old_v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    assert fresh.accepts[0].extra["challengeId"] != old_id  # type: ignore[index]
    assert (await challenge_row(rs, old_id))["status"] == "expired"

    paid = await rs.get("/weather", headers=v2_header(payer, fresh.accepts[0]))
    assert paid.status_code == 200, paid.text
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE


async def test_a_payment_unlocks_one_request_across_replicas(
    dev_chain, start_resource_server, facilitator, payer, pay_to
):
    first = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], handlers=HANDLERS
    )
    second = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[facilitator.url], handlers=HANDLERS
    )

    v2, _ = challenge_of(await first.get("/weather"))
    payment = v2_header(payer, v2.accepts[0])
    assert (await first.get("/weather", headers=payment)).status_code == 200
    for replica in (first, second):
        again = await replica.get("/weather", headers=payment)
        assert challenge_of(again)[0].error == "payment_already_used", again.json()

    # Racing the same payment on both replicas at once: exactly one is served.
    v2, _ = challenge_of(await first.get("/weather"))
    racing = v2_header(payer, v2.accepts[0])
    answers = await asyncio.gather(
        first.get("/weather", headers=racing), second.get("/weather", headers=racing)
    )
    assert sorted(a.status_code for a in answers) == [200, 402], [a.text for a in answers]

    # v1 replays too (its challenge is found by parameters, not echoed).
    v1_payment = v1_header(payer, challenge_of(await second.get("/weather"))[1].accepts[0])
    assert (await second.get("/weather", headers=v1_payment)).status_code == 200
    challenge_of(await first.get("/weather"))  # another open challenge a replay could try to take
    replay = await first.get("/weather", headers=v1_payment)
    assert challenge_of(replay)[0].error == "payment_already_used", replay.json()

    # A challenge issued by the first replica and paid on the second: the first, which still holds the
    # challenge it issued, refuses a replay and another payment for it all the same.
    v2, _ = challenge_of(await first.get("/weather"))
    paid_elsewhere = v2_header(payer, v2.accepts[0])
    assert (await second.get("/weather", headers=paid_elsewhere)).status_code == 200
    replay = await first.get("/weather", headers=paid_elsewhere)
    assert challenge_of(replay)[0].error == "payment_already_used", replay.json()
    v2, _ = challenge_of(await first.get("/weather"))
    assert (await second.get("/weather", headers=v2_header(payer, v2.accepts[0]))).status_code == 200
    other = await first.get("/weather", headers=v2_header(payer, v2.accepts[0]))
    assert challenge_of(other)[0].error == "challenge_already_used", other.json()
    # Refused by the facilitator too (no funds): the database's answer comes first, as before verifying.
    v2, _ = challenge_of(await first.get("/weather"))
    assert (await second.get("/weather", headers=v2_header(payer, v2.accepts[0]))).status_code == 200
    broke = await first.get("/weather", headers=v2_header(dev_chain.new_payer(0), v2.accepts[0]))
    assert challenge_of(broke)[0].error == "challenge_already_used", broke.json()

    assert dev_chain.balance_of(pay_to) == 6 * WEATHER_PRICE
    assert dev_chain.balance_of(payer.address) == FUNDS - 6 * WEATHER_PRICE


async def test_a_refused_payment_is_audited_and_leaves_its_challenge_payable(dev_chain, rs, pay_to):
    v2, _ = challenge_of(await rs.get("/weather"))
    challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    refused = await rs.get("/weather", headers=v2_header(dev_chain.new_payer(0), v2.accepts[0]))
    again, _ = challenge_of(refused)
    assert again.error == reasons.INSUFFICIENT_BALANCE, refused.json()
    assert again.accepts[0].extra["challengeId"] == challenge_id  # type: ignore[index]
    events = [e.event for e in await rs.runtime.store.audit(challenge_id=challenge_id)]
    assert events == ["payment_received", "verify_refused"]

    funded = dev_chain.new_payer(FUNDS)
    assert (await rs.get("/weather", headers=v2_header(funded, v2.accepts[0]))).status_code == 200
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE


async def test_handler_failure_settles_nothing(dev_chain, rs, payer, pay_to):
    for path, body in (
        ("/boom", "Internal Server Error"),
        ("/fail", '{"error":"upstream model unavailable"}'),
    ):
        v2, _ = challenge_of(await rs.get(path))
        payment = v2_header(payer, v2.accepts[0])
        response = await rs.get(path, headers=payment)
        assert (response.status_code, response.text) == (500, body)
        assert "payment-response" not in response.headers
        assert not authorization_used(dev_chain, payment["PAYMENT-SIGNATURE"])
        row = await challenge_row(rs, v2.accepts[0].extra["challengeId"])  # type: ignore[index]
        assert row["status"] == "released", row
    # A released payment stays spent here: the client signs a new one (the old one never moves money).
    assert challenge_of(await rs.get("/fail", headers=payment))[0].error == "payment_already_used"
    assert dev_chain.balance_of(payer.address) == FUNDS
    assert dev_chain.balance_of(pay_to) == 0


async def test_settle_before_serving(dev_chain, rs, payer, pay_to):
    v2, _ = challenge_of(await rs.get("/items/7"))
    assert v2.accepts[0].amount == str(ITEM_PRICE)
    response = await rs.get("/items/7", headers=v2_header(payer, v2.accepts[0]))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "7"
    assert settlement(response).success
    assert dev_chain.balance_of(pay_to) == ITEM_PRICE
    # The challenge binds the parameters: item 7's challenge does not buy item 8.
    other = await rs.get("/items/8", headers=v2_header(payer, v2.accepts[0]))
    assert challenge_of(other)[0].error in ("challenge_mismatch", "payment_already_used")


async def test_facilitator_down_is_503_and_charges_nothing(dev_chain, start_resource_server, payer, pay_to):
    dead = f"http://127.0.0.1:{free_port()}"
    rs = await start_resource_server(pricing_toml(pay_to), facilitator_urls=[dead], handlers=HANDLERS)
    v2, _ = challenge_of(await rs.get("/weather"))
    response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "facilitator_unavailable"
    assert "nothing was charged" in response.json()["message"]
    challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    assert (await challenge_row(rs, challenge_id))["status"] == "issued"
    assert [e.event for e in await rs.runtime.store.audit(challenge_id=challenge_id)] == ["payment_received"]
    assert dev_chain.balance_of(payer.address) == FUNDS


async def test_failover_to_the_next_facilitator(dev_chain, start_resource_server, facilitator, payer, pay_to):
    dead = f"http://127.0.0.1:{free_port()}"
    rs = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[dead, facilitator.url], handlers=HANDLERS
    )
    v2, _ = challenge_of(await rs.get("/weather"))
    response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))
    assert response.status_code == 200, response.text
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE


async def test_malformed_facilitator_answer_is_502(dev_chain, start_resource_server, payer, pay_to):
    from starlette.applications import Starlette

    from tests.fixtures.resource_server import serve_asgi

    async def garbage(request: Request) -> Response:
        return JSONResponse({"valid": "maybe"})

    fake = await serve_asgi(Starlette(routes=[Route("/verify", garbage, methods=["POST"])]), lifespan="off")
    try:
        rs = await start_resource_server(pricing_toml(pay_to), facilitator_urls=[fake.url], handlers=HANDLERS)
        v2, _ = challenge_of(await rs.get("/weather"))
        response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))
        assert response.status_code == 502, response.text
        assert response.json()["error"] == "facilitator_bad_response"
    finally:
        await fake.stop()
    assert dev_chain.balance_of(payer.address) == FUNDS


class FlakyFront:
    """A facilitator URL in front of the real one: everything is passed on, but the first settle's answer is
    replaced by `first_settle` (after the real facilitator has settled it)."""

    def __init__(self, target: str, first_settle: Response) -> None:
        self.target = target
        self.first_settle: Response | None = first_settle
        self.http = httpx.AsyncClient(timeout=60.0)

    async def forward(self, request: Request) -> Response:
        forward_settle = getattr(self, "forward_settle", None)
        if request.url.path == "/settle" and forward_settle is not None:
            return await forward_settle(request)  # type: ignore[no-any-return]
        answer = await self.http.post(
            self.target + request.url.path,
            content=await request.body(),
            headers={"authorization": request.headers["authorization"], "content-type": "application/json"},
        )
        if request.url.path == "/settle" and self.first_settle is not None:
            replaced, self.first_settle = self.first_settle, None
            return replaced
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    def app(self) -> Any:
        from starlette.applications import Starlette

        paths = ("/verify", "/settle")
        return Starlette(routes=[Route(p, self.forward, methods=["POST"]) for p in paths])


async def test_a_settle_refused_with_a_4xx_releases_the_payment_and_serves_nothing(
    dev_chain, start_resource_server, facilitator, payer, pay_to
):
    """A facilitator that refuses the settle request itself (a wrong API key, a rate limit: a 4xx without
    a settle answer) acted on nothing: the payment is released, the client gets a 502, nothing is charged."""
    from tests.fixtures.resource_server import serve_asgi

    front = FlakyFront(facilitator.url, JSONResponse({"error": "invalid API key"}, status_code=401))
    served_front = await serve_asgi(front.app(), lifespan="off")
    front.first_settle = None  # let verify through; the settle is answered below, without forwarding it
    refused: list[str] = []

    async def refusing_settle(request: Request) -> Response:
        refused.append(request.url.path)
        return JSONResponse({"error": "invalid API key"}, status_code=401)

    front.forward_settle = refusing_settle  # type: ignore[attr-defined]
    try:
        rs = await start_resource_server(
            pricing_toml(pay_to), facilitator_urls=[served_front.url], handlers=HANDLERS
        )
        v2, _ = challenge_of(await rs.get("/weather"))
        response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))
        assert response.status_code == 502, response.text
        assert response.json()["error"] == "facilitator_bad_response"
        assert refused == ["/settle"]
        challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
        assert (await challenge_row(rs, challenge_id))["status"] == "released"
    finally:
        await served_front.stop()
        await front.http.aclose()
    assert dev_chain.balance_of(payer.address) == FUNDS
    assert dev_chain.balance_of(pay_to) == 0


@pytest.mark.parametrize(
    "lost",
    [
        Response(b"upstream timed out", status_code=504),  # maybe delivered
        JSONResponse({"success": "perhaps"}),  # a garbled answer: the facilitator did receive it
    ],
    ids=["5xx", "garbled"],
)
async def test_a_settle_that_may_have_gone_out_is_served_pending_and_reconciled_never_failed(
    dev_chain, start_resource_server, facilitator, payer, pay_to, lost
):
    from starlette.applications import Starlette

    from tests.fixtures.resource_server import serve_asgi

    asked_elsewhere: list[str] = []

    async def other(request: Request) -> Response:
        # Another facilitator finds the authorization used by the first one's transfer.
        asked_elsewhere.append(request.url.path)
        return JSONResponse(
            {
                "success": False,
                "errorReason": reasons.NONCE_ALREADY_USED,
                "transaction": "",
                "network": NETWORK,
            }
        )

    front = FlakyFront(facilitator.url, lost)
    served_front = await serve_asgi(front.app(), lifespan="off")
    second = await serve_asgi(Starlette(routes=[Route("/settle", other, methods=["POST"])]), lifespan="off")
    try:
        rs = await start_resource_server(
            pricing_toml(pay_to), facilitator_urls=[served_front.url, second.url], handlers=HANDLERS
        )
        v2, _ = challenge_of(await rs.get("/weather"))
        payment = v2_header(payer, v2.accepts[0])
        response = await rs.get("/weather", headers=payment)

        # Charged on-chain, so served; the outcome is left to the reconciler, never to another facilitator.
        assert response.status_code == 200, response.text
        pending = settlement(response)
        assert (pending.success, pending.error_reason) == (False, "settlement_pending")
        assert authorization_used(dev_chain, payment["PAYMENT-SIGNATURE"])
        assert asked_elsewhere == []
        challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
        for _ in range(100):
            row = await challenge_row(rs, challenge_id)
            if row["status"] != "settlement_pending":
                break
            await asyncio.sleep(0.1)
        assert row["status"] == "settled", row
        assert row["tx_hash"] and row["tx_hash"].startswith("0x")
        events = [e.event for e in await rs.runtime.store.audit(challenge_id=challenge_id)]
        assert events == ["payment_received", "verified", "settle_unanswered", "settled"], events
    finally:
        await second.stop()
        await served_front.stop()
        await front.http.aclose()
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE
    assert dev_chain.balance_of(payer.address) == FUNDS - WEATHER_PRICE


async def test_malformed_or_oversized_payment_headers_are_400(rs, payer):
    v2, _ = challenge_of(await rs.get("/weather"))
    good = pay_v2(payer.key.hex(), payer.address, v2.accepts[0]).to_wire()

    def b64(value: Any) -> str:
        return base64.b64encode(orjson.dumps(value) if not isinstance(value, bytes) else value).decode()

    no_auth = {**good, "payload": {"signature": good["payload"]["signature"]}}
    bad_nonce = {
        **good,
        "payload": {
            **good["payload"],
            "authorization": {**good["payload"]["authorization"], "nonce": "0x12"},
        },
    }
    cases = {
        "PAYMENT-SIGNATURE": [
            "%%% not base64 %%%",
            b64(b"not json"),
            b64([1, 2]),
            b64({"x402Version": 2}),
            b64(no_auth),
            b64(bad_nonce),
            b64({"x402Version": 3, "payload": {}}),
            "A" * 12_000,
        ],
        "X-PAYMENT": [b64({"x402Version": 1, "scheme": "exact"}), "e30="],
    }
    for header, values in cases.items():
        for value in values:
            response = await rs.get("/weather", headers={header: value})
            assert response.status_code == 400, (header, value[:40], response.text)
            assert response.json()["error"] == "invalid_payment_header"
            assert response.json()["message"].startswith(header)
    oversized = await rs.get("/weather", headers={"PAYMENT-SIGNATURE": "A" * 12_000})
    assert "limit" in oversized.json()["message"]


async def test_settlement_pending_is_served_and_reconciled(
    dev_chain, start_facilitator: StartFacilitator, start_resource_server, payer, pay_to
):
    # A facilitator that never waits for receipts: every settle answers settlement_pending.
    impatient = await start_facilitator(network={"receipt_timeout_seconds": 0.0})
    rs = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=[impatient.url], handlers=HANDLERS
    )
    v2, _ = challenge_of(await rs.get("/weather"))
    response = await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))

    assert response.status_code == 200, response.text
    pending = settlement(response)
    assert (pending.success, pending.error_reason) == (False, "settlement_pending")
    challenge_id = v2.accepts[0].extra["challengeId"]  # type: ignore[index]
    assert (await challenge_row(rs, challenge_id))["status"] in ("settlement_pending", "settled")

    for _ in range(100):
        row = await challenge_row(rs, challenge_id)
        if row["status"] == "settled":
            break
        await asyncio.sleep(0.1)
    assert row["status"] == "settled", row
    assert row["tx_hash"] and row["tx_hash"].startswith("0x")
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE
    events = [e.event for e in await rs.runtime.store.audit(challenge_id=challenge_id)]
    assert events[:3] == ["payment_received", "verified", "settlement_pending"] and events[-1] == "settled", (
        events
    )
