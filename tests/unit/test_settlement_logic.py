"""Pure settlement logic: the state machine (settlement/states.py), receipt checks
(settlement/receipt_checks.py), payload hashing and answers (settlement/service.py), and configuration
(facilitator/config.py)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from facilitator.config import FacilitatorSettings
from facilitator.exact_evm.payment import ExactPayment
from facilitator.settlement.ledger import SettlementKey, SettlementRow
from facilitator.settlement.receipt_checks import receipt_succeeded, transfer_matches
from facilitator.settlement.service import payload_hash, response_for
from facilitator.settlement.states import ALLOWED, IllegalTransition, Status, check_transition
from facilitator.wire import parse_request
from shared.tokens import BUILTIN_TOKENS
from shared.x402 import reasons
from tests.support.ledger_rows import settlement_row

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "eip3009.json").read_text())

# --- state machine ---------------------------------------------------------------------------------------

EXPECTED_ALLOWED = {
    (Status.RECEIVED, Status.SUBMITTED),
    (Status.RECEIVED, Status.FAILED),
    (Status.SUBMITTED, Status.SUBMITTED),  # a dropped transaction replaced
    (Status.SUBMITTED, Status.CONFIRMED),
    (Status.SUBMITTED, Status.FAILED),
}
ALL_PAIRS = list(itertools.product(Status, Status))


def test_status_values_are_the_stored_strings() -> None:
    assert [s.value for s in Status] == ["received", "submitted", "confirmed", "failed"]


def test_allowed_transitions_are_exactly_the_documented_ones() -> None:
    assert set(ALLOWED) == EXPECTED_ALLOWED


@pytest.mark.parametrize(("current", "new"), sorted(EXPECTED_ALLOWED))
def test_allowed_transition_passes(current: Status, new: Status) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [p for p in ALL_PAIRS if p not in EXPECTED_ALLOWED])
def test_illegal_transition_raises(current: Status, new: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current} to {new}"):
        check_transition(current, new)


def test_terminal_states() -> None:
    assert {s for s in Status if s.terminal} == {Status.CONFIRMED, Status.FAILED}
    for terminal in (Status.CONFIRMED, Status.FAILED):
        for new in Status:
            with pytest.raises(IllegalTransition):
                check_transition(terminal, new)


# --- receipt checks --------------------------------------------------------------------------------------

# Topics as published for FiatToken (not derived from the code under test).
AUTHORIZATION_USED = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
AUTH_NONCE = "0xbad3767b07bd02752f0768899b107f14a16659571c09f56df989966594b2bd05"
AMOUNT = 10000
TX_HASH = "0x" + "5e" * 32
BLOCK_HASH = "0x" + "b1" * 32
FACILITATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def topic_address(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def receipt(**overrides: Any) -> dict[str, Any]:
    """Shaped like an eth_getTransactionReceipt result for FiatToken transferWithAuthorization."""
    common = {
        "blockHash": BLOCK_HASH,
        "blockNumber": "0x1b4",
        "transactionHash": TX_HASH,
        "transactionIndex": "0x0",
        "removed": False,
    }
    doc = {
        "blockHash": BLOCK_HASH,
        "blockNumber": "0x1b4",
        "contractAddress": None,
        "cumulativeGasUsed": "0x13f0c",
        "effectiveGasPrice": "0x3b9aca07",
        "from": FACILITATOR.lower(),
        "gasUsed": "0x13f0c",
        "logsBloom": "0x" + "00" * 256,
        "status": "0x1",
        "to": TOKEN.lower(),
        "transactionHash": TX_HASH,
        "transactionIndex": "0x0",
        "type": "0x2",
        "logs": [
            {
                **common,
                "address": TOKEN.lower(),
                "topics": [AUTHORIZATION_USED, topic_address(PAYER), AUTH_NONCE],
                "data": "0x",
                "logIndex": "0x0",
            },
            {
                **common,
                "address": TOKEN.lower(),
                "topics": [TRANSFER, topic_address(PAYER), topic_address(PAY_TO)],
                "data": "0x" + AMOUNT.to_bytes(32, "big").hex(),
                "logIndex": "0x1",
            },
        ],
    }
    doc.update(overrides)
    return doc


def check(doc: dict[str, Any], **kwargs: Any) -> str | None:
    args: dict[str, Any] = dict(token=TOKEN, payer=PAYER, pay_to=PAY_TO, amount=AMOUNT, auth_nonce=AUTH_NONCE)
    args.update(kwargs)
    return transfer_matches(doc, **args)


def with_log(doc: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["logs"][index].update(changes)
    return doc


def test_matching_receipt() -> None:
    doc = receipt()
    assert receipt_succeeded(doc)
    assert check(doc) is None


def test_matching_is_case_insensitive_for_addresses_and_nonce() -> None:
    doc = with_log(
        receipt(), 0, address=TOKEN, topics=[AUTHORIZATION_USED, topic_address(PAYER), AUTH_NONCE.upper()]
    )
    assert check(doc, token=TOKEN.lower(), payer=PAYER.lower(), pay_to=PAY_TO.lower()) is None


def test_wrong_amount_is_detected() -> None:
    doc = with_log(receipt(), 1, data="0x" + (AMOUNT - 1).to_bytes(32, "big").hex())
    assert check(doc) == "no Transfer event of the authorized amount to payTo"
    assert check(receipt(), amount=AMOUNT + 1) == "no Transfer event of the authorized amount to payTo"


def test_wrong_pay_to_is_detected() -> None:
    doc = with_log(receipt(), 1, topics=[TRANSFER, topic_address(PAYER), topic_address(FACILITATOR)])
    assert check(doc) == "no Transfer event of the authorized amount to payTo"


def test_transfer_from_someone_else_is_detected() -> None:
    doc = with_log(receipt(), 1, topics=[TRANSFER, topic_address(FACILITATOR), topic_address(PAY_TO)])
    assert check(doc) == "no Transfer event of the authorized amount to payTo"


def test_wrong_nonce_is_detected() -> None:
    doc = with_log(receipt(), 0, topics=[AUTHORIZATION_USED, topic_address(PAYER), "0x" + "00" * 32])
    assert check(doc) == "no AuthorizationUsed event for this payer and nonce"
    assert (
        check(receipt(), auth_nonce="0x" + "ab" * 32) == "no AuthorizationUsed event for this payer and nonce"
    )


def test_authorization_used_by_another_payer_is_detected() -> None:
    doc = with_log(receipt(), 0, topics=[AUTHORIZATION_USED, topic_address(FACILITATOR), AUTH_NONCE])
    assert check(doc) == "no AuthorizationUsed event for this payer and nonce"


@pytest.mark.parametrize("index", [0, 1])
def test_logs_from_another_contract_are_ignored(index: int) -> None:
    doc = with_log(receipt(), index, address="0x" + "66" * 20)
    assert check(doc) is not None
    # The same receipt is fine for the contract that did emit both logs.
    both = with_log(with_log(receipt(), 0, address="0x" + "66" * 20), 1, address="0x" + "66" * 20)
    assert check(both, token="0x" + "66" * 20) is None


def test_both_events_are_required() -> None:
    only_transfer = receipt(logs=receipt()["logs"][1:])
    only_used = receipt(logs=receipt()["logs"][:1])
    assert check(only_transfer) == "no AuthorizationUsed event for this payer and nonce"
    assert check(only_used) == "no Transfer event of the authorized amount to payTo"


def test_in_a_batch_the_transfer_must_follow_its_own_authorization() -> None:
    """A crafted batch: this payer's nonce is used by a tiny transfer to someone else, and another of its
    authorizations moves the full amount to payTo. Both events are there, but not as one transfer's pair."""
    base = receipt()
    used, transfer = base["logs"]
    other_nonce = "0x" + "77" * 32
    tiny = {
        **transfer,
        "topics": [TRANSFER, topic_address(PAYER), topic_address(FACILITATOR)],
        "data": "0x01",
    }
    used_elsewhere = {**used, "topics": [AUTHORIZATION_USED, topic_address(PAYER), other_nonce]}
    crafted = receipt(logs=[used, tiny, used_elsewhere, transfer])
    assert check(crafted) == "no Transfer event of the authorized amount to payTo"
    assert check(crafted, auth_nonce=other_nonce) is None  # that authorization did pay payTo
    # The same four events with each pair in place: both transfers are shown.
    assert check(receipt(logs=[used_elsewhere, tiny, used, transfer])) is None


