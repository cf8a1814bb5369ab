"""The local chain: real USDC where x402 expects it, EIP-3009 transfers, ERC-1271 and ERC-6492 wallets."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from eth_abi.abi import decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import Hash32
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.devchain.anvil import AnvilError, start_anvil
from shared.devchain.chain import DevChain
from shared.devchain.constants import BASE_MAINNET_USDC, BASE_SEPOLIA_USDC
from shared.devchain.contracts import ERC6492_MAGIC_SUFFIX
from shared.devchain.rpc import TransactionReverted, encode_call, selector
from shared.devchain.usdc import ADMIN_SLOT, IMPLEMENTATION_SLOT, deploy_usdc, domain_separator

pytestmark = pytest.mark.integration

BASE_SEPOLIA_USDC_DOMAIN_SEPARATOR = bytes.fromhex(
    "71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"
)
TWA_VRS = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
TWA_BYTES = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
AUTHORIZATION_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def authorization(chain: DevChain, payer: str, payee: str, value: int) -> dict[str, Any]:
    # The token requires validAfter < block.timestamp < validBefore, measured on the chain's clock.
    now = chain.rpc.latest_timestamp()
    return {
        "from": payer,
        "to": payee,
        "value": value,
        "validAfter": 0,
        "validBefore": now + 600,
        "nonce": os.urandom(32),
    }


def sign(chain: DevChain, signer: LocalAccount, message: dict[str, Any]) -> Any:
    return signer.sign_typed_data(chain.usdc.eip712_domain(), AUTHORIZATION_TYPES, message)


def authorization_args(message: dict[str, Any]) -> list[Any]:
    keys = ("from", "to", "value", "validAfter", "validBefore", "nonce")
    return [message[k] for k in keys]


def test_usdc_sits_at_base_sepolia_address(dev_chain: DevChain) -> None:
    rpc, token = dev_chain.rpc, dev_chain.usdc.address
    assert token == BASE_SEPOLIA_USDC
    assert dev_chain.chain_id == rpc.chain_id() == 84532
    assert dev_chain.network == "eip155:84532"
    assert rpc.call(token, "name()", [], ["string"]) == ("USDC",)
    assert rpc.call(token, "symbol()", [], ["string"]) == ("USDC",)
    assert rpc.call(token, "version()", [], ["string"]) == ("2",)
    assert rpc.call(token, "decimals()", [], ["uint8"]) == (6,)
    assert rpc.call(token, "DOMAIN_SEPARATOR()", [], ["bytes32"]) == (BASE_SEPOLIA_USDC_DOMAIN_SEPARATOR,)
    assert dev_chain.usdc.domain_separator == BASE_SEPOLIA_USDC_DOMAIN_SEPARATOR


def test_proxy_state_was_copied_to_the_fixed_address(dev_chain: DevChain) -> None:
    usdc = dev_chain.usdc
    assert int.from_bytes(keccak(text="org.zeppelinos.proxy.implementation"), "big") == IMPLEMENTATION_SLOT
    assert int.from_bytes(keccak(text="org.zeppelinos.proxy.admin"), "big") == ADMIN_SLOT
    implementation = dev_chain.rpc.get_storage_at(usdc.address, IMPLEMENTATION_SLOT)[12:]
    admin = dev_chain.rpc.get_storage_at(usdc.address, ADMIN_SLOT)[12:]
    assert to_checksum_address(implementation) == usdc.implementation
    assert to_checksum_address(admin) == usdc.proxy_admin
    assert usdc.proxy_admin not in (usdc.owner, usdc.minter)


def test_new_payer_gets_minted_usdc_and_no_eth(dev_chain: DevChain) -> None:
    payer = dev_chain.new_payer(5_000_000)
    assert dev_chain.balance_of(payer.address) == 5_000_000
    assert dev_chain.eth_balance(payer.address) == 0
    dev_chain.fund_eth(payer.address, 10**18)
    dev_chain.fund_eth(payer.address, 10**18)
    assert dev_chain.eth_balance(payer.address) == 2 * 10**18


def test_transfer_with_authorization_moves_funds_once(dev_chain: DevChain) -> None:
    assert selector(TWA_VRS).hex() == "e3ee160e"
    payer, payee = dev_chain.new_payer(1_000_000), Account.create().address
    message = authorization(dev_chain, payer.address, payee, 250_000)
    signed = sign(dev_chain, payer, message)
    data = encode_call(
        TWA_VRS,
        [*authorization_args(message), signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")],
    )
    relayer = dev_chain.facilitator_keys[0]

    receipt = dev_chain.rpc.send_transaction(relayer, to=dev_chain.usdc.address, data=data)

    assert receipt.status == 1
    assert dev_chain.balance_of(payer.address) == 750_000
    assert dev_chain.balance_of(payee) == 250_000
    with pytest.raises(TransactionReverted) as reverted:
        dev_chain.rpc.send_transaction(relayer, to=dev_chain.usdc.address, data=data)
    assert reverted.value.reason == "FiatTokenV2: authorization is used or canceled"


def test_erc1271_wallet_pays_through_bytes_signature(dev_chain: DevChain) -> None:
    assert selector(TWA_BYTES).hex() == "cf092995"
    owner: LocalAccount = Account.create()
    wallet = dev_chain.deploy_wallet(owner.address, b"\x01")
    dev_chain.mint(wallet, 1_000_000)
    payee = Account.create().address
    message = authorization(dev_chain, wallet, payee, 400_000)
    relayer = dev_chain.facilitator_keys[1]

    stranger_sig = sign(dev_chain, Account.create(), message).signature
    with pytest.raises(TransactionReverted) as reverted:
        dev_chain.rpc.send_transaction(
            relayer,
            to=dev_chain.usdc.address,
            data=encode_call(TWA_BYTES, [*authorization_args(message), stranger_sig]),
        )
    assert reverted.value.reason == "FiatTokenV2: invalid signature"

    owner_sig = sign(dev_chain, owner, message).signature
    dev_chain.rpc.send_transaction(
        relayer,
        to=dev_chain.usdc.address,
        data=encode_call(TWA_BYTES, [*authorization_args(message), owner_sig]),
    )
    assert dev_chain.balance_of(wallet) == 600_000
    assert dev_chain.balance_of(payee) == 400_000


def test_wallet_factory_is_counterfactual_and_idempotent(dev_chain: DevChain) -> None:
    owner, salt = Account.create().address, os.urandom(32)
    predicted = dev_chain.wallet_address(owner, salt)
    on_chain = dev_chain.rpc.call(
        dev_chain.wallet_factory, "computeAddress(address,bytes32)", [owner, salt], ["address"]
    )
    assert on_chain[0].lower() == predicted.lower()
    assert dev_chain.rpc.get_code(predicted) == b""

    assert dev_chain.deploy_wallet(owner, salt) == predicted
    assert dev_chain.deploy_wallet(owner, salt) == predicted  # second deploy is a no-op, not a revert
    assert dev_chain.rpc.call(predicted, "owner()", [], ["address"])[0].lower() == owner.lower()

    wrapped = dev_chain.erc6492_signature(owner, salt, b"\x11" * 65)
    assert wrapped.endswith(ERC6492_MAGIC_SUFFIX)
    factory, calldata, inner = decode(["address", "bytes", "bytes"], wrapped[: -len(ERC6492_MAGIC_SUFFIX)])
    assert factory.lower() == dev_chain.wallet_factory.lower()
    assert calldata == encode_call("deploy(address,bytes32)", [owner, salt])
    assert inner == b"\x11" * 65


def test_erc1271_wallet_rejects_high_s_and_bad_length(dev_chain: DevChain) -> None:
    owner: LocalAccount = Account.create()
    wallet = dev_chain.deploy_wallet(owner.address, b"\x02")
    digest = Hash32(os.urandom(32))
    good = owner.unsafe_sign_hash(digest)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = good.r.to_bytes(32, "big") + (n - good.s).to_bytes(32, "big") + bytes([55 - good.v])

    def check(signature: bytes) -> bytes:
        (magic,) = dev_chain.rpc.call(
            wallet, "isValidSignature(bytes32,bytes)", [digest, signature], ["bytes4"]
        )
        return bytes(magic)

    assert check(good.signature) == bytes.fromhex("1626ba7e")
    assert check(high_s) == bytes.fromhex("ffffffff")
    assert check(good.signature[:64]) == bytes.fromhex("ffffffff")


def test_base_mainnet_like_token_can_sit_alongside(dev_chain_isolated: DevChain) -> None:
    chain = dev_chain_isolated
    token = deploy_usdc(chain.rpc, address=BASE_MAINNET_USDC, name="USD Coin")
    assert token.address == BASE_MAINNET_USDC
    assert chain.rpc.call(BASE_MAINNET_USDC, "name()", [], ["string"]) == ("USD Coin",)
    assert token.domain_separator == domain_separator("USD Coin", "2", 84532, BASE_MAINNET_USDC)


def test_block_time_chain_sets_up_without_waiting_for_blocks() -> None:
    started = time.monotonic()
    with DevChain.start(block_time=5) as chain:
        payer = chain.new_payer(1)
        assert chain.balance_of(payer.address) == 1
    assert time.monotonic() - started < 4


def test_anvil_start_failure_reports_stderr() -> None:
    with pytest.raises(AnvilError, match="no-such-flag"):
        start_anvil(extra_args=["--no-such-flag"])
