"""The paywall matches a v2 payment two ways: from memory when this process issued its challenge (no read
before verifying, the claim decides), or read back from the database (another replica's challenge). A
payment is its payer and EIP-3009 nonce, whatever the chain and token: reused on another one, both ways
must refuse it alike. Real PostgreSQL; a facilitator that finds every signature valid."""

from __future__ import annotations

import secrets
import time
import tomllib
from typing import Any

import pytest

from resource_server import reasons
from resource_server.challenges.store import ChallengeStore
from resource_server.facilitator_client import FacilitatorClient
from resource_server.payment_headers import PaymentAttempt
from resource_server.paywall import Authorized, Denied, Paywall, PricedRequest
from resource_server.pricing.engine import quote
from resource_server.pricing.loader import parse_pricing
from shared.x402.models import VerifyResponse

pytestmark = pytest.mark.integration

PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
OTHER_TOKEN = "0x808456652fdb597867f38412077A9182bf77359F"
# One route paid in USDC on Base Sepolia or Base, or in a second dollar token on Base Sepolia.
PRICING = f"""
[defaults]
pay_to = "{PAY_TO}"
accepts = [
    {{ network = "eip155:84532", token = "USDC" }},
    {{ network = "eip155:8453", token = "USDC" }},
    {{ network = "eip155:84532", token = "{OTHER_TOKEN}" }},
]

[[tokens]]
symbol = "USDX"
network = "eip155:84532"
address = "{OTHER_TOKEN}"
name = "USDX"
version = "1"
usd = true

[[routes]]
path = "/weather"
price = "$0.001"
"""


class ValidatingFacilitator(FacilitatorClient):
    """Finds every payment valid: what is decided here is the paywall's own rule."""

    def __init__(self) -> None:
        super().__init__(["http://127.0.0.1:9"])

    async def verify(self, payload: dict[str, Any], requirements: dict[str, Any]) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=PAYER)


def priced() -> PricedRequest:
    [route] = parse_pricing(tomllib.loads(PRICING)).routes
    return PricedRequest(route, quote(route, {}), "http://test/weather")


def attempt(requirement: dict[str, Any], nonce: str) -> PaymentAttempt:
    """A v2 payment for `requirement` (the facilitator here does not check its signature)."""
    valid_before = int(time.time()) + 300
    authorization = {
        "from": PAYER,
        "to": PAY_TO,
        "value": requirement["amount"],
        "validAfter": "0",
        "validBefore": str(valid_before),
        "nonce": nonce,
    }
    payload = {
        "x402Version": 2,
        "accepted": requirement,
        "payload": {"signature": "0x" + "11" * 65, "authorization": authorization},
    }
    return PaymentAttempt(
        version=2,
        payload=payload,
        scheme="exact",
        network=requirement["network"],
        accepted=requirement,
        challenge_id=requirement["extra"]["challengeId"],
        payer=PAYER,
        pay_to=PAY_TO,
        value=int(requirement["amount"]),
        nonce=nonce,
        valid_before=valid_before,
    )


@pytest.mark.parametrize("option", [1, 2], ids=["another-chain", "another-token"])
async def test_a_nonce_reused_on_another_chain_or_token_is_refused_from_memory_and_from_the_database(
    challenge_store: ChallengeStore, option: int
) -> None:
    request = priced()
    facilitator = ValidatingFacilitator()
    here = Paywall(challenge_store, facilitator, challenge_ttl_seconds=300)
    # Another replica on the same database: it never issued these challenges, so it reads them back.
    replica = Paywall(ChallengeStore(challenge_store.pool), facilitator, challenge_ttl_seconds=300)
    spent = "0x" + secrets.token_hex(32)

    first = await here.issue(request)
    assert isinstance(await here.authorize(request, attempt(first.requirements[0], spent)), Authorized)

    from_memory = await here.issue(request)
    read_back = await here.issue(request)
    answers = [
        await here.authorize(request, attempt(from_memory.requirements[option], spent)),
        await replica.authorize(request, attempt(read_back.requirements[option], spent)),
    ]
    for answer in answers:
        assert isinstance(answer, Denied) and answer.reason == reasons.PAYMENT_USED
    assert challenge_store.take_issued(read_back.id) is not None  # it was read back, not taken from memory
    status = "SELECT status FROM rs_challenges WHERE id = $1"
    for challenge in (from_memory, read_back):
        assert await challenge_store.pool.fetchval(status, challenge.id) == "issued"  # payable by another
    owners = await challenge_store.pool.fetch("SELECT challenge_id FROM rs_payments")
    assert [r["challenge_id"] for r in owners] == [first.id]