def test_reverted_receipt() -> None:
    reverted = receipt(status="0x0", logs=[])
    assert not receipt_succeeded(reverted)
    assert check(reverted) is not None


@pytest.mark.parametrize(
    ("status", "ok"), [("0x1", True), ("1", True), ("0x0", False), (None, False), ("0x", False)]
)
def test_receipt_status(status: Any, ok: bool) -> None:
    doc = receipt()
    if status is None:
        del doc["status"]
    else:
        doc["status"] = status
    assert receipt_succeeded(doc) is ok


# --- payload_hash and response_for ------------------------------------------------------------------------


def vector_body() -> dict[str, Any]:
    vec = VECTORS["base-sepolia"]
    return copy.deepcopy(
        {
            "x402Version": 2,
            "paymentPayload": vec["paymentPayloadV2"],
            "paymentRequirements": vec["paymentRequirements"],
        }
    )


def payment(**auth_changes: str) -> ExactPayment:
    body = vector_body()
    body["paymentPayload"]["payload"]["authorization"].update(auth_changes)
    if "value" in auth_changes:
        body["paymentRequirements"]["amount"] = auth_changes["value"]
    return parse_request(body)


def test_payload_hash_is_equal_for_identical_payments() -> None:
    first, second = payment(), payment()
    assert first is not second
    assert payload_hash(first) == payload_hash(second)
    assert len(payload_hash(first)) == 64 and int(payload_hash(first), 16) >= 0


