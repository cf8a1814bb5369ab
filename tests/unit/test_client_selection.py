"""Choosing an option under spending limits: pure, so every rule is checked here without a server."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from client.challenge import PaymentChallenge, PaymentOption
from client.selection import (
    ASSET_NOT_ALLOWED,
    MALFORMED_OPTION,
    MISSING_EIP712_DOMAIN,
    NETWORK_NOT_ALLOWED,
    OVER_LIMIT,
    UNPRICEABLE_ASSET,
    UNSUPPORTED_NETWORK,
    UNSUPPORTED_SCHEME,
    UNSUPPORTED_TRANSFER_METHOD,
    VALIDITY_TOO_LONG,
    Choice,
    Refusal,
    SpendingPolicy,
    select_option,
)
from shared.x402.models import PaymentRequirementsV1, PaymentRequirementsV2

BASE_SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
OTHER_TOKEN = "0x1111111111111111111111111111111111111111"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def v2(index: int = 0, **overrides: Any) -> PaymentOption:
    raw = {
        "scheme": "exact",
        "network": "eip155:84532",
        "amount": "10000",
        "asset": BASE_SEPOLIA_USDC,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
        **overrides,
    }
    return PaymentOption(index, PaymentRequirementsV2.model_validate(raw), raw)


def v1(index: int = 0, **overrides: Any) -> PaymentOption:
    raw = {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": "10000",
        "asset": BASE_SEPOLIA_USDC,
        "payTo": PAY_TO,
        "resource": "http://x/",
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
        **overrides,
    }
    return PaymentOption(index, PaymentRequirementsV1.model_validate(raw), raw)


def challenge(*options: PaymentOption, malformed: tuple[tuple[int, str], ...] = ()) -> PaymentChallenge:
    return PaymentChallenge(options[0].x402_version if options else 2, options, malformed)


def refusal(result: Choice | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


USD_5C = SpendingPolicy(max_usd=Decimal("0.05"))


def test_cheap_enough_option_is_chosen_with_its_dollar_price():
    result = select_option(challenge(v2(amount="50000")), USD_5C)  # exactly the limit
    assert isinstance(result, Choice)
    assert result.usd == Decimal("0.05")


def test_usd_limit_refuses_one_base_unit_more():
    r = refusal(select_option(challenge(v2(amount="50001")), USD_5C))
    assert r.code == OVER_LIMIT
    assert r.reason == (
        "no acceptable payment option: option #1 exact 50001 of "
        f"{BASE_SEPOLIA_USDC} on eip155:84532: price $0.050001 exceeds the limit of $0.05 per request"
    )


def test_usd_limit_rounds_down_never_up():
    policy = SpendingPolicy(max_usd=Decimal("0.0000019"))  # 1.9 base units: only 1 is allowed
    assert isinstance(select_option(challenge(v2(amount="1")), policy), Choice)
    assert refusal(select_option(challenge(v2(amount="2")), policy)).code == OVER_LIMIT


def test_usd_limit_knows_both_builtin_usdc_and_nothing_else():
    mainnet = v2(network="eip155:8453", asset=BASE_USDC.lower(), extra={"name": "USD Coin", "version": "2"})
    assert isinstance(select_option(challenge(mainnet), USD_5C), Choice)
    # USDC's address on the wrong chain is not USDC.
    wrong_chain = v2(network="eip155:1", asset=BASE_SEPOLIA_USDC)
    assert refusal(select_option(challenge(wrong_chain), USD_5C)).code == UNPRICEABLE_ASSET
    r = refusal(select_option(challenge(v2(asset=OTHER_TOKEN)), USD_5C))
    assert r.code == UNPRICEABLE_ASSET and "not a known USD stablecoin" in r.reason


def test_atomic_limit_applies_to_any_token():
    policy = SpendingPolicy(max_atomic=10_000)
    assert isinstance(select_option(challenge(v2(asset=OTHER_TOKEN)), policy), Choice)
    r = refusal(select_option(challenge(v2(amount="10001")), policy))
    assert r.code == OVER_LIMIT and "exceeds the limit of 10000 atomic units" in r.reason


def test_both_limits_must_hold():
    policy = SpendingPolicy(max_atomic=5_000, max_usd=Decimal("1"))
    assert refusal(select_option(challenge(v2(amount="6000")), policy)).code == OVER_LIMIT


def test_network_allow_list_accepts_v1_names_and_caip2_alike():
    by_name = SpendingPolicy(max_usd=Decimal("1"), networks=frozenset({"base-sepolia"}))
    by_caip2 = SpendingPolicy(max_usd=Decimal("1"), networks=frozenset({"eip155:84532"}))
    for policy in (by_name, by_caip2):
        assert isinstance(select_option(challenge(v2()), policy), Choice)
        assert isinstance(select_option(challenge(v1()), policy), Choice)
    mainnet_only = SpendingPolicy(max_usd=Decimal("1"), networks=frozenset({"eip155:8453"}))
    r = refusal(select_option(challenge(v2()), mainnet_only))
    assert r.code == NETWORK_NOT_ALLOWED
    assert "network eip155:84532 is not in the allowed networks (eip155:8453)" in r.reason


def test_asset_allow_list_takes_addresses_any_case_or_known_symbols():
    for entry in (BASE_SEPOLIA_USDC.lower(), "usdc"):
        policy = SpendingPolicy(max_atomic=10**9, assets=frozenset({entry}))
        assert isinstance(select_option(challenge(v2()), policy), Choice)
    policy = SpendingPolicy(max_atomic=10**9, assets=frozenset({"USDC"}))
    assert refusal(select_option(challenge(v2(asset=OTHER_TOKEN)), policy)).code == ASSET_NOT_ALLOWED


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"scheme": "upto"}, UNSUPPORTED_SCHEME),
        ({"network": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"}, UNSUPPORTED_NETWORK),
        ({"network": "eip155:08453"}, UNSUPPORTED_NETWORK),
        (
            {"extra": {"name": "USDC", "version": "2", "assetTransferMethod": "permit2"}},
            UNSUPPORTED_TRANSFER_METHOD,
        ),
        ({"extra": {"name": "USDC"}}, MISSING_EIP712_DOMAIN),
        ({"extra": None}, MISSING_EIP712_DOMAIN),
        ({"payTo": "merchant"}, MALFORMED_OPTION),
        ({"maxTimeoutSeconds": 0}, MALFORMED_OPTION),
    ],
)
def test_what_this_client_cannot_pay(overrides, code):
    r = refusal(select_option(challenge(v2(**overrides)), SpendingPolicy(max_atomic=10**18)))
    assert r.code == code, r.reason


def test_explicit_eip3009_transfer_method_is_fine():
    option = v2(extra={"name": "USDC", "version": "2", "assetTransferMethod": "eip3009", "challengeId": "x"})
    assert isinstance(select_option(challenge(option), USD_5C), Choice)


def test_first_acceptable_option_in_server_order_wins():
    options = (v2(0, amount="90000"), v2(1, scheme="upto"), v2(2, amount="30000"), v2(3, amount="20000"))
    result = select_option(challenge(*options), USD_5C)
    assert isinstance(result, Choice) and result.option.index == 2


def test_refusal_lists_every_option_in_order_including_malformed():
    r = refusal(
        select_option(
            challenge(
                v2(1, amount="90000"), v2(2, network="eip155:8453"), malformed=((0, "not a JSON object"),)
            ),
            SpendingPolicy(max_usd=Decimal("0.05"), networks=frozenset({"eip155:84532"})),
        )
    )
    assert [(x.index, x.code) for x in r.rejections] == [
        (0, MALFORMED_OPTION),
        (1, OVER_LIMIT),
        (2, NETWORK_NOT_ALLOWED),
    ]
    assert r.code == "no_acceptable_option"
    assert r.reason.startswith(
        "no acceptable payment option: option #1: not a JSON object; option #2 exact 90000"
    )


def test_empty_accepts():
    r = refusal(select_option(PaymentChallenge(2, ()), USD_5C))
    assert (r.code, r.reason) == ("no_payment_options", "the server offers no payment options")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_atomic": -1},
        {"max_usd": Decimal("-0.01")},
        {"max_usd": Decimal("NaN")},
        {"max_usd": Decimal("1"), "networks": frozenset({"narnia"})},
        {"max_usd": Decimal("1"), "assets": frozenset({""})},
        {"max_usd": Decimal("1"), "max_valid_seconds": 0},
    ],
)
def test_policy_rejects_nonsense_up_front(kwargs):
    with pytest.raises(ValueError):
        SpendingPolicy(**kwargs)


def test_an_authorization_may_not_be_asked_to_live_longer_than_the_policy_allows():
    # Whoever holds a signed authorization can spend it until validBefore = now + maxTimeoutSeconds.
    day = 86_400
    assert isinstance(select_option(challenge(v2(maxTimeoutSeconds=day)), USD_5C), Choice)
    years = refusal(select_option(challenge(v2(maxTimeoutSeconds=10 * 365 * day)), USD_5C))
    assert [r.code for r in years.rejections] == [VALIDITY_TOO_LONG]
    short = SpendingPolicy(max_usd=Decimal("0.05"), max_valid_seconds=300)
    assert isinstance(select_option(challenge(v2(maxTimeoutSeconds=300)), short), Choice)
    too_long = refusal(select_option(challenge(v2(maxTimeoutSeconds=301)), short))
    assert [r.code for r in too_long.rejections] == [VALIDITY_TOO_LONG]
