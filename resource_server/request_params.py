"""Where a route's priced parameters come from in an HTTP request: the path, the query string or a JSON
object body. Pure: it sees the matched path parameters, the raw query and the body bytes.

A priced parameter given twice (`?n=5&n=1000`, or a key repeated in the body object) is refused: the
handler may read another of its values than the one priced (Starlette reads the last one)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from urllib.parse import parse_qs

import orjson

from .pricing.model import Route
from .pricing.params import ParamError, ParamSource, ParamValue, validate_params


class _JsonObject(dict[str, object]):
    """A decoded JSON object that remembers which of its keys were repeated."""

    repeated: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, object]]) -> _JsonObject:
    out = _JsonObject(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        repeated: set[str] = set()
        for key, _ in pairs:
            (repeated if key in seen else seen).add(key)
        out.repeated = frozenset(repeated)
    return out


def request_params(
    route: Route, path_params: Mapping[str, str], query_string: str, body: bytes | None
) -> dict[str, ParamValue]:
    """Validated parameters; raises ParamError naming the first bad one."""
    query = parse_qs(query_string, keep_blank_values=True)
    body_values: Mapping[str, object] = {}
    repeated: frozenset[str] = frozenset()
    if route.reads_body:
        body_values = _json_object(body, route)
        repeated = body_values.repeated if isinstance(body_values, _JsonObject) else frozenset()
    raw: dict[str, object] = {}
    for spec in route.params:
        if spec.source is ParamSource.PATH:
            if spec.name in path_params:
                raw[spec.name] = path_params[spec.name]
        elif spec.source is ParamSource.QUERY:
            values = query.get(spec.name)
            if values is not None:
                if len(values) > 1:
                    raise ParamError(spec.name, "is priced, so it may be given only once in the query string")
                raw[spec.name] = values[0]
        else:
            if spec.name in repeated:
                raise ParamError(spec.name, "is priced, so it may be given only once in the body")
            if spec.name in body_values:
                raw[spec.name] = body_values[spec.name]
    return validate_params(route.params, raw)


def loads_decimal(body: bytes) -> object:
    """JSON with Decimal numbers (0.1 must price as exactly one tenth), repeated keys remembered (see
    `_JsonObject`). Raises ValueError for anything that is not JSON, nested too deep included."""
    # orjson first, only to refuse what json would choke on: its depth limit (1024) holds whatever the
    # interpreter's recursion limit, which a library may have raised until json's C recursion overflows the
    # stack (py_ecc sets 100000).
    orjson.loads(body)
    try:
        return json.loads(body, parse_float=Decimal, object_pairs_hook=_object_pairs)
    except RecursionError:
        raise ValueError("the JSON is nested too deep") from None


def _json_object(body: bytes | None, route: Route) -> Mapping[str, object]:
    first = next(p.name for p in route.params if p.source is ParamSource.BODY)
    if not body:
        return {}
    try:
        value = loads_decimal(body)
    except ValueError:  # orjson's JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise ParamError(first, "the request body must be a JSON object carrying this parameter") from None
    if not isinstance(value, dict):
        raise ParamError(first, "the request body must be a JSON object carrying this parameter")
    return value
