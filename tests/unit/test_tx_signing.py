"""Hand-built EIP-1559 signing must produce exactly what eth-account produces for the same transaction."""

import random
from typing import Any

from eth_account import Account

from facilitator.settlement.signers import FeeQuote, Signer


def test_matches_eth_account_byte_for_byte():
    rng = random.Random(1559)
    for _ in range(25):
        account = Account.create()
        to = Account.create().address
        fields: dict[str, Any] = {
            "chain_id": rng.choice([1, 8453, 84532]),
            "nonce": rng.randrange(0, 10**6),
            "gas": rng.randrange(21_000, 500_000),
            "data": rng.randbytes(rng.randrange(0, 300)),
        }
        fees = FeeQuote(
            max_fee_per_gas=rng.randrange(10**9, 10**11), max_priority_fee_per_gas=rng.randrange(0, 10**9)
        )
        ours = Signer(account.key.hex()).sign_call(to=to, fees=fees, **fields)
        reference = account.sign_transaction(
            {
                "type": 2,
                "chainId": fields["chain_id"],
                "nonce": fields["nonce"],
                "to": to,
                "value": 0,
                "data": fields["data"],
                "gas": fields["gas"],
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        assert ours.raw_tx == bytes(reference.raw_transaction)
        assert ours.tx_hash == "0x" + bytes(reference.hash).hex()
        assert Account.recover_transaction(ours.raw_tx) == account.address


def test_repr_never_shows_the_key():
    account = Account.create()
    assert account.key.hex()[2:] not in repr(Signer(account.key.hex()))


def test_decode_reads_back_what_was_signed():
    from facilitator.settlement.tx_signing import decode_eip1559_call

    rng = random.Random(2718)
    for _ in range(10):
        account = Account.create()
        to = Account.create().address
        fees = FeeQuote(
            max_fee_per_gas=rng.randrange(10**9, 10**11), max_priority_fee_per_gas=rng.randrange(0, 10**9)
        )
        data = rng.randbytes(rng.randrange(0, 300))
        signed = Signer(account.key.hex()).sign_call(
            chain_id=84532, nonce=rng.randrange(0, 10**6), to=to, data=data, gas=90_000, fees=fees
        )
        call = decode_eip1559_call(signed.raw_tx)
        assert (call.chain_id, call.nonce, call.gas, call.data) == (84532, signed.nonce, 90_000, data)
        assert call.to.lower() == to.lower()
        assert (call.max_fee_per_gas, call.max_priority_fee_per_gas) == (
            fees.max_fee_per_gas,
            fees.max_priority_fee_per_gas,
        )
