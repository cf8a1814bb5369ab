"""shared.evm.transfer_logs: whether a mined receipt's logs show one EIP-3009 transfer, the check both the
facilitator (before confirming a settlement) and `x402 receipt` make."""

from __future__ import annotations

from typing import Any

import pytest

from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from shared.evm.transfer_logs import MissingEvent, missing_transfer_event

TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OTHER_CONTRACT = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAYER_A = "0x2222222222222222222222222222222222222222"
PAYER_B = "0x3333333333333333333333333333333333333333"
PAY_TO = "0x4444444444444444444444444444444444444444"
ELSEWHERE = "0x5555555555555555555555555555555555555555"
NONCE_1 = "0x" + "a1" * 32
NONCE_2 = "0x" + "b2" * 32
NONCE_3 = "0x" + "c3" * 32
USED = "0x" + AUTHORIZATION_USED_TOPIC.hex()
TRANSFER = "0x" + TRANSFER_TOPIC.hex()
APPROVAL = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"

AUTHORIZATION_USED_MISSING = MissingEvent.AUTHORIZATION_USED
TRANSFER_MISSING = MissingEvent.TRANSFER


def topic(address: str) -> str:
    return "0x" + address[2:].lower().rjust(64, "0")


def used(payer: str, nonce: str, address: str = TOKEN) -> dict[str, Any]:
    return {"address": address, "topics": [USED, topic(payer), nonce], "data": "0x"}


def moved(payer: str, to: str, amount: int, address: str = TOKEN) -> dict[str, Any]:
    return {
        "address": address,
        "topics": [TRANSFER, topic(payer), topic(to)],
        "data": "0x" + amount.to_bytes(32, "big").hex(),
    }


def missing(logs: Any, **kwargs: Any) -> MissingEvent | None:
    args: dict[str, Any] = dict(token=TOKEN, payer=PAYER_A, pay_to=PAY_TO, amount=100, nonce=NONCE_1)
    args.update(kwargs)
    return missing_transfer_event({"status": "0x1", "logs": logs}, **args)


def test_a_single_transfer_is_shown():
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)]) is None


def test_addresses_and_nonce_match_whatever_their_case():
    logs = [
        {
            **used(PAYER_A, NONCE_1),
            "address": TOKEN.lower(),
            "topics": [USED.upper().replace("0X", "0x"), topic(PAYER_A), NONCE_1.upper()],
        },
        {**moved(PAYER_A, PAY_TO, 100), "address": TOKEN.upper().replace("0X", "0x")},
    ]
    assert missing(logs) is None
    assert missing(logs, token=TOKEN.lower(), nonce=NONCE_1.upper().replace("0X", "0x")) is None
    shouted = [
        {"address": TOKEN.upper(), "topics": [t.upper() for t in log["topics"]], "data": log["data"].upper()}
        for log in [used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)]
    ]
    assert missing(shouted, token=TOKEN.upper(), payer=PAYER_A.upper(), pay_to=PAY_TO.upper()) is None


def test_an_amount_in_unpadded_hex_is_read():
    assert missing([used(PAYER_A, NONCE_1), {**moved(PAYER_A, PAY_TO, 100), "data": hex(100)}]) is None


def test_a_batch_shows_each_transfer_by_its_own_pair():
    """Three calls of one Multicall3 batch; payer A signed two of them, with different nonces."""
    logs = [
        used(PAYER_A, NONCE_1),
        moved(PAYER_A, PAY_TO, 100),
        used(PAYER_B, NONCE_2),
        moved(PAYER_B, PAY_TO, 250),
        used(PAYER_A, NONCE_3),
        moved(PAYER_A, PAY_TO, 300),
    ]
    assert missing(logs) is None
    assert missing(logs, payer=PAYER_B, nonce=NONCE_2, amount=250) is None
    assert missing(logs, nonce=NONCE_3, amount=300) is None
    # Each nonce vouches for its own call's amount only, though the same payer paid payTo both.
    assert missing(logs, amount=300) is TRANSFER_MISSING
    assert missing(logs, nonce=NONCE_3, amount=100) is TRANSFER_MISSING
    # B's nonce is not A's authorization, nor A's nonce B's.
    assert missing(logs, nonce=NONCE_2, amount=250) is AUTHORIZATION_USED_MISSING
    assert missing(logs, payer=PAYER_B, amount=100) is AUTHORIZATION_USED_MISSING


