"""A node's own error (a rate limit, missing state, an internal error) is not a verdict on a payment: the
verifier answers "unavailable" (503, ask again), not a reason that blames the payer or the token."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from eth_account import Account

from client.signing import exact_payload, sign_authorization
from facilitator.exact_evm.payment import Rejected, payment_from_v2
from facilitator.exact_evm.verifier import ChainView, ExactEvmVerifier
from shared.evm.eip712 import Authorization
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.tokens import Token, TokenRegistry
from shared.x402 import reasons
from shared.x402.models import PaymentPayloadV2, PaymentRequirementsV2

CHAIN_ID = 84532
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x2222222222222222222222222222222222222222"
SIMULATOR = "0x4444444444444444444444444444444444444444"
RATE_LIMITED = RpcError(-32005, "rate limit exceeded")
REVERTED = RpcError(3, "execution reverted: FiatTokenV2: authorization is used or canceled")
WORD_TRUE = "0x" + "00" * 31 + "01"


class FakeRpc:
    """Answers the verifier's JSON-RPC batches: payer code, the simulation, then the diagnosis reads."""

    def __init__(self, simulation: object, authorization_state: object) -> None:
        self.simulation = simulation
        self.authorization_state = authorization_state

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[object]:
        if calls[0][0] == "eth_getCode":  # the first round trip: payer code (an EOA), the simulation
            return ["0x" if m == "eth_getCode" else self.simulation for m, _ in calls]
        # The diagnosis: authorizationState, name, version, balanceOf.
        return [self.authorization_state, RATE_LIMITED, RATE_LIMITED, RATE_LIMITED]


class FakeEth:
    def __init__(self, rpc: FakeRpc) -> None:
        self.rpc = rpc

    async def get_code(self, address: str, block: str = "latest") -> bytes:
        return b"\x60\x80"  # the token is deployed


def payment(payer_key: str, payer: str) -> Any:
    now = int(time.time())
    auth = Authorization(payer, PAY_TO, 10_000, now - 600, now + 600, os.urandom(32))
    signature = sign_authorization(payer_key, auth, name="USDC", version="2", chain_id=CHAIN_ID, token=USDC)
    accepted = {
        "scheme": "exact",
        "network": f"eip155:{CHAIN_ID}",
        "amount": "10000",
        "asset": USDC,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
    }
    body = {"x402Version": 2, "accepted": accepted, "payload": exact_payload(auth, signature)}
    return payment_from_v2(
        PaymentPayloadV2.model_validate(body), PaymentRequirementsV2.model_validate(accepted)
    )


def verify(simulation: object, authorization_state: object) -> Any:
    account = Account.create()
    chain = ChainView(CHAIN_ID, FakeEth(FakeRpc(simulation, authorization_state)), SIMULATOR, ())  # type: ignore[arg-type]
    chain._asset_has_code.add(USDC)
    verifier = ExactEvmVerifier(
        chains={CHAIN_ID: chain}, registry=TokenRegistry([Token(CHAIN_ID, USDC, "USDC", "2", 6)])
    )
    return asyncio.run(verifier.verify(payment(account.key.hex(), account.address)))


def test_a_node_error_in_the_simulation_is_unavailability_not_a_reason() -> None:
    with pytest.raises(RpcUnavailable, match="rate limit"):
        verify(RATE_LIMITED, WORD_TRUE)


def test_a_node_error_while_explaining_a_revert_is_unavailability_not_a_reason() -> None:
    # Before, a failed authorizationState read was reported as a token without EIP-3009.
    with pytest.raises(RpcUnavailable, match="rate limit"):
        verify(REVERTED, RATE_LIMITED)


def test_a_revert_is_still_explained() -> None:
    with pytest.raises(Rejected) as used:
        verify(REVERTED, WORD_TRUE)
    assert used.value.reason == reasons.NONCE_ALREADY_USED
    with pytest.raises(Rejected) as unsupported:
        verify(REVERTED, RpcError(3, "execution reverted"))
    assert unsupported.value.reason == reasons.EIP3009_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("error", "revert", "transient"),
    [
        (RpcError(3, "execution reverted: FiatTokenV2: invalid signature", "0x08c379a0"), True, False),
        (RpcError(-32000, "execution reverted"), True, False),
        (RpcError(-32000, "VM Exception while processing transaction: revert"), True, False),
        (RpcError(-32000, "gas required exceeds allowance (30000000)"), True, False),
        (RpcError(-32005, "rate limit exceeded"), False, True),
        (RpcError(-32000, "header not found"), False, True),
        (RpcError(-32603, "internal error"), False, True),
        (RpcError(-32000, "nonce too low"), False, False),
        (RpcError(-32000, "insufficient funds for gas * price + value"), False, False),
        (RpcError(-32015, "VM execution error.", "Reverted 0x08c379a0"), True, False),
        (RpcError(-32015, "VM execution error.", "revert: FiatTokenV2: invalid signature"), True, False),
        (RpcError(-32000, "invalid jump destination"), True, False),
        (RpcError(-32000, "missing trie node 4f2a (path )"), False, True),
        (RpcError(-32603, "nonce too low: next nonce 7, tx nonce 5"), False, False),
        (RpcError(-32603, "insufficient funds for gas * price + value"), False, False),
    ],
)
def test_node_errors_are_told_apart(error: RpcError, revert: bool, transient: bool) -> None:
    assert (error.is_revert, error.is_transient) == (revert, transient)
