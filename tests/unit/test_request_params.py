"""Priced parameters read from a request: each priced value is the one the handler reads, and any malformed
input is a ParamError (HTTP 400), never an exception the server answers with a 500."""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest

from resource_server.pricing.engine import quote
from resource_server.pricing.loader import parse_pricing
from resource_server.pricing.model import Route
from resource_server.pricing.params import ParamError
from resource_server.request_params import request_params

PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def route(params: str, *, method: str = "GET") -> Route:
    text = (
        f'[defaults]\npay_to = "{PAY_TO}"\naccepts = [{{ network = "eip155:84532", token = "USDC" }}]\n'
        f'[[routes]]\nmethod = "{method}"\npath = "/x"\n'
        '[routes.price]\nbase = "$0.001"\nfactors = [{ param = "n" }]\n'
        f"{params}"
    )
    return parse_pricing(tomllib.loads(text)).routes[0]


QUERY_N = route('[routes.params.n]\ntype = "integer"\nmin = 1\nmax = 1000\n')
BODY_N = route('[routes.params.n]\ntype = "integer"\nmin = 1\nmax = 1000\n', method="POST")
UNBOUNDED = route('[routes.params.n]\ntype = "integer"\nmin = 0\n', method="POST")
UNBOUNDED_NUMBER = route('[routes.params.n]\ntype = "number"\nmin = 0\n', method="POST")


def test_a_repeated_priced_query_parameter_is_refused() -> None:
    assert request_params(QUERY_N, {}, "n=5", None) == {"n": 5}
    assert request_params(QUERY_N, {}, "n=5&other=1&other=2", None) == {"n": 5}  # unpriced: not ours
    for query in ("n=5&n=1000", "n=5&n=5", "n=5&%6E=1000"):
        with pytest.raises(ParamError, match="only once") as err:
            request_params(QUERY_N, {}, query, None)
        assert err.value.param == "n"


def test_a_repeated_priced_body_key_is_refused() -> None:
    assert request_params(BODY_N, {}, "", b'{"n": 5, "x": {"a": 1, "a": 2}}') == {"n": 5}
    with pytest.raises(ParamError, match="only once") as err:
        request_params(BODY_N, {}, "", b'{"n": 5, "n": 1000}')
    assert err.value.param == "n"


def test_deeply_nested_bodies_are_a_bad_parameter() -> None:
    for body in (b"[" * 200_000, b'{"a":' * 200_000):
        with pytest.raises(ParamError, match="JSON object") as err:
            request_params(BODY_N, {}, "", body)
        assert err.value.param == "n"


def test_integers_beyond_64_bits_are_a_bad_parameter_not_a_failed_hash() -> None:
    biggest = 2**63 - 1
    largest = request_params(UNBOUNDED, {}, "", b'{"n": %d}' % biggest)
    assert quote(UNBOUNDED, largest).params == {"n": biggest}
    for body in (b'{"n": %d}' % (biggest + 1), b'{"n": 99999999999999999999999}', b'{"n": 1e25}'):
        with pytest.raises(ParamError, match="64-bit") as err:
            quote(UNBOUNDED, request_params(UNBOUNDED, {}, "", body))
        assert err.value.param == "n"


def test_huge_exponents_are_refused_before_any_arithmetic() -> None:
    # Converting 1e999999999 to an int (or writing it out) would hold the server for minutes.
    for params, body in (
        (UNBOUNDED, b'{"n": 1e999999999}'),
        (BODY_N, b'{"n": 1e999999999}'),
        (UNBOUNDED_NUMBER, b'{"n": 1e999999999}'),
        (UNBOUNDED_NUMBER, b'{"n": 1e-999999999}'),
    ):
        with pytest.raises(ParamError):
            request_params(params, {}, "", body)
    number = request_params(UNBOUNDED_NUMBER, {}, "", b'{"n": 1.5e2}')
    assert number == {"n": Decimal("150")}