def test_a_wrong_amount_is_missing_the_transfer():
    logs = [used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 99)]
    assert missing(logs) is TRANSFER_MISSING
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)], amount=101) is TRANSFER_MISSING


def test_a_wrong_pay_to_is_missing_the_transfer():
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, ELSEWHERE, 100)]) is TRANSFER_MISSING
    assert (
        missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)], pay_to=ELSEWHERE) is TRANSFER_MISSING
    )


def test_either_event_alone_is_not_enough():
    assert missing([moved(PAYER_A, PAY_TO, 100)]) is AUTHORIZATION_USED_MISSING
    assert missing([used(PAYER_A, NONCE_1)]) is TRANSFER_MISSING
    assert missing([moved(PAYER_A, PAY_TO, 100), used(PAYER_A, NONCE_1)]) is TRANSFER_MISSING  # wrong order
    assert missing([]) is AUTHORIZATION_USED_MISSING


def test_another_calls_transfer_does_not_vouch_for_this_authorization():
    # This call failed inside the batch yet its AuthorizationUsed is there (say, a token emitting it
    # first): B's call comes next, and A's Transfer after B's AuthorizationUsed belongs to another call.
    assert missing([used(PAYER_A, NONCE_1), used(PAYER_B, NONCE_2), moved(PAYER_A, PAY_TO, 100)]) is (
        TRANSFER_MISSING
    )
    # A's nonce 1 paid someone else a tiny amount; A's nonce 2 paid payTo in full.
    crafted = [
        used(PAYER_A, NONCE_1),
        moved(PAYER_A, ELSEWHERE, 1),
        used(PAYER_A, NONCE_2),
        moved(PAYER_A, PAY_TO, 100),
    ]
    assert missing(crafted) is TRANSFER_MISSING
    assert missing(crafted, nonce=NONCE_2) is None


def test_the_payers_first_transfer_after_its_authorization_is_the_one():
    logs = [used(PAYER_A, NONCE_1), moved(PAYER_A, ELSEWHERE, 1), moved(PAYER_A, PAY_TO, 100)]
    assert missing(logs) is TRANSFER_MISSING


def test_unrelated_events_of_the_token_between_the_pair_are_accepted():
    approval = {"address": TOKEN, "topics": [APPROVAL, topic(PAYER_A), topic(ELSEWHERE)], "data": hex(5)}
    fee_mint = moved("0x" + "00" * 20, ELSEWHERE, 3)  # a Transfer, but not from the payer
    anonymous = {"address": TOKEN, "topics": [], "data": "0x"}
    logs = [used(PAYER_A, NONCE_1), approval, fee_mint, anonymous, moved(PAYER_A, PAY_TO, 100)]
    assert missing(logs) is None


def test_any_authorization_used_of_the_token_ends_the_pairing_even_a_malformed_one():
    malformed = {"address": TOKEN, "topics": [USED, topic(PAYER_B)], "data": "0x"}
    assert missing([used(PAYER_A, NONCE_1), malformed, moved(PAYER_A, PAY_TO, 100)]) is TRANSFER_MISSING


def test_logs_of_other_contracts_are_ignored():
    # Another contract's events neither pair nor part the token's own.
    between = [used(PAYER_B, NONCE_2, OTHER_CONTRACT), moved(PAYER_A, ELSEWHERE, 1, OTHER_CONTRACT)]
    assert missing([used(PAYER_A, NONCE_1), *between, moved(PAYER_A, PAY_TO, 100)]) is None
    assert missing([used(PAYER_A, NONCE_1, OTHER_CONTRACT), moved(PAYER_A, PAY_TO, 100)]) is (
        AUTHORIZATION_USED_MISSING
    )
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100, OTHER_CONTRACT)]) is TRANSFER_MISSING
    both_elsewhere = [used(PAYER_A, NONCE_1, OTHER_CONTRACT), moved(PAYER_A, PAY_TO, 100, OTHER_CONTRACT)]
    assert missing(both_elsewhere) is AUTHORIZATION_USED_MISSING
    assert missing(both_elsewhere, token=OTHER_CONTRACT) is None


