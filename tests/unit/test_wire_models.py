"""x402 wire models (shared/x402/models.py) and header codecs (shared/x402/codec.py) against the spec
examples: everything parses into its model and serialises back to the same JSON, minus nulls."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from shared.x402.codec import (
    MAX_HEADER_BYTES,
    HeaderDecodeError,
    decode_json_header,
    decode_model_header,
    encode_json_header,
)
from shared.x402.models import (
    ExactEvmPayload,
    PaymentPayloadV1,
    PaymentPayloadV2,
    PaymentRequiredV1,
    PaymentRequiredV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
    WireModel,
)

VECTOR_DIR = Path(__file__).parent / "vectors"
EXAMPLES: dict[str, Any] = json.loads((VECTOR_DIR / "x402_examples.json").read_text())["examples"]
COMPUTED: dict[str, Any] = json.loads((VECTOR_DIR / "eip3009.json").read_text())

HEADER_MODELS: dict[str, type[WireModel]] = {
    "PAYMENT-REQUIRED": PaymentRequiredV2,
    "PAYMENT-SIGNATURE": PaymentPayloadV2,
    "PAYMENT-RESPONSE": SettleResponse,
    "X-PAYMENT": PaymentPayloadV1,
    "X-PAYMENT-RESPONSE": SettleResponse,
}


def _headers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in ("v1-http-headers", "v2-http-headers"):
        for i, header in enumerate(EXAMPLES[name]["headers"]):
            out.append((f"{name}[{i}]:{header['header']}", header))
    return out


HEADERS = _headers()


def _cases() -> list[tuple[str, type[WireModel], dict[str, Any]]]:
    ex = EXAMPLES
    cases: list[tuple[str, type[WireModel], dict[str, Any]]] = [
        ("v2-payment-required", PaymentRequiredV2, ex["v2-payment-required"]),
        ("v2-payment-payload", PaymentPayloadV2, ex["v2-payment-payload"]),
        ("v2-verify-request.paymentPayload", PaymentPayloadV2, ex["v2-verify-request"]["paymentPayload"]),
        (
            "v2-verify-request.paymentRequirements",
            PaymentRequirementsV2,
            ex["v2-verify-request"]["paymentRequirements"],
        ),
        ("v2-verify-response-valid", VerifyResponse, ex["v2-verify-response-valid"]),
        ("v2-verify-response-invalid", VerifyResponse, ex["v2-verify-response-invalid"]),
        ("v2-settle-response-success", SettleResponse, ex["v2-settle-response-success"]),
        (
            "v2-settle-response-success-facilitator",
            SettleResponse,
            ex["v2-settle-response-success-facilitator"],
        ),
        ("v2-settle-response-error", SettleResponse, ex["v2-settle-response-error"]),
        ("v2-supported-response", SupportedResponse, ex["v2-supported-response"]),
        ("v1-payment-required", PaymentRequiredV1, ex["v1-payment-required"]),
        ("v1-payment-payload", PaymentPayloadV1, ex["v1-payment-payload"]),
        ("v1-402-body-transport", PaymentPayloadV1, ex["v1-402-body-transport"]),
        ("v1-verify-request.paymentPayload", PaymentPayloadV1, ex["v1-verify-request"]["paymentPayload"]),
        (
            "v1-verify-request.paymentRequirements",
            PaymentRequirementsV1,
            ex["v1-verify-request"]["paymentRequirements"],
        ),
        ("v1-verify-response-valid", VerifyResponse, ex["v1-verify-response-valid"]),
        ("v1-verify-response-invalid", VerifyResponse, ex["v1-verify-response-invalid"]),
        ("v1-settle-response-success", SettleResponse, ex["v1-settle-response-success"]),
        (
            "v1-settle-response-success-facilitator",
            SettleResponse,
            ex["v1-settle-response-success-facilitator"],
        ),
        ("v1-settle-response-error", SettleResponse, ex["v1-settle-response-error"]),
        ("v2-payment-payload.payload", ExactEvmPayload, ex["v2-payment-payload"]["payload"]),
    ]
    for name, header in HEADERS:
        cases.append((f"{name}.decoded", HEADER_MODELS[header["header"]], header["decoded"]))
    for net in ("base-sepolia", "base"):
        cases.append(
            (f"computed {net} requirements", PaymentRequirementsV2, COMPUTED[net]["paymentRequirements"])
        )
        cases.append((f"computed {net} payload v2", PaymentPayloadV2, COMPUTED[net]["paymentPayloadV2"]))
    cases.append(("computed payload v1", PaymentPayloadV1, COMPUTED["base-sepolia"]["paymentPayloadV1"]))
    cases.append(
        ("computed requirements v1", PaymentRequirementsV1, COMPUTED["base-sepolia"]["paymentRequirementsV1"])
    )
    return cases


CASES = _cases()


def strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def contains_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(contains_null(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_null(v) for v in value)
    return False


@pytest.mark.parametrize(("name", "model", "data"), CASES, ids=[c[0] for c in CASES])
def test_example_round_trips_through_its_model(
    name: str, model: type[WireModel], data: dict[str, Any]
) -> None:
    wire = model.model_validate(data).to_wire()
    assert not contains_null(wire)
    assert wire == strip_nulls(data)


def test_v1_outputschema_null_is_dropped_not_emitted() -> None:
    wire = PaymentRequiredV1.model_validate(EXAMPLES["v1-payment-required"]).to_wire()
    assert "outputSchema" not in wire["accepts"][0]
    assert EXAMPLES["v1-payment-required"]["accepts"][0]["outputSchema"] is None


def test_v1_supported_response_gains_only_the_empty_v2_fields() -> None:
    # One SupportedResponse model serves both versions: v1 bodies come back with the (v2-required)
    # empty `extensions` and `signers`, and nothing else changes.
    data = EXAMPLES["v1-supported-response"]
    wire = SupportedResponse.model_validate(data).to_wire()
    assert wire == {**data, "extensions": [], "signers": {}}


def test_parsed_fields_are_reachable_by_python_names() -> None:
    payload = PaymentPayloadV2.model_validate(EXAMPLES["v2-payment-payload"])
    assert payload.accepted.pay_to == "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
    assert payload.accepted.max_timeout_seconds == 60
    assert payload.accepted.extra == {"name": "USDC", "version": "2"}
    exact = ExactEvmPayload.model_validate(payload.payload)
    assert exact.authorization.from_ == "0x857b06519E91e3A54538791bDbb0E22373e36b66"
    assert exact.authorization.valid_before == "1740672154"
    v1 = PaymentRequirementsV1.model_validate(EXAMPLES["v1-payment-required"]["accepts"][0])
    assert v1.max_amount_required == "10000"


def test_models_accept_python_names_and_emit_aliases() -> None:
    resp = SettleResponse(success=False, error_reason="x", network="eip155:84532")
    assert resp.to_wire() == {
        "success": False,
        "errorReason": "x",
        "transaction": "",
        "network": "eip155:84532",
    }
    assert VerifyResponse(is_valid=True).to_wire() == {"isValid": True}


def test_unknown_keys_are_ignored_on_input() -> None:
    data = {**EXAMPLES["v2-settle-response-success"], "requirements": {"a": 1}, "futureField": 7}
    assert SettleResponse.model_validate(data).to_wire() == EXAMPLES["v2-settle-response-success"]


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (PaymentPayloadV2, {**EXAMPLES["v2-payment-payload"], "x402Version": 1}),
        (PaymentPayloadV1, {**EXAMPLES["v1-payment-payload"], "x402Version": 2}),
        (PaymentPayloadV2, {k: v for k, v in EXAMPLES["v2-payment-payload"].items() if k != "accepted"}),
        (
            PaymentRequirementsV2,
            {k: v for k, v in COMPUTED["base"]["paymentRequirements"].items() if k != "payTo"},
        ),
        (SettleResponse, {"success": True, "transaction": "0x"}),  # no network
        (VerifyResponse, {"invalidReason": "x"}),  # no isValid
    ],
)
def test_wrong_version_or_missing_required_field_is_refused(
    model: type[BaseModel], data: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


# --- header codec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "header"), HEADERS, ids=[n for n, _ in HEADERS])
def test_spec_header_values_decode_to_the_documented_json(name: str, header: dict[str, Any]) -> None:
    assert decode_json_header(header["value"]) == header["decoded"]
    model = HEADER_MODELS[header["header"]]
    assert decode_model_header(header["value"], model).to_wire() == header["decoded"]


@pytest.mark.parametrize(
    ("name", "header"),
    [(n, h) for n, h in HEADERS if h["header"] in ("PAYMENT-REQUIRED", "PAYMENT-SIGNATURE", "X-PAYMENT")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_payment_headers_are_byte_identical_to_the_spec_encoding(name: str, header: dict[str, Any]) -> None:
    """Standard base64 of compact JSON in spec field order, as the TS and Python SDKs write it."""
    model = HEADER_MODELS[header["header"]].model_validate(header["decoded"])
    assert encode_json_header(model) == header["value"]


@pytest.mark.parametrize("net", ["base-sepolia", "base"])
def test_computed_payment_signature_header_is_reproduced(net: str) -> None:
    payload = PaymentPayloadV2.model_validate(COMPUTED[net]["paymentPayloadV2"])
    assert encode_json_header(payload) == COMPUTED[net]["paymentSignatureHeaderV2_compactJsonBase64"]


@pytest.mark.parametrize(("name", "model", "data"), CASES, ids=[c[0] for c in CASES])
def test_header_encode_decode_round_trip(name: str, model: type[WireModel], data: dict[str, Any]) -> None:
    original = model.model_validate(data)
    header = encode_json_header(original)
    assert header.isascii() and "\n" not in header
    assert decode_model_header(header, model) == original
    assert decode_json_header(encode_json_header(data)) == data


def test_decode_tolerates_surrounding_whitespace() -> None:
    header = encode_json_header({"success": True})
    assert decode_json_header(f"  {header}\r\n") == {"success": True}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not valid base64"),
        ("eyJ4Ijox*", "not valid base64"),
        (_b64(b'{"a":1}').replace("=", ""), "not valid base64"),  # missing padding
        (_b64(b'{"a":1}')[:-4] + "-_==", "not valid base64"),  # URL-safe alphabet
        (_b64(b"this is not json"), "does not decode to JSON"),
        (_b64(b'{"x402Version": 2'), "does not decode to JSON"),
        (_b64(b"\xff\xfe{}"), "does not decode to JSON"),
        ("", "does not decode to JSON"),
        (_b64(b"[1, 2, 3]"), "must be an object"),
        (_b64(b'"a string"'), "must be an object"),
        (_b64(b"null"), "must be an object"),
        ("A" * (MAX_HEADER_BYTES + 1), f"limit is {MAX_HEADER_BYTES}"),
    ],
)
def test_decode_errors_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(HeaderDecodeError, match=message):
        decode_json_header(value)


def test_oversized_header_is_refused_before_decoding() -> None:
    big = _b64(orjson.dumps({"pad": "x" * 200}))
    assert decode_json_header(big, max_bytes=len(big)) == {"pad": "x" * 200}
    with pytest.raises(HeaderDecodeError, match=f"header is {len(big)} bytes, the limit is {len(big) - 1}"):
        decode_json_header(big, max_bytes=len(big) - 1)


def test_model_header_error_names_the_model_and_the_field() -> None:
    data = {k: v for k, v in EXAMPLES["v2-payment-payload"].items() if k != "accepted"}
    with pytest.raises(HeaderDecodeError, match=r"not a valid PaymentPayloadV2: accepted: Field required"):
        decode_model_header(encode_json_header(data), PaymentPayloadV2)


def test_model_header_error_for_wrong_version() -> None:
    header = encode_json_header(EXAMPLES["v1-payment-payload"])
    with pytest.raises(HeaderDecodeError, match="x402Version"):
        decode_model_header(header, PaymentPayloadV2)