def test_payload_hash_ignores_address_spelling() -> None:
    lower = payment(**{"from": PAYER.lower(), "to": PAY_TO.lower()})
    assert payload_hash(lower) == payload_hash(payment())


def test_payload_hash_differs_when_the_signature_differs() -> None:
    base = payment()
    other_sig = dataclasses.replace(base, signature=base.signature[:64] + bytes([55 - base.signature[64]]))
    assert payload_hash(other_sig) != payload_hash(base)


@pytest.mark.parametrize(
    "changes",
    [
        {"value": "10001"},
        {"value": "9999"},
        {"nonce": "0x" + "01" * 32},
        {"validBefore": "4102444801"},
        {"validAfter": "1700000001"},
    ],
)
def test_payload_hash_differs_when_the_terms_differ(changes: dict[str, str]) -> None:
    assert payload_hash(payment(**changes)) != payload_hash(payment())


@pytest.mark.parametrize("changes", [{"validBefore": str(2**256 - 1)}, {"value": str(2**64)}])
def test_payload_hash_handles_full_uint256_values(changes: dict[str, str]) -> None:
    assert len(payload_hash(payment(**changes))) == 64


NOW_DT = datetime(2026, 1, 1, tzinfo=UTC)
KEY = SettlementKey(84532, TOKEN, PAYER, AUTH_NONCE)


def row(status: Status, **changes: Any) -> SettlementRow:
    return settlement_row(
        KEY,
        PAY_TO,
        AMOUNT,
        valid_after=1700000000,
        valid_before=4102444800,
        network="base-sepolia",
        x402_version=1,
        created_at=NOW_DT,
        updated_at=NOW_DT,
        status=status,
        **changes,
    )


