"""After paying we know what we signed: a receipt that names another payment must not verify."""

from __future__ import annotations

import base64
import json

from client.challenge import parse_challenge
from client.payment import SignedPayment, sign_payment
from client.receipt_match import payment_check

KEY = "0x" + "42" * 32
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
OPTION = {
    "scheme": "exact",
    "network": "eip155:84532",
    "amount": "10000",
    "asset": USDC,
    "payTo": PAY_TO,
    "maxTimeoutSeconds": 60,
    "extra": {"name": "USDC", "version": "2"},
}


def signed() -> SignedPayment:
    header = base64.b64encode(json.dumps({"x402Version": 2, "accepts": [OPTION]}).encode()).decode()
    challenge = parse_challenge({"PAYMENT-REQUIRED": header}, b"")
    return sign_payment(KEY, challenge, challenge.options[0])


def test_receipt_of_our_payment_matches_case_insensitively():
    payment = signed()
    receipt = {
        "payer": payment.payer.lower(),
        "nonce": payment.nonce.upper().replace("0X", "0x"),
        "payTo": PAY_TO.lower(),
        "token": USDC,
        "amount": "10000",
    }
    check = payment_check(receipt, payment)
    assert check.ok, check.detail


def test_receipt_of_another_payment_fails_and_says_why():
    payment = signed()
    receipt = {
        "payer": payment.payer,
        "nonce": "0x" + "00" * 32,
        "payTo": PAY_TO,
        "token": USDC,
        "amount": "9999",
    }
    check = payment_check(receipt, payment)
    assert not check.ok
    assert "nonce is '0x000" in check.detail and "amount is '9999', we paid '10000'" in check.detail
