"""Every verify failure class, through HTTP, against the real token on Anvil."""

import os
import time

import pytest
from eth_account import Account

from shared.evm.signatures import SECP256K1_N
from shared.x402 import reasons
from tests.support.payments import (
    authorization,
    digest,
    new_address,
    paid_request,
    requirements_v2,
    sign,
    sign_digest,
    v2_body,
)

pytestmark = pytest.mark.integration


def _request(chain, payer, amount=10_000, *, auth_kwargs=None, req_kwargs=None, sign_kwargs=None, sig=None):
    pay_to = new_address()
    auth = authorization(payer.address, pay_to, amount, **(auth_kwargs or {}))
    signature = sig if sig is not None else sign(chain, payer.key.hex(), auth, **(sign_kwargs or {}))
    reqs = requirements_v2(chain, pay_to, amount)
    reqs.update(req_kwargs or {})
    return v2_body(reqs, auth, signature), auth


async def _reason(facilitator, body):
    resp = await facilitator.post("/verify", body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["isValid"] is False, data
    assert data["invalidMessage"]
    return data["invalidReason"]


async def test_valid_v2_and_v1(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    for version in (2, 1):
        resp = await facilitator.post("/verify", paid_request(dev_chain, payer, 1234, version=version))
        assert resp.json() == {"isValid": True, "payer": payer.address}


async def test_high_s_signature_is_refused(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    body, _ = _request(dev_chain, payer)
    good = bytes.fromhex(body["paymentPayload"]["payload"]["signature"][2:])
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    malleated = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    body["paymentPayload"]["payload"]["signature"] = "0x" + malleated.hex()
    assert await _reason(facilitator, body) == reasons.SIGNATURE


async def test_signature_by_someone_else(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    other = Account.create()
    pay_to = new_address()
    auth = authorization(payer.address, pay_to, 10_000)
    body = v2_body(requirements_v2(dev_chain, pay_to, 10_000), auth, sign(dev_chain, other.key.hex(), auth))
    assert await _reason(facilitator, body) == reasons.SIGNATURE


async def test_recipient_value_and_time_window(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    now = int(time.time())

    body, _ = _request(dev_chain, payer, req_kwargs={"payTo": new_address()})
    assert await _reason(facilitator, body) == reasons.RECIPIENT_MISMATCH

    body, _ = _request(dev_chain, payer, req_kwargs={"amount": "10001"})
    assert await _reason(facilitator, body) == reasons.VALUE_MISMATCH

    body, _ = _request(dev_chain, payer, auth_kwargs={"valid_before": now + 3})
    assert await _reason(facilitator, body) == reasons.VALID_BEFORE

    body, _ = _request(dev_chain, payer, auth_kwargs={"valid_after": now + 120})
    assert await _reason(facilitator, body) == reasons.VALID_AFTER


async def test_scheme_network_token_and_domain(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)

    body, _ = _request(dev_chain, payer)
    body["paymentPayload"]["accepted"]["scheme"] = "upto"
    assert await _reason(facilitator, body) == reasons.SCHEME_MISMATCH

    body, _ = _request(dev_chain, payer)
    body["paymentPayload"]["accepted"]["network"] = "eip155:8453"
    assert await _reason(facilitator, body) == reasons.NETWORK_MISMATCH

    body, _ = _request(dev_chain, payer, req_kwargs={"network": "eip155:1"})
    body["paymentPayload"]["accepted"]["network"] = "eip155:1"
    assert await _reason(facilitator, body) == reasons.INVALID_NETWORK

    body, _ = _request(dev_chain, payer, req_kwargs={"asset": new_address()})
    assert await _reason(facilitator, body) == reasons.UNSUPPORTED_ASSET

    body, _ = _request(dev_chain, payer, req_kwargs={"extra": {"name": "USD Coin", "version": "2"}})
    assert await _reason(facilitator, body) == reasons.TOKEN_NAME_MISMATCH

    body, _ = _request(dev_chain, payer, req_kwargs={"extra": {"name": "USDC", "version": "1"}})
    assert await _reason(facilitator, body) == reasons.TOKEN_VERSION_MISMATCH

    body, _ = _request(dev_chain, payer, req_kwargs={"extra": {}})
    assert await _reason(facilitator, body) == reasons.MISSING_EIP712_DOMAIN


async def test_chain_diagnosis_balance_and_used_nonce(dev_chain, facilitator):
    broke = dev_chain.new_payer(0)
    body, _ = _request(dev_chain, broke)
    assert await _reason(facilitator, body) == reasons.INSUFFICIENT_BALANCE

    payer = dev_chain.new_payer(1_000_000)
    body, _ = _request(dev_chain, payer)
    settled = (await facilitator.post("/settle", body)).json()
    assert settled["success"] is True
    assert await _reason(facilitator, body) == reasons.NONCE_ALREADY_USED


async def test_on_chain_domain_mismatch_is_diagnosed(dev_chain, start_facilitator):
    # The operator's registry says "USD Coin" while the contract's name() is "USDC": the client signs what the
    # registry says, the token rejects it, and the diagnosis names the real cause.
    token = {"address": dev_chain.usdc.address, "name": "USD Coin", "version": "2", "decimals": 6}
    fac = await start_facilitator(network={"tokens": [token]})
    payer = dev_chain.new_payer(1_000_000)
    body, _ = _request(
        dev_chain,
        payer,
        req_kwargs={"extra": {"name": "USD Coin", "version": "2"}},
        sign_kwargs={"name": "USD Coin"},
    )
    assert await _reason(fac, body) == reasons.TOKEN_NAME_MISMATCH


async def test_erc1271_wallet(dev_chain, facilitator):
    owner = Account.create()
    wallet = dev_chain.deploy_wallet(owner.address, os.urandom(8))
    dev_chain.mint(wallet, 1_000_000)
    pay_to = new_address()
    auth = authorization(wallet, pay_to, 10_000)
    body = v2_body(
        requirements_v2(dev_chain, pay_to, 10_000),
        auth,
        sign_digest(owner.key.hex(), digest(dev_chain, auth)),
    )
    resp = await facilitator.post("/verify", body)
    assert resp.json() == {"isValid": True, "payer": wallet}

    stranger = Account.create()
    bad = v2_body(
        requirements_v2(dev_chain, pay_to, 10_000),
        auth,
        sign_digest(stranger.key.hex(), digest(dev_chain, auth)),
    )
    assert await _reason(facilitator, bad) == reasons.SIGNATURE

    settled = (await facilitator.post("/settle", body)).json()
    assert settled["success"] is True, settled
    assert dev_chain.balance_of(pay_to) == 10_000


async def test_erc6492_counterfactual_wallet_verifies_and_settles(dev_chain, facilitator):
    owner = Account.create()
    salt = os.urandom(8)
    wallet = dev_chain.wallet_address(owner.address, salt)
    dev_chain.mint(wallet, 1_000_000)
    pay_to = new_address()
    auth = authorization(wallet, pay_to, 10_000)
    inner = sign_digest(owner.key.hex(), digest(dev_chain, auth))
    body = v2_body(
        requirements_v2(dev_chain, pay_to, 10_000),
        auth,
        dev_chain.erc6492_signature(owner.address, salt, inner),
    )
    assert (await facilitator.post("/verify", body)).json() == {"isValid": True, "payer": wallet}
    settled = (await facilitator.post("/settle", body)).json()
    assert settled["success"] is True, settled
    assert dev_chain.balance_of(pay_to) == 10_000
    assert dev_chain.rpc.get_code(wallet)  # deployed in the same transaction


async def test_deployed_wallet_with_a_wrapped_signature_is_simulated(dev_chain, facilitator):
    """Some wallets wrap every signature for ERC-6492, deployed or not. Once the wallet is deployed, its
    payment must still be simulated: a wallet without the funds is refused at /verify, not at settlement."""
    owner = Account.create()
    salt = os.urandom(8)
    wallet = dev_chain.deploy_wallet(owner.address, salt)
    pay_to = new_address()
    auth = authorization(wallet, pay_to, 10_000)
    wrapped = dev_chain.erc6492_signature(
        owner.address, salt, sign_digest(owner.key.hex(), digest(dev_chain, auth))
    )
    body = v2_body(requirements_v2(dev_chain, pay_to, 10_000), auth, wrapped)

    assert await _reason(facilitator, body) == reasons.INSUFFICIENT_BALANCE

    dev_chain.mint(wallet, 1_000_000)
    assert (await facilitator.post("/verify", body)).json() == {"isValid": True, "payer": wallet}
    settled = (await facilitator.post("/settle", body)).json()
    assert settled["success"] is True, settled
    assert dev_chain.balance_of(pay_to) == 10_000


async def test_erc6492_factory_must_be_allow_listed(dev_chain, start_facilitator):
    fac = await start_facilitator(network={"eip6492_factories": []})
    owner = Account.create()
    salt = os.urandom(8)
    wallet = dev_chain.wallet_address(owner.address, salt)
    dev_chain.mint(wallet, 1_000_000)
    pay_to = new_address()
    auth = authorization(wallet, pay_to, 10_000)
    inner = sign_digest(owner.key.hex(), digest(dev_chain, auth))
    body = v2_body(
        requirements_v2(dev_chain, pay_to, 10_000),
        auth,
        dev_chain.erc6492_signature(owner.address, salt, inner),
    )
    assert await _reason(fac, body) == reasons.EIP6492_FACTORY_NOT_ALLOWED


async def test_long_signature_from_account_without_code(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    body, _ = _request(dev_chain, payer, sig=os.urandom(70))
    assert await _reason(facilitator, body) == reasons.UNDEPLOYED_SMART_WALLET


async def test_pay_to_allow_list(dev_chain, start_facilitator):
    allowed = new_address()
    fac = await start_facilitator(pay_to_allowlist=[allowed.lower()])
    payer = dev_chain.new_payer(1_000_000)
    body, _ = _request(dev_chain, payer)
    assert await _reason(fac, body) == reasons.PAY_TO_NOT_ALLOWED
    ok = paid_request(dev_chain, payer, 5, pay_to=allowed)
    assert (await fac.post("/verify", ok)).json()["isValid"] is True


async def test_malformed_requests_get_400_and_clear_errors(dev_chain, facilitator):
    resp = await facilitator.http.post(
        facilitator.url + "/verify", content=b"{not json", headers={"authorization": "Bearer test-api-key"}
    )
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]

    resp = await facilitator.post("/verify", {"paymentPayload": {}})
    assert resp.status_code == 400 and "paymentRequirements" in resp.json()["error"]

    payer = dev_chain.new_payer(0)
    body = paid_request(dev_chain, payer, 1)
    del body["paymentRequirements"]["payTo"]
    resp = await facilitator.post("/settle", body)
    assert resp.status_code == 400 and "payTo" in resp.json()["error"]

    big = {"paymentPayload": {"x": "a" * 100_000}, "paymentRequirements": {}}
    resp = await facilitator.post("/verify", big)
    assert resp.status_code == 400 and "exceeds" in resp.json()["error"]

    body = paid_request(dev_chain, payer, 1)
    body["paymentPayload"]["payload"]["authorization"]["value"] = "-5"
    assert await _reason(facilitator, body) == reasons.MALFORMED_PAYLOAD

    body["paymentPayload"]["x402Version"] = 3
    assert await _reason(facilitator, body) == reasons.INVALID_X402_VERSION


async def test_api_key_required_on_money_endpoints(dev_chain, facilitator):
    body = paid_request(dev_chain, dev_chain.new_payer(0), 1)
    for path in ("/verify", "/settle"):
        resp = await facilitator.post(path, body, auth=False)
        assert resp.status_code == 401
    assert (await facilitator.get("/supported")).status_code == 200
    assert (await facilitator.get("/health")).status_code == 200


async def test_supported_lists_v1_and_v2(facilitator, dev_chain):
    data = (await facilitator.get("/supported")).json()
    kinds = {(k["x402Version"], k["network"]) for k in data["kinds"]}
    assert kinds == {(2, "eip155:84532"), (1, "base-sepolia")}
    assert sorted(data["signers"]["eip155:*"]) == sorted(
        Account.from_key(k).address for k in dev_chain.facilitator_keys
    )
    assert "null" not in (await facilitator.get("/supported")).text