def test_confirmed_row_answers_success_with_the_transaction() -> None:
    resp = response_for(row(Status.CONFIRMED, tx_hash=TX_HASH, block_number=436, gas_used=81676))
    assert resp.to_wire() == {
        "success": True,
        "payer": PAYER,
        "transaction": TX_HASH,
        "network": "base-sepolia",  # the client's own network id is echoed
        "amount": "10000",
    }


def test_failed_row_answers_its_reason() -> None:
    resp = response_for(
        row(
            Status.FAILED,
            tx_hash=TX_HASH,
            error_reason=reasons.TRANSACTION_FAILED,
            error_message="transferWithAuthorization reverted on-chain",
        )
    )
    assert resp.success is False
    assert resp.error_reason == reasons.TRANSACTION_FAILED
    assert resp.error_message == "transferWithAuthorization reverted on-chain"
    assert resp.transaction == TX_HASH
    assert resp.payer == PAYER


def test_failed_row_without_transaction_answers_empty_transaction() -> None:
    resp = response_for(row(Status.FAILED, error_reason=reasons.UNEXPECTED_SETTLE_ERROR, error_message="x"))
    assert resp.to_wire()["transaction"] == ""
    assert resp.error_reason == reasons.UNEXPECTED_SETTLE_ERROR


def test_submitted_row_answers_settlement_pending_with_the_transaction() -> None:
    resp = response_for(row(Status.SUBMITTED, tx_hash=TX_HASH))
    assert resp.success is False
    assert resp.error_reason == reasons.SETTLEMENT_PENDING
    assert resp.transaction == TX_HASH
    assert resp.error_message


def test_received_row_answers_settlement_pending() -> None:
    wire = response_for(row(Status.RECEIVED)).to_wire()
    assert wire["success"] is False
    assert wire["errorReason"] == reasons.SETTLEMENT_PENDING
    assert wire["transaction"] == ""
    assert None not in wire.values()


# --- configuration ---------------------------------------------------------------------------------------

KEY_1 = "0x" + "a1" * 32
KEY_2 = "0x" + "b2" * 32
API_KEY = "api-key-that-must-not-leak-7f3a"
DSN_PASSWORD = "dsn-password-that-must-not-leak"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("X402_") or name.upper() == "DATABASE_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def network_entry(network: str = "eip155:84532", **changes: Any) -> dict[str, Any]:
    return {"network": network, "rpc_urls": ["http://rpc.test"], "signer_keys": [KEY_1], **changes}


def test_single_chain_env_vars_fold_into_networks(env: pytest.MonkeyPatch) -> None:
    env.setenv("X402_NETWORK", "base-sepolia")
    env.setenv("X402_RPC_URLS", "http://rpc-1.test, http://rpc-2.test,")
    env.setenv("X402_SIGNER_KEYS", f"{KEY_1},{KEY_2}")
    env.setenv("X402_EIP6492_FACTORIES", "0x" + "fa" * 20)
    settings = FacilitatorSettings()
    assert len(settings.networks) == 1
    net = settings.networks[0]
    assert net.network == "eip155:84532"  # legacy name stored as CAIP-2
    assert net.chain_id == 84532
    assert net.rpc_urls == ["http://rpc-1.test", "http://rpc-2.test"]
    assert [k.get_secret_value() for k in net.signer_keys] == [KEY_1, KEY_2]
    assert net.eip6492_factories == ["0x" + "fa" * 20]


def test_no_network_configured_means_no_networks(env: pytest.MonkeyPatch) -> None:
    assert FacilitatorSettings().networks == []


def test_single_chain_is_added_to_listed_networks(env: pytest.MonkeyPatch) -> None:
    env.setenv("X402_NETWORK", "eip155:8453")
    env.setenv("X402_RPC_URLS", "http://base.test")
    env.setenv("X402_SIGNER_KEYS", KEY_2)
    settings = FacilitatorSettings(networks=[network_entry()])
    assert [n.chain_id for n in settings.networks] == [84532, 8453]


