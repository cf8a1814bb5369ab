"""POST /settle and /verify refusals of a payment that could not even be read still name a payer: v1
requires `payer` in every settle (and verify) answer. It is the authorization's `from` when that is an
address, else ""."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from facilitator.api.routes import ROUTES, payer_hint
from shared.x402 import reasons

PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"

V1_BODY: dict[str, Any] = {
    "x402Version": 1,
    "paymentPayload": {
        "x402Version": 1,
        "scheme": "exact",
        "network": "base-sepolia",
        "payload": {
            "signature": "0x" + "11" * 65,
            "authorization": {
                "from": PAYER.lower(),
                "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "value": "-5",  # not a uint256: refused while the payment is read
                "validAfter": "0",
                "validBefore": "9999999999",
                "nonce": "0x" + "22" * 32,
            },
        },
    },
    "paymentRequirements": {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": "10000",
        "resource": "https://api.example.com/premium-data",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "maxTimeoutSeconds": 60,
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "extra": {"name": "USDC", "version": "2"},
    },
}


@pytest.fixture
def http() -> TestClient:
    app = Starlette(routes=ROUTES)
    app.state.max_body_bytes = 64 * 1024
    app.state.facilitator = None  # never reached: the payment is refused while it is read
    return TestClient(app)


def body(**authorization: Any) -> dict[str, Any]:
    changed = copy.deepcopy(V1_BODY)
    changed["paymentPayload"]["payload"]["authorization"].update(authorization)
    return changed


def test_a_v1_settle_refused_while_read_names_the_authorizations_payer(http: TestClient) -> None:
    answer = http.post("/settle", json=body())
    assert answer.status_code == 200
    doc = answer.json()
    assert "value" in doc.pop("errorMessage")
    assert doc == {
        "success": False,
        "errorReason": reasons.MALFORMED_PAYLOAD,
        "payer": PAYER,
        "transaction": "",
        "network": "base-sepolia",
    }


def test_a_v1_settle_without_a_readable_payer_names_an_empty_one(http: TestClient) -> None:
    for sender in ("not an address", 12, None):
        answer = http.post("/settle", json=body(**{"from": sender})).json()
        assert (answer["success"], answer["payer"]) == (False, "")
    unknown_version = body()
    unknown_version["paymentPayload"]["x402Version"] = 3
    answer = http.post("/settle", json=unknown_version).json()
    assert (answer["errorReason"], answer["payer"]) == (reasons.INVALID_X402_VERSION, PAYER)


def test_a_verify_refused_while_read_names_the_payer_too(http: TestClient) -> None:
    answer = http.post("/verify", json=body()).json()
    assert (answer["isValid"], answer["invalidReason"], answer["payer"]) == (
        False,
        reasons.MALFORMED_PAYLOAD,
        PAYER,
    )


@pytest.mark.parametrize(
    "request_body",
    [
        None,
        [],
        {"paymentPayload": "x"},
        {"paymentPayload": {"payload": []}},
        {"paymentPayload": {"payload": {}}},
    ],
)
def test_payer_hint_of_anything_else_is_empty(request_body: Any) -> None:
    assert payer_hint(request_body) == ""