@pytest.mark.parametrize("data", [None, "", "0x", "0xzz", "64", "0x" + "00" * 31 + "64" + "00", 100])
def test_a_transfer_without_a_readable_amount_is_not_shown(data):
    transfer = {**moved(PAYER_A, PAY_TO, 100), "data": data}
    assert missing([used(PAYER_A, NONCE_1), transfer]) is TRANSFER_MISSING
    no_data = moved(PAYER_A, PAY_TO, 100)
    del no_data["data"]
    assert missing([used(PAYER_A, NONCE_1), no_data]) is TRANSFER_MISSING


def test_a_zero_amount_needs_its_zero_word():
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 0)], amount=0) is None
    empty = {**moved(PAYER_A, PAY_TO, 0), "data": "0x"}
    assert missing([used(PAYER_A, NONCE_1), empty], amount=0) is TRANSFER_MISSING


@pytest.mark.parametrize(
    "topics",
    [
        [TRANSFER, topic(PAYER_A)],  # no recipient
        [TRANSFER, topic(PAYER_A), topic(PAY_TO), "0x" + "00" * 32],  # ERC-721's Transfer, a token id
        [TRANSFER, topic(PAYER_A), "0x" + "ff" * 12 + PAY_TO[2:]],  # not a zero-padded address
        [TRANSFER, topic(PAYER_A), PAY_TO],  # an address, not a topic
    ],
)
def test_a_malformed_transfer_from_the_payer_is_its_transfer_and_not_shown(topics):
    transfer = {**moved(PAYER_A, PAY_TO, 100), "topics": topics}
    assert missing([used(PAYER_A, NONCE_1), transfer, moved(PAYER_A, PAY_TO, 100)]) is TRANSFER_MISSING


@pytest.mark.parametrize(
    "topics",
    [
        [USED, topic(PAYER_A)],  # no nonce
        [USED, topic(PAYER_A), NONCE_1, NONCE_1],
        [USED, "0x" + "ff" * 12 + PAYER_A[2:], NONCE_1],  # not a zero-padded address
        [USED, topic(PAYER_A), NONCE_1[:-2]],  # a short nonce
        [USED.replace("0x", ""), topic(PAYER_A), NONCE_1],
    ],
)
def test_a_malformed_authorization_used_is_not_ours(topics):
    logs = [{**used(PAYER_A, NONCE_1), "topics": topics}, moved(PAYER_A, PAY_TO, 100)]
    assert missing(logs) is AUTHORIZATION_USED_MISSING


@pytest.mark.parametrize(
    "logs",
    [
        None,
        "0x",
        {"address": TOKEN},
        [None, "log", 7],
        [{"address": None, "topics": [USED, topic(PAYER_A), NONCE_1]}],
        [{"address": TOKEN, "topics": None}, {"address": TOKEN, "topics": "0x"}, {"address": TOKEN}],
        [{"address": TOKEN, "topics": [None, 1, b"\x00"]}],
    ],
)
def test_malformed_logs_show_nothing_and_raise_nothing(logs):
    assert missing(logs) is AUTHORIZATION_USED_MISSING
    assert missing_transfer_event(
        {}, token=TOKEN, payer=PAYER_A, pay_to=PAY_TO, amount=100, nonce=NONCE_1
    ) is (AUTHORIZATION_USED_MISSING)


@pytest.mark.parametrize(
    "bad",
    [
        {"token": "usdc"},
        {"token": ""},
        {"payer": PAYER_A[:-2]},
        {"nonce": NONCE_1[:-2]},
        {"nonce": "0x"},
    ],
)
def test_malformed_expectations_match_nothing(bad):
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)], **bad) is AUTHORIZATION_USED_MISSING


def test_a_malformed_pay_to_matches_no_malformed_recipient():
    # Neither side is an address: that must not count as the same recipient.
    transfer = {**moved(PAYER_A, PAY_TO, 100), "topics": [TRANSFER, topic(PAYER_A), "0xnothing"]}
    assert missing([used(PAYER_A, NONCE_1), transfer], pay_to="nothing") is TRANSFER_MISSING
    assert missing([used(PAYER_A, NONCE_1), moved(PAYER_A, PAY_TO, 100)], pay_to="0x44") is TRANSFER_MISSING
