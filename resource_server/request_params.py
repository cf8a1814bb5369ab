"""Where a route's priced parameters come from in an HTTP request: the path, the query string or a JSON
object body. Pure: it sees the matched path parameters, the raw query and the body bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from urllib.parse import parse_qs

from .pricing.model import Route
from .pricing.params import ParamError, ParamSource, ParamValue, validate_params


def request_params(
    route: Route, path_params: Mapping[str, str], query_string: str, body: bytes | None
) -> dict[str, ParamValue]:
    """Validated parameters; raises ParamError naming the first bad one."""
    query = {k: v[0] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
    body_values: Mapping[str, object] = {}
    if route.reads_body:
        body_values = _json_object(body, route)
    raw: dict[str, object] = {}
    for spec in route.params:
        source: Mapping[str, object] = (
            path_params
            if spec.source is ParamSource.PATH
            else query
            if spec.source is ParamSource.QUERY
            else body_values
        )
        if spec.name in source:
            raw[spec.name] = source[spec.name]
    return validate_params(route.params, raw)


def _json_object(body: bytes | None, route: Route) -> Mapping[str, object]:
    first = next(p.name for p in route.params if p.source is ParamSource.BODY)
    if not body:
        return {}
    try:
        # Decimals, not floats: 0.1 must price as exactly one tenth.
        value = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise ParamError(first, "the request body must be a JSON object carrying this parameter") from None
    if not isinstance(value, dict):
        raise ParamError(first, "the request body must be a JSON object carrying this parameter")
    return value