@pytest.mark.parametrize("single", ["base-sepolia", "eip155:84532"])
def test_duplicate_network_is_refused(env: pytest.MonkeyPatch, single: str) -> None:
    env.setenv("X402_NETWORK", single)
    env.setenv("X402_RPC_URLS", "http://rpc.test")
    env.setenv("X402_SIGNER_KEYS", KEY_1)
    with pytest.raises(ValidationError, match="configured twice"):
        FacilitatorSettings(networks=[network_entry("eip155:84532")])


def test_duplicate_within_the_network_list_is_refused(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="configured twice"):
        FacilitatorSettings(networks=[network_entry("base"), network_entry("eip155:8453")])


def test_missing_rpc_urls_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("X402_NETWORK", "base-sepolia")
    env.setenv("X402_SIGNER_KEYS", KEY_1)
    with pytest.raises(ValidationError, match="has no rpc_urls"):
        FacilitatorSettings()
    with pytest.raises(ValidationError, match="has no rpc_urls"):
        FacilitatorSettings(network=None, networks=[network_entry(rpc_urls=[])])


def test_missing_signer_keys_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("X402_NETWORK", "base-sepolia")
    env.setenv("X402_RPC_URLS", "http://rpc.test")
    with pytest.raises(ValidationError, match="has no signer_keys"):
        FacilitatorSettings()


def test_unknown_network_is_refused(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="mars"):
        FacilitatorSettings(networks=[network_entry("mars")])


def test_builtin_tokens_are_used_when_none_are_configured(env: pytest.MonkeyPatch) -> None:
    settings = FacilitatorSettings(networks=[network_entry("eip155:84532"), network_entry("base")])
    sepolia, base = settings.networks
    assert sepolia.token_list() == [t for t in BUILTIN_TOKENS if t.chain_id == 84532]
    assert [(t.address, t.name, t.version, t.decimals) for t in sepolia.token_list()] == [
        ("0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2", 6)
    ]
    assert [t.name for t in base.token_list()] == ["USD Coin"]


def test_configured_tokens_replace_the_builtin_ones(env: pytest.MonkeyPatch) -> None:
    custom = {
        "address": "0x" + "c0" * 20,
        "name": "Test USD",
        "version": "1",
        "decimals": 18,
        "symbol": "TUSD",
    }
    settings = FacilitatorSettings(networks=[network_entry(tokens=[custom])])
    (token,) = settings.networks[0].token_list()
    assert (token.chain_id, token.address.lower(), token.name, token.version, token.decimals) == (
        84532,
        "0x" + "c0" * 20,
        "Test USD",
        "1",
        18,
    )
    assert token.address != token.address.lower()  # checksummed


def test_secrets_are_not_shown(env: pytest.MonkeyPatch) -> None:
    env.setenv("X402_NETWORK", "base-sepolia")
    env.setenv("X402_RPC_URLS", "http://rpc.test")
    env.setenv("X402_SIGNER_KEYS", f"{KEY_1},{KEY_2}")
    env.setenv("X402_API_KEYS", API_KEY)
    env.setenv("X402_RECEIPT_KEY", "0x" + "c3" * 32)
    env.setenv("DATABASE_URL", f"postgresql://x402:{DSN_PASSWORD}@db.test/x402")
    settings = FacilitatorSettings()
    assert settings.networks[0].signer_keys[0].get_secret_value() == KEY_1
    assert settings.api_keys[0].get_secret_value() == API_KEY
    assert settings.database_url is not None and DSN_PASSWORD in settings.database_url.get_secret_value()
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.networks[0])):
        for secret in (KEY_1, KEY_1[2:], KEY_2, API_KEY, DSN_PASSWORD, "c3" * 32):
            assert secret not in text
