"""The pure pricing engine: exact decimals, rounding up to atomic units, parameter validation, the TOML."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from resource_server.pricing.engine import PricingError, quote
from resource_server.pricing.loader import PricingConfigError, load_pricing, parse_pricing
from resource_server.pricing.money import MoneyError, format_decimal, parse_money, to_atomic
from resource_server.pricing.params import (
    ParamError,
    ParamSource,
    ParamSpec,
    ParamType,
    ParamValue,
    canonical_json,
    params_hash,
    validate_params,
)
from resource_server.pricing.paths import PatternError, compile_pattern

PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pricing.toml"


def config(routes: str, *, accepts: str = '[{ network = "eip155:84532", token = "USDC" }]', extra: str = ""):
    import tomllib

    text = f'[defaults]\npay_to = "{PAY_TO}"\naccepts = {accepts}\n{extra}\n{routes}'
    return parse_pricing(tomllib.loads(text))


RENDER = """
[[routes]]
method = "POST"
path = "/render"
[routes.params.duration]
type = "number"
min = 0
max = 600
[routes.params.resolution]
type = "enum"
values = ["480p", "1080p"]
default = "480p"
[routes.price]
base = "$0.0004"
factors = [{ param = "duration" }, { param = "resolution", table = { "480p" = "1", "1080p" = "2.25" } }]
markup_percent = "10"
markup = "$0.002"
"""


# -- money -----------------------------------------------------------------------------------------------


def test_money_parses_dollars_and_token_units_and_refuses_the_rest():
    assert parse_money("$0.01").amount == Decimal("0.01") and parse_money("$0.01").is_usd
    token = parse_money({"atomic": "2500", "token": "USDC"})
    assert (token.amount, token.unit, token.is_usd) == (Decimal(2500), "USDC", False)
    for bad in (
        "0.01",
        "$1e-3",
        "$-1",
        "$0.0.1",
        "$",
        0.01,
        {"atomic": "1.5", "token": "USDC"},
        {"atomic": "1"},
    ):
        with pytest.raises(MoneyError):
            parse_money(bad)


def test_to_atomic_rounds_up_only_when_inexact():
    assert to_atomic(Decimal("0.01388"), 6) == (Decimal("13880.00"), 13880)
    assert to_atomic(Decimal("0.0000001"), 6) == (Decimal("0.1"), 1)  # a tenth of a unit costs a whole unit
    assert to_atomic(Decimal("1.0000000000000000000001"), 6)[1] == 1_000_001
    assert format_decimal(Decimal("1.500")) == "1.5" and format_decimal(Decimal("1E+2")) == "100"


# -- params ----------------------------------------------------------------------------------------------


def spec(**kw) -> ParamSpec:
    base = {"name": "p", "type": ParamType.INTEGER, "source": ParamSource.QUERY}
    return ParamSpec(**{**base, **kw})


def test_params_coerce_types_and_enforce_bounds_and_enums():
    n = spec(type=ParamType.NUMBER, minimum=Decimal(0), maximum=Decimal("2.5"))
    assert validate_params([n], {"p": "2.5"}) == {"p": Decimal("2.5")}
    assert validate_params([n], {"p": Decimal("0.1")}) == {"p": Decimal("0.1")}
    with pytest.raises(ParamError, match=r"at most 2\.5"):
        validate_params([n], {"p": "2.51"})
    with pytest.raises(ParamError, match="decimal number"):
        validate_params([n], {"p": "1e3"})
    i = spec(minimum=Decimal(1))
    assert validate_params([i], {"p": "12"}) == {"p": 12}
    assert validate_params([i], {"p": Decimal("3.0")}) == {"p": 3}
    for bad in ("1.5", True, "x", Decimal("2.5")):
        with pytest.raises(ParamError) as err:
            validate_params([i], {"p": bad})
        assert err.value.param == "p"
    with pytest.raises(ParamError, match="is required"):
        validate_params([i], {})
    e = spec(type=ParamType.ENUM, values=("a", "b"), default="a", required=False)
    assert validate_params([e], {}) == {"p": "a"}
    with pytest.raises(ParamError, match="one of a, b"):
        validate_params([e], {"p": "c"})
    b = spec(type=ParamType.BOOLEAN)
    assert validate_params([b], {"p": "true"}) == {"p": True}
    s = spec(type=ParamType.STRING, max_length=3)
    with pytest.raises(ParamError, match="at most 3 characters"):
        validate_params([s], {"p": "abcd"})
    assert validate_params([i], {"p": 5, "unpriced": "ignored"}) == {"p": 5}


def test_params_hash_is_canonical():
    a: dict[str, ParamValue] = {"duration": Decimal("1.50"), "resolution": "1080p"}
    b: dict[str, ParamValue] = {"resolution": "1080p", "duration": Decimal("1.5")}
    assert canonical_json(a) == b'{"duration":"1.5","resolution":"1080p"}'
    assert (
        params_hash(a) == params_hash(b) != params_hash({"duration": Decimal("1.6"), "resolution": "1080p"})
    )


# -- paths -----------------------------------------------------------------------------------------------


def test_path_patterns():
    assert compile_pattern("/items/{id}").match("/items/42") == {"id": "42"}
    assert compile_pattern("/items/{id}").match("/items/42/more") is None
    star = compile_pattern("/files/*")
    assert star.match("/files") == {} and star.match("/files/a/b.txt") == {} and star.match("/filesx") is None
    assert compile_pattern("/*").match("/anything/at/all") == {}
    for bad in ("items", "/a/*/b", "/a/{x}{y}", "/a/{x}/{x}", "/a/b*"):
        with pytest.raises(PatternError):
            compile_pattern(bad)


# -- engine ----------------------------------------------------------------------------------------------


def test_dynamic_price_is_exact_and_rounded_up_per_token():
    route = config(RENDER).routes[0]
    q = quote(route, validate_params(route.params, {"duration": "12", "resolution": "1080p"}))
    assert q.total == Decimal("0.01388")
    assert [(s.param, s.multiplier, s.subtotal) for s in q.steps] == [
        ("duration", Decimal(12), Decimal("0.0048")),
        ("resolution", Decimal("2.25"), Decimal("0.0108")),
    ]
    assert q.amounts[0].atomic == 13880 and not q.amounts[0].rounded_up

    # 0.0004 × 0.3333 × 2.25 × 1.1 + 0.002 = 0.002329967 dollars = 2329.967 units -> 2330
    q = quote(route, validate_params(route.params, {"duration": "0.3333", "resolution": "1080p"}))
    assert q.total == Decimal("0.002329967")
    assert (q.amounts[0].exact, q.amounts[0].atomic, q.amounts[0].rounded_up) == (
        Decimal("2329.967"),
        2330,
        True,
    )
    assert q.breakdown()["amounts"][0] == {
        "network": "eip155:84532",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "symbol": "USDC",
        "decimals": 6,
        "payTo": PAY_TO,
        "exact": "2329.967",
        "amount": "2330",
        "roundedUp": True,
    }


def test_no_binary_float_anywhere():
    # 0.1 + 0.2 in floats is 0.30000000000000004; here a tenth-of-a-cent price stays exact.
    route = config(
        '[[routes]]\npath = "/x"\nprice = { base = "$0.1", factors = [{ param = "n" }], markup = "$0.2" }\n'
        "[routes.params.n]\ntype = 'number'\nmin = 0\n"
    ).routes[0]
    q = quote(route, validate_params(route.params, {"n": "1"}))
    assert q.total == Decimal("0.3") and q.amounts[0].atomic == 300_000


def test_minimum_percent_markup_and_zero_prices():
    route = config(
        '[[routes]]\npath = "/x"\n[routes.params.n]\ntype = "integer"\nmin = 0\n'
        '[routes.price]\nbase = "$0.001"\nfactors = [{ param = "n" }]\n'
        'markup_percent = "12.5"\nminimum = "$0.002"\n'
    ).routes[0]
    assert quote(route, {"n": 1}).total == Decimal("0.002")  # 0.001 × 1.125 is below the minimum
    assert quote(route, {"n": 4}).total == Decimal("0.0045")
    free = config(
        '[[routes]]\npath = "/x"\n[routes.params.n]\ntype = "integer"\nmin = 0\n'
        '[routes.price]\nbase = "$0.001"\nfactors = [{ param = "n" }]\n'
    ).routes[0]
    with pytest.raises(PricingError, match="zero"):
        quote(free, {"n": 0})


def test_token_unit_prices_round_up_to_whole_units():
    route = config(
        '[[routes]]\npath = "/x"\n[routes.params.n]\ntype = "number"\nmin = 0\n'
        '[routes.price]\nbase = { atomic = "3", token = "USDC" }\nfactors = [{ param = "n" }]\n'
    ).routes[0]
    q = quote(route, {"n": Decimal("0.5")})
    assert (q.total, q.amounts[0].atomic) == (Decimal("1.5"), 2)


# -- loader ----------------------------------------------------------------------------------------------


def test_example_pricing_file_loads():
    pricing = load_pricing(EXAMPLE, default_pay_to=PAY_TO)
    assert [r.key for r in pricing.routes] == ["GET /weather", "GET /items/{id}", "POST /render"]
    render = pricing.match("POST", "/render")
    assert render is not None
    q = quote(render.route, validate_params(render.route.params, {"duration": 12, "resolution": "1080p"}))
    assert q.amounts[0].atomic == 13880  # the worked example in the file's comments
    item = pricing.match("GET", "/items/5")
    assert item is not None and item.path_params == {"id": "5"} and item.route.settlement == "before"
    assert pricing.match("OPTIONS", "/weather") is None and pricing.match("DELETE", "/weather") is None
    head = pricing.match("HEAD", "/weather")  # runs the GET handler: priced like GET
    assert head is not None and head.route.key == "GET /weather"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ('[[routes]]\npath = "/x"\nprice = "1 dollar"', 'not a dollar amount like "$0.01"'),
        ('[[routes]]\npath = "/x"\nprice = "$0.00"', "must be above zero"),
        ('[[routes]]\npath = "/x"\nprice = "$1"\ncolour = "red"', "Extra inputs are not permitted"),
        ('[[routes]]\nmethod = "FETCH"\npath = "/x"\nprice = "$1"', "method must be one of"),
        (
            '[[routes]]\npath = "/x"\nprice = "$1"\naccepts = [{ network = "eip155:1", token = "USDC" }]',
            "no token",
        ),
        ('[[routes]]\npath = "/x"\nprice = "$1"\naccepts = [{ network = "nowhere" }]', "unknown network"),
        ('[[routes]]\npath = "/x"\nprice = { atomic = "1", token = "EURC" }', "price is in EURC units"),
        (
            '[[routes]]\npath = "/x"\nprice = { base = "$1", factors = [{ param = "n" }] }',
            "'n' is not declared",
        ),
        ('[[routes]]\npath = "/x"\nprice = "$1"\n[[routes]]\npath = "/x"\nprice = "$2"', "configured twice"),
        (
            '[[routes]]\npath = "/x"\n[routes.params.n]\ntype = "integer"\n'
            '[routes.price]\nbase = "$1"\nfactors = [{ param = "n" }]',
            "needs min >= 0",
        ),
        (
            '[[routes]]\npath = "/x"\n[routes.params.r]\ntype = "enum"\nvalues = ["a", "b"]\n'
            '[routes.price]\nbase = "$1"\nfactors = [{ param = "r", table = { a = "1" } }]',
            "exactly the keys",
        ),
        ('[[routes]]\npath = "/x"\nprice = "$1"\n[routes.params.n]\ntype = "enum"', "an enum needs values"),
        ('[[routes]]\npath = "/x"\nprice = "$1"\n[routes.params.n]\ntype = "integer"\nin = "path"', "no {n}"),
        (
            '[[routes]]\npath = "/x"\nprice = "$1"\n[routes.params.n]\ntype = "integer"\nmin = 5\nmax = 1',
            "above",
        ),
        (
            '[[routes]]\npath = "/x"\nprice = "$1"\n'
            '[routes.params.n]\ntype = "enum"\nvalues=["a"]\ndefault = "b"',
            "one of a",
        ),
    ],
)
def test_loader_errors_name_their_place(routes, message):
    with pytest.raises(PricingConfigError, match=None) as err:
        config(routes)
    assert message in str(err.value), str(err.value)


def test_dollar_prices_need_usd_tokens_and_payees_are_required():
    eurc = (
        '[[tokens]]\nsymbol = "EURC"\nnetwork = "eip155:84532"\n'
        'address = "0x808456652fdb597867f38412077A9182bf77359F"\nname = "EURC"\nversion = "2"\n'
    )
    with pytest.raises(PricingConfigError, match="needs USD stablecoins"):
        config(
            '[[routes]]\npath = "/x"\nprice = "$1"',
            accepts='[{ network = "eip155:84532", token = "EURC" }]',
            extra=eurc,
        )
    ok = config(
        '[[routes]]\npath = "/x"\nprice = { atomic = "5", token = "EURC" }',
        accepts='[{ network = "base-sepolia", token = "EURC" }]',
        extra=eurc,
    )
    assert ok.routes[0].accepts[0].token.name == "EURC"
    import tomllib

    with pytest.raises(PricingConfigError, match="no pay_to"):
        parse_pricing(
            tomllib.loads(
                '[defaults]\naccepts = [{ network = "eip155:84532" }]\n[[routes]]\npath = "/x"\nprice = "$1"'
            )
        )


def test_token_unit_prices_need_tokens_of_one_scale():
    # A token named USDC with 18 decimals next to the built-in 6-decimal USDC: 2500 atomic units would be
    # $0.0025 in one and a fraction of a billionth of a cent in the other.
    usdc18 = (
        '[[tokens]]\nsymbol = "USDC"\nnetwork = "eip155:1"\n'
        'address = "0x00000000000000000000000000000000000000aa"\nname = "USD Coin"\nversion = "2"\n'
        "decimals = 18\nusd = true\n"
    )
    both = '[{ network = "eip155:84532", token = "USDC" }, { network = "eip155:1", token = "USDC" }]'
    with pytest.raises(PricingConfigError, match="different decimals") as err:
        config(
            '[[routes]]\npath = "/x"\nprice = { atomic = "2500", token = "USDC" }', accepts=both, extra=usdc18
        )
    assert "routes[0]" in str(err.value) and "eip155:1 (18)" in str(err.value)
    # A dollar price converts into each token's own units; one scale alone is unambiguous.
    dollars = config('[[routes]]\npath = "/x"\nprice = "$0.0025"', accepts=both, extra=usdc18).routes[0]
    assert [a.atomic for a in quote(dollars, {}).amounts] == [2500, 2_500_000_000_000_000]
    alone = config(
        '[[routes]]\npath = "/x"\nprice = { atomic = "2500", token = "USDC" }',
        accepts='[{ network = "eip155:1", token = "USDC" }]',
        extra=usdc18,
    ).routes[0]
    assert quote(alone, {}).amounts[0].atomic == 2500
    two_chains = '[{ network = "eip155:84532", token = "USDC" }, { network = "eip155:8453", token = "USDC" }]'
    same = config('[[routes]]\npath = "/x"\nprice = { atomic = "2500", token = "USDC" }', accepts=two_chains)
    assert [a.atomic for a in quote(same.routes[0], {}).amounts] == [2500, 2500]


def test_a_factor_cannot_be_optional_without_a_default():
    with pytest.raises(PricingConfigError, match="optional with no default") as err:
        config(
            '[[routes]]\npath = "/x"\n[routes.params.n]\ntype = "integer"\nmin = 0\nrequired = false\n'
            '[routes.price]\nbase = "$0.001"\nfactors = [{ param = "n" }]\n'
        )
    assert "routes[0]" in str(err.value) and "factors[0]" in str(err.value)
    table = (
        '[[routes]]\npath = "/x"\n[routes.params.r]\ntype = "enum"\nvalues = ["a", "b"]\nrequired = false\n'
        '[routes.price]\nbase = "$0.001"\nfactors = [{ param = "r", table = { a = "1", b = "2" } }]\n'
    )
    with pytest.raises(PricingConfigError, match="optional with no default"):
        config(table)
    # With a default it is always there; an optional parameter outside the factors may stay absent.
    route = config(table.replace("required = false", 'required = false\ndefault = "b"')).routes[0]
    assert quote(route, validate_params(route.params, {})).total == Decimal("0.002")
    free = config(
        '[[routes]]\npath = "/x"\nprice = "$0.001"\n[routes.params.n]\ntype = "integer"\nrequired = false\n'
    ).routes[0]
    assert validate_params(free.params, {}) == {}
