import pytest

from tests.support.payments import paid_request

pytestmark = pytest.mark.integration


async def test_verify_then_settle_moves_funds(dev_chain, facilitator):
    payer = dev_chain.new_payer(5_000_000)
    body = paid_request(dev_chain, payer, 10_000)
    pay_to = body["paymentRequirements"]["payTo"]

    verified = await facilitator.post("/verify", body)
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"isValid": True, "payer": payer.address}

    settled = await facilitator.post("/settle", body)
    assert settled.status_code == 200
    result = settled.json()
    assert result["success"] is True, result
    assert result["network"] == dev_chain.network
    assert dev_chain.balance_of(pay_to) == 10_000
    assert dev_chain.balance_of(payer.address) == 5_000_000 - 10_000

    receipt = await facilitator.get(f"/receipt/{result['transaction']}")
    assert receipt.status_code == 200
    assert receipt.json()["receipt"]["status"] == "confirmed"
