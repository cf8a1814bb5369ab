"""Reading 402 challenges (v2 header, v1 body), settlement headers and the reason of a refused payment."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from client.challenge import parse_challenge, read_settlement, rejection_reason
from client.errors import ProtocolError

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"

# The spec's own example PAYMENT-REQUIRED value (transports-v2/http.md), verbatim.
SPEC_PAYMENT_REQUIRED = (
    "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1"
    "cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1h"
    "cmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29y"
    "ayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMx"
    "OGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNv"
    "bmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19"
)


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def v2_option(**overrides: Any) -> dict[str, Any]:
    option = {
        "scheme": "exact",
        "network": "eip155:84532",
        "amount": "10000",
        "asset": USDC,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
    }
    return {**option, **overrides}


def v1_body(**overrides: Any) -> bytes:
    option = {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": "10000",
        "asset": USDC,
        "payTo": PAY_TO,
        "resource": "https://api.example.com/premium-data",
        "description": "Access to premium market data",
        "mimeType": "application/json",
        "outputSchema": None,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
        **overrides,
    }
    return json.dumps(
        {"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [option]}
    ).encode()


def test_spec_v2_header_parses():
    challenge = parse_challenge({"PAYMENT-REQUIRED": SPEC_PAYMENT_REQUIRED}, b"{}")
    assert challenge.x402_version == 2
    assert challenge.error == "PAYMENT-SIGNATURE header is required"
    assert challenge.resource == {
        "url": "https://api.example.com/premium-data",
        "description": "Access to premium market data",
        "mimeType": "application/json",
    }
    [option] = challenge.options
    assert (option.x402_version, option.scheme, option.network, option.amount) == (
        2,
        "exact",
        "eip155:84532",
        10000,
    )
    assert (option.asset, option.pay_to) == (USDC, PAY_TO)
    assert option.extra == {"name": "USDC", "version": "2"}


def test_header_name_is_case_insensitive_even_in_a_plain_dict():
    challenge = parse_challenge({"payment-required": SPEC_PAYMENT_REQUIRED}, b"")
    assert challenge.x402_version == 2


def test_v2_keeps_the_servers_json_verbatim():
    raw = v2_option(extra={"name": "USDC", "version": "2", "challengeId": "c-123"}, futureField=[1, 2])
    challenge = parse_challenge(
        {
            "PAYMENT-REQUIRED": b64(
                {"x402Version": 2, "accepts": [raw], "extensions": {"bazaar": {"info": {}}}}
            )
        },
        b"",
    )
    assert challenge.options[0].raw == raw
    assert challenge.options[0].extra["challengeId"] == "c-123"
    assert challenge.extensions == {"bazaar": {"info": {}}}
    assert challenge.resource is None


def test_v1_body_parses():
    challenge = parse_challenge({"content-type": "application/json"}, v1_body())
    assert challenge.x402_version == 1
    assert challenge.error == "X-PAYMENT header is required"
    [option] = challenge.options
    assert (option.x402_version, option.network, option.amount) == (1, "base-sepolia", 10000)


def test_header_wins_over_a_v1_body():
    challenge = parse_challenge({"PAYMENT-REQUIRED": SPEC_PAYMENT_REQUIRED}, v1_body())
    assert challenge.x402_version == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!!", "malformed PAYMENT-REQUIRED header: header is not valid base64"),
        (
            base64.b64encode(b"{nope").decode(),
            "malformed PAYMENT-REQUIRED header: header does not decode to JSON",
        ),
        (b64([1, 2]), "malformed PAYMENT-REQUIRED header: header JSON must be an object"),
        (b64({"x402Version": 1, "accepts": []}), "declares x402Version 1, expected 2"),
        (b64({"x402Version": 2}), "PAYMENT-REQUIRED header has no `accepts` list"),
    ],
)
def test_malformed_v2_header_is_a_clear_error(value, message):
    with pytest.raises(ProtocolError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_challenge({"PAYMENT-REQUIRED": value}, v1_body())  # a v1 body does not rescue a bad header


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>pay me</html>", b"[]", b'{"error": "payment required"}'],
)
def test_402_without_x402_is_a_clear_error(body):
    with pytest.raises(ProtocolError, match="without a PAYMENT-REQUIRED header"):
        parse_challenge({}, body)


def test_v2_document_in_the_body_without_header_is_refused():
    body = json.dumps({"x402Version": 2, "accepts": [v2_option()]}).encode()
    with pytest.raises(ProtocolError, match="declares x402Version 2 but there is no PAYMENT-REQUIRED"):
        parse_challenge({}, body)


def test_unreadable_options_are_set_aside_not_fatal():
    accepts = [
        "junk",
        {"scheme": "exact", "network": "solana:devnet"},  # lacks required fields
        v2_option(amount="1e3"),
        v2_option(amount="-5"),
        v2_option(amount=" 10"),
        v2_option(),
    ]
    challenge = parse_challenge({"PAYMENT-REQUIRED": b64({"x402Version": 2, "accepts": accepts})}, b"")
    assert [o.index for o in challenge.options] == [5]
    problems = dict(challenge.malformed)
    assert sorted(problems) == [0, 1, 2, 3, 4]
    assert problems[0] == "not a JSON object"
    assert "amount" in problems[1] or "payTo" in problems[1]
    assert problems[2] == "amount '1e3' is not a decimal integer"


def test_settlement_header_prefers_v2_then_v1():
    success = {"success": True, "transaction": "0x" + "ab" * 32, "network": "eip155:84532", "payer": PAY_TO}
    v1 = {**success, "network": "base-sepolia"}
    assert read_settlement({}) is None
    only_v1 = read_settlement({"X-PAYMENT-RESPONSE": b64(v1)})
    assert only_v1 is not None and only_v1.network == "base-sepolia"
    both = {"PAYMENT-RESPONSE": b64(success), "X-PAYMENT-RESPONSE": b64(v1)}
    settled = read_settlement(both)
    assert settled is not None and settled.success and settled.network == "eip155:84532"
    with pytest.raises(ProtocolError, match="malformed PAYMENT-RESPONSE header"):
        read_settlement({"PAYMENT-RESPONSE": "%%%"})
    with pytest.raises(ProtocolError, match="PAYMENT-RESPONSE header is not a settlement: network"):
        read_settlement({"PAYMENT-RESPONSE": b64({"success": True})})


def test_rejection_reason_prefers_failed_settlement_then_challenge_error():
    failed = {
        "success": False,
        "errorReason": "invalid_exact_evm_insufficient_balance",
        "network": "eip155:84532",
    }
    challenge = b64({"x402Version": 2, "error": "invalid_exact_evm_nonce_already_used", "accepts": []})
    reason, settlement = rejection_reason(
        {"PAYMENT-RESPONSE": b64(failed), "PAYMENT-REQUIRED": challenge}, b"{}"
    )
    assert reason == "invalid_exact_evm_insufficient_balance"
    assert settlement is not None and settlement.success is False

    assert rejection_reason({"PAYMENT-REQUIRED": challenge}, b"{}") == (
        "invalid_exact_evm_nonce_already_used",
        None,
    )
    assert rejection_reason({}, v1_body())[0] == "X-PAYMENT header is required"
    assert rejection_reason({"PAYMENT-RESPONSE": "garbage"}, b"")[0].startswith(
        "HTTP 402 without a readable reason"
    )
