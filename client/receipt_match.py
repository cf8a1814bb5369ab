"""Whether a verified receipt is the receipt of *our* payment. `x402 receipt` proves a transfer happened as
the facilitator says; after paying we also know what we signed, so the receipt must name exactly that
authorization (payer, nonce) and the amount, token and payee we chose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .payment import SignedPayment
from .receipts import Check


def payment_check(receipt: Mapping[str, Any], payment: SignedPayment) -> Check:
    option = payment.option
    expected = {
        "payer": payment.payer,
        "nonce": payment.nonce,
        "payTo": option.pay_to,
        "token": option.asset,
        "amount": str(option.amount),
    }
    wrong = [
        f"{name} is {receipt.get(name)!r}, we paid {value!r}"
        for name, value in expected.items()
        if str(receipt.get(name, "")).lower() != value.lower()
    ]
    if wrong:
        return Check("our payment", False, "; ".join(wrong))
    return Check("our payment", True, f"authorization {payment.nonce} of {payment.payer}")
