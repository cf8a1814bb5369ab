"""`x402 pay` before anything is sent: where the key comes from, argument checking, usage exit codes."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest
from eth_utils.crypto import keccak

from client import pay_command
from client.cli import main
from client.keys import KeyUnavailable, load_private_key
from client.payer import X402Client
from client.payment import address_of
from client.selection import SpendingPolicy
from shared.receipt_signing import sign_receipt
from shared.x402 import reasons

KEY = "0x" + "42" * 32
OTHER = "0x" + "43" * 32


def load(
    environ: dict[str, str] | None = None, stack: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[str, str]:
    return load_private_key(environ=environ or {}, stack=stack or {}, stack_name="stack.json", **kwargs)


def test_key_sources_in_order():
    assert load({"X402_PRIVATE_KEY": KEY}, {"payer_private_key": OTHER}) == (KEY, "$X402_PRIVATE_KEY")
    assert load({}, {"payer_private_key": OTHER}) == (OTHER, "stack.json")
    assert load({"MINE": KEY.upper().replace("0X", "0x")}, {}, key_env="MINE") == (KEY, "$MINE")
    # An explicit source is the only one tried.
    assert load({"X402_PRIVATE_KEY": KEY}, {"payer_private_key": OTHER}, stack_explicit=True)[0] == OTHER
    with pytest.raises(KeyUnavailable, match=r"^\$MINE is not set$"):
        load({"X402_PRIVATE_KEY": KEY}, key_env="MINE")
    with pytest.raises(KeyUnavailable, match=r"stack\.json has no payer_private_key"):
        load({"X402_PRIVATE_KEY": KEY}, stack_explicit=True)
    with pytest.raises(KeyUnavailable, match="no private key: set"):
        load()


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "0x" + "00" * 32, "0x" + "ff" * 32, 7])
def test_bad_keys_are_refused_without_echoing_them(bad):
    with pytest.raises(KeyUnavailable) as caught:
        load({}, {"payer_private_key": bad})
    assert str(bad) not in str(caught.value)


def x402(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    monkeypatch.delenv("X402_PRIVATE_KEY", raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        code = main(["--stack", "/nonexistent/stack.json", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


URL = "http://127.0.0.1:9/paid"  # discard port: nothing may be sent in these tests anyway


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pay", URL], "no private key"),
        (["pay", "ftp://x/y"], "is not an http(s) URL"),
        (["pay", URL, "--max-amount", "0.05", "--max-atomic", "5"], "not allowed with argument"),
        (["pay", URL, "--max-amount", "lots"], "must be a dollar amount"),
        (["pay", URL, "--max-atomic", "1.5"], "must be a non-negative integer"),
        (["pay", URL, "--data", "{not json"], "must be JSON, or @FILE"),
        (["pay", URL, "--data", "@/nonexistent/body.json"], "cannot read"),
        (["pay", URL, "--header", "novalue"], "must be NAME:VALUE"),
        (["pay", URL, "--network", "narnia"], "unknown network 'narnia'"),
        (["pay", URL, "--method", "TRACE"], "invalid choice"),
        (["pay", URL, "--timeout", "0"], "must be a positive number of seconds"),
        (
            ["pay", URL, "--stack", "/nonexistent/other.json"],
            "no x402-dev stack file at /nonexistent/other.json",
        ),
        (["pay", URL, "--key", KEY], "unrecognized arguments"),  # no way to put a key on the command line
        (["pay", URL, "--key-env", KEY], "must be the NAME of an environment variable"),
    ],
)
def test_usage_errors_exit_2(capsys, monkeypatch, argv, message):
    env = {} if message == "no private key" else {"X402_PRIVATE_KEY": KEY}
    code, _, err = x402(capsys, monkeypatch, *argv, env=env)
    assert code == 2, err
    assert message in err
    if "--key-env" in argv:
        assert KEY[2:] not in err  # a key pasted where a variable name belongs is not echoed


def test_verify_receipt_needs_endpoints_before_paying(capsys, monkeypatch):
    code, out, err = x402(
        capsys, monkeypatch, "pay", URL, "--verify-receipt", "--json", env={"X402_PRIVATE_KEY": KEY}
    )
    assert code == 2
    assert "--verify-receipt needs --facilitator and --rpc-url" in err
    assert json.loads(out)["error"]["code"] == "usage"


def test_unreachable_server_exits_3(capsys, monkeypatch):
    code, out, err = x402(
        capsys, monkeypatch, "pay", URL, "--json", "--timeout", "2", env={"X402_PRIVATE_KEY": KEY}
    )
    assert code == 3, err
    document = json.loads(out)
    assert document["ok"] is False and document["payment"] is None
    assert document["error"]["code"] == "unreachable"


# -- what the server's PAYMENT-RESPONSE means (scripted server, no network) -------------------------------

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
GENERATE = "http://rs.test/generate"
JOB_ID = "6f1c2a4e-8d3b-4a57-9e10-2b7c5d9f0a11"
JOB_URL = f"http://rs.test/jobs/{JOB_ID}"
TX = "0x" + "cd" * 32
PAYER = address_of(KEY)
CHALLENGE = {
    "x402Version": 2,
    "error": "payment_required",
    "resource": {"url": GENERATE},
    "accepts": [
        {
            "scheme": "exact",
            "network": "eip155:84532",
            "amount": "10000",
            "asset": USDC,
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 990,
            "extra": {"name": "USDC", "version": "2", "challengeId": "ch-1"},
        }
    ],
}
# What resource_server/middleware.py `_deferred_headers` sends for an accepted generation job.
DEFERRED = {
    "success": False,
    "errorReason": "settlement_deferred",
    "errorMessage": "the payment is verified and held; it is settled when the work completes",
    "transaction": "",
    "network": "eip155:84532",
    "payer": PAYER,
    "extensions": {"deferred": {"challengeId": "ch-1"}},
}


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def serve_paid(
    monkeypatch: pytest.MonkeyPatch, settlement: dict[str, Any], status: int = 202, **headers: str
) -> list[httpx.Request]:
    """`x402 pay` talks to a scripted server: a 402 challenge, then `status` with `settlement`."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "payment-signature" not in request.headers:
            return httpx.Response(402, headers={"PAYMENT-REQUIRED": b64(CHALLENGE)}, json={})
        body = {"id": JOB_ID, "status": "queued", "job_token": "tok"}
        return httpx.Response(status, json=body, headers={"PAYMENT-RESPONSE": b64(settlement), **headers})

    def scripted(key: str, policy: SpendingPolicy, *, timeout: float) -> X402Client:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        return X402Client(key, policy, http=http, timeout=timeout)

    monkeypatch.setattr(pay_command, "X402Client", scripted)
    return seen


def pay_generate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str, str]:
    return x402(
        capsys,
        monkeypatch,
        "pay",
        GENERATE,
        "--data",
        '{"tool": "music", "inputs": {"prompt": "calm piano"}}',
        *argv,
        env={"X402_PRIVATE_KEY": KEY},
    )


def test_deferred_settlement_is_reported_as_deferred_not_failed(capsys, monkeypatch):
    seen = serve_paid(monkeypatch, DEFERRED, location=f"/jobs/{JOB_ID}")
    code, out, err = pay_generate(capsys, monkeypatch)

    assert code == 0, err
    assert len(seen) == 2 and seen[1].method == "POST"
    assert json.loads(out)["id"] == JOB_ID  # the body alone on stdout, as ever
    assert (
        "settlement: deferred (settled when the job completes, released if it does not); "
        f"payment verified, payer {PAYER}, network eip155:84532"
    ) in err
    assert f"job: {JOB_URL}\n" in err  # the relative Location, made absolute
    assert "FAILED" not in err and "warning" not in err


def test_deferred_settlement_in_json_is_a_state_of_its_own(capsys, monkeypatch):
    serve_paid(monkeypatch, DEFERRED, location=JOB_URL)
    code, out, err = pay_generate(capsys, monkeypatch, "--json")

    assert code == 0, err
    document = json.loads(out)
    assert document["ok"] is True and document["exitCode"] == 0 and document["error"] is None
    assert document["status"] == 202 and document["warnings"] == []
    settlement = document["settlement"]
    assert settlement["state"] == "deferred" and settlement["statusUrl"] == JOB_URL
    assert settlement["errorReason"] == "settlement_deferred"  # the server's words are kept as sent
    assert settlement["payer"] == PAYER and settlement["transaction"] == ""


def test_deferred_settlement_without_a_location_has_no_job_line(capsys, monkeypatch):
    serve_paid(monkeypatch, DEFERRED)
    code, out, err = pay_generate(capsys, monkeypatch, "--json")
    assert code == 0 and json.loads(out)["settlement"]["statusUrl"] is None
    code, _, err = pay_generate(capsys, monkeypatch)
    assert code == 0 and "settlement: deferred" in err and "job:" not in err


def test_verify_receipt_of_a_deferred_settlement_says_there_is_no_transaction_yet(capsys, monkeypatch):
    serve_paid(monkeypatch, DEFERRED, location=JOB_URL)

    def no_receipt(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("there is no transaction whose receipt could be fetched")

    monkeypatch.setattr(pay_command, "verify_receipt", no_receipt)
    endpoints = ("--verify-receipt", "--facilitator", "http://127.0.0.1:9", "--rpc-url", "http://127.0.0.1:9")
    code, out, err = pay_generate(capsys, monkeypatch, *endpoints, "--json")

    assert code == 1, err
    document = json.loads(out)
    assert document["settlement"]["state"] == "deferred" and document["receipt"] is None
    assert document["error"]["code"] == "receipt_not_yet_available"
    message = document["error"]["message"]
    assert "deferred until the job completes" in message and "no transaction yet" in message
    assert f"once {JOB_URL} shows payment.tx_hash" in message and "x402 receipt" in message
    assert message in err


@pytest.mark.parametrize(
    ("settlement", "state", "line"),
    [
        (
            {"success": True, "transaction": TX, "network": "eip155:84532", "payer": PAYER},
            "settled",
            f"settlement: success, tx {TX}",
        ),
        (
            {
                "success": False,
                "errorReason": "invalid_exact_evm_transaction_failed",
                "transaction": TX,
                "network": "eip155:84532",
            },
            "failed",
            "settlement: FAILED (invalid_exact_evm_transaction_failed)",
        ),
    ],
)
def test_settled_and_failed_settlements_keep_their_reports(capsys, monkeypatch, settlement, state, line):
    serve_paid(monkeypatch, settlement, status=200)
    code, out, err = pay_generate(capsys, monkeypatch, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["settlement"]["state"] == state and "statusUrl" not in document["settlement"]
    assert (state == "failed") == any("failed settlement" in w for w in document["warnings"])
    _, _, err = pay_generate(capsys, monkeypatch)
    assert line in err


# -- a settlement the facilitator broadcast but had not confirmed within its wait --------------------------

# What facilitator/settlement/service.py `response_for` answers for a submitted, unconfirmed transaction;
# the resource server serves the request and passes it on as its PAYMENT-RESPONSE.
PENDING = {
    "success": False,
    "errorReason": reasons.SETTLEMENT_PENDING,
    "errorMessage": "the transaction is broadcast and not yet confirmed; settle again or poll /receipt",
    "transaction": TX,
    "network": "eip155:84532",
    "payer": PAYER,
}
# The hints name our payment by its nonce: the transaction may have settled several.
NONCE = r"--nonce 0x[0-9a-f]{64}`"
PENDING_LINE = (
    re.escape(
        f"settlement: pending (broadcast, not yet confirmed), tx {TX}, network eip155:84532, payer {PAYER}; "
        f"check it later with `x402 receipt {TX} "
    )
    + NONCE
)
NOT_CONFIRMED = (
    re.escape(
        f"receipt not verified: the transaction is not confirmed yet; check later with `x402 receipt {TX} "
    )
    + NONCE
)


def test_pending_settlement_is_reported_as_pending_not_failed(capsys, monkeypatch):
    serve_paid(monkeypatch, PENDING, status=200)
    code, out, err = pay_generate(capsys, monkeypatch)

    assert code == 0, err
    assert json.loads(out)["id"] == JOB_ID  # the body alone on stdout, as ever
    assert re.search(PENDING_LINE + "\n", err), err
    assert "FAILED" not in err and "warning" not in err


def test_pending_settlement_in_json_is_a_state_of_its_own(capsys, monkeypatch):
    serve_paid(monkeypatch, PENDING, status=200)
    code, out, err = pay_generate(capsys, monkeypatch, "--json")

    assert code == 0, err
    document = json.loads(out)
    assert document["ok"] is True and document["exitCode"] == 0 and document["error"] is None
    assert document["warnings"] == []
    settlement = document["settlement"]
    assert settlement["state"] == "pending" and "statusUrl" not in settlement
    assert settlement["errorReason"] == "settlement_pending"  # the server's words are kept as sent
    assert settlement["transaction"] == TX and settlement["payer"] == PAYER


def test_pending_settlement_without_a_transaction_does_not_invent_one(capsys, monkeypatch):
    # resource_server/paywall.py answers so when the facilitator's answer to /settle was lost.
    serve_paid(monkeypatch, {**PENDING, "transaction": ""}, status=200)
    code, out, err = pay_generate(capsys, monkeypatch, "--json")
    assert code == 0, err
    assert json.loads(out)["settlement"]["state"] == "pending" and json.loads(out)["warnings"] == []
    code, _, err = pay_generate(capsys, monkeypatch)
    assert code == 0, err
    assert (
        "settlement: pending (not yet confirmed; the server reported no transaction), "
        f"network eip155:84532, payer {PAYER}\n"
    ) in err
    assert "x402 receipt" not in err and "FAILED" not in err and "warning" not in err


def test_verify_receipt_of_a_pending_settlement_without_a_transaction(capsys, monkeypatch):
    serve_paid(monkeypatch, {**PENDING, "transaction": ""}, status=200)

    def no_receipt(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("there is no transaction whose receipt could be fetched")

    monkeypatch.setattr(pay_command, "verify_receipt", no_receipt)
    code, out, err = pay_generate(capsys, monkeypatch, *VERIFY, "--json")

    assert code == 1, err
    document = json.loads(out)
    assert document["settlement"]["state"] == "pending" and document["receipt"] is None
    assert document["error"]["code"] == "receipt_not_yet_available"
    assert "pending and the server reported no transaction hash" in document["error"]["message"]


# The facilitator's /receipt and the chain's JSON-RPC, scripted for `--verify-receipt` (client/receipts.py
# runs its real checks against them).
FACILITATOR = "http://facilitator.test"
RPC = "http://rpc.test"
VERIFY = ("--verify-receipt", "--facilitator", FACILITATOR, "--rpc-url", RPC)
RECEIPT_KEY = "0x" + "44" * 32
BLOCK, BLOCK_HASH = 0x10, "0x" + "ab" * 32
_TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
_AUTHORIZATION_USED = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def serve_receipts(
    monkeypatch: pytest.MonkeyPatch,
    paid: list[httpx.Request],
    *,
    status: str,
    chain: str,
    nonce: str | None = None,
) -> None:
    """`status`: the facilitator's receipt status; `chain`: "unknown", "unmined", "mined" or "reverted".
    The receipt names the nonce the client signed (read from the paid request), unless `nonce` is given.
    The settlement shares its transaction with another payment: the client must ask by its nonce."""

    def signed_nonce() -> str:
        wire = json.loads(base64.b64decode(paid[-1].headers["payment-signature"]))
        return str(wire["payload"]["authorization"]["nonce"])

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/receipt/{TX}":
            if request.url.params.get("nonce") != signed_nonce():
                # As a facilitator answers for a transaction that carries several payments (a batch).
                nonces = [signed_nonce(), "0x" + "01" * 32]
                return httpx.Response(409, json={"error": "name one with ?nonce=0x...", "nonces": nonces})
            receipt: dict[str, Any] = {
                "txHash": TX,
                "status": status,
                "source": "ledger",
                "network": "eip155:84532",
                "chainId": 84532,
                "token": USDC,
                "payer": PAYER,
                "payTo": PAY_TO,
                "amount": "10000",
                "nonce": nonce or signed_nonce(),
                "x402Version": 2,
                "confirmations": 0,
            }
            if status == "confirmed":  # the ledger records the block once it is confirmed
                receipt.update(blockNumber=BLOCK, blockHash=BLOCK_HASH, confirmations=3)
            return httpx.Response(200, json=sign_receipt(receipt, RECEIPT_KEY))
        if request.url.path == "/receipt-key":
            return httpx.Response(200, json={"address": address_of(RECEIPT_KEY)})
        assert str(request.url) == RPC, request.url
        call = json.loads(request.content)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": call["id"], **rpc(call["method"])})

    def rpc(method: str) -> dict[str, Any]:
        mined = chain in ("mined", "reverted")
        logs = [
            {"address": USDC, "topics": [_AUTHORIZATION_USED, _topic(PAYER), signed_nonce()], "data": "0x"},
            {"address": USDC, "topics": [_TRANSFER, _topic(PAYER), _topic(PAY_TO)], "data": hex(10000)},
        ]
        results: dict[str, Any] = {
            "eth_chainId": hex(84532),
            "eth_getTransactionByHash": None
            if chain == "unknown"
            else {"hash": TX, "blockHash": BLOCK_HASH if mined else None},
            "eth_getTransactionReceipt": {
                "status": "0x1" if chain == "mined" else "0x0",
                "blockNumber": hex(BLOCK),
                "blockHash": BLOCK_HASH,
                "logs": logs if chain == "mined" else [],
            }
            if mined
            else None,
            "eth_blockNumber": hex(BLOCK + 2),
        }
        if method not in results:  # eth_call for the token's symbol: shown in base units instead
            return {"error": {"code": -32601, "message": "not scripted"}}
        return {"result": results[method]}

    real_client = httpx.Client

    def scripted(*args: Any, **kwargs: Any) -> httpx.Client:
        return real_client(*args, transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(httpx, "Client", scripted)


@pytest.mark.parametrize(
    ("chain", "failing"),
    [
        ("unknown", ["facilitator status", "transaction"]),
        ("unmined", ["facilitator status", "transaction"]),
        ("mined", ["facilitator status", "block"]),  # mined, and the facilitator has not caught up yet
    ],
)
def test_verify_receipt_of_a_pending_settlement_that_is_not_confirmed_yet(
    capsys, monkeypatch, chain, failing
):
    paid = serve_paid(monkeypatch, PENDING, status=200)
    serve_receipts(monkeypatch, paid, status="pending", chain=chain)
    code, out, err = pay_generate(capsys, monkeypatch, *VERIFY, "--json")

    assert code == 1, err
    document = json.loads(out)
    assert document["settlement"]["state"] == "pending" and document["warnings"] == []
    assert document["error"]["code"] == "receipt_not_confirmed"
    assert re.fullmatch(NOT_CONFIRMED, document["error"]["message"]), document["error"]
    checks = {c["name"]: c["ok"] for c in document["receipt"]["checks"]}
    assert [name for name, ok in checks.items() if not ok] == failing
    assert checks["signature"] and checks["our payment"]  # it is the receipt of our payment, just unconfirmed

    code, _, err = pay_generate(capsys, monkeypatch, *VERIFY)
    assert code == 1, err
    assert re.search(PENDING_LINE, err) and re.search(f"x402: pay: {NOT_CONFIRMED}\n", err), err
    assert "NOT verified" not in err and "Receipt verified" not in err


def test_verify_receipt_of_a_pending_settlement_confirmed_since(capsys, monkeypatch):
    paid = serve_paid(monkeypatch, PENDING, status=200)
    serve_receipts(monkeypatch, paid, status="confirmed", chain="mined")
    code, out, err = pay_generate(capsys, monkeypatch, *VERIFY, "--json")

    assert code == 0, err
    document = json.loads(out)
    assert document["settlement"]["state"] == "pending" and document["error"] is None
    assert document["receipt"]["ok"] is True

    code, _, err = pay_generate(capsys, monkeypatch, *VERIFY)
    assert code == 0, err
    assert re.search(PENDING_LINE, err), err
    assert "Receipt verified (the transaction is confirmed since the server answered).\n" in err


@pytest.mark.parametrize(
    ("chain", "nonce", "problem"),
    [
        ("reverted", None, "transaction: reverted on chain (status 0x0)"),
        ("unmined", "0x" + "00" * 32, "our payment: nonce is '0x" + "00" * 32),  # not the receipt of ours
    ],
)
def test_verify_receipt_of_a_pending_settlement_still_fails_what_is_wrong(
    capsys, monkeypatch, chain, nonce, problem
):
    paid = serve_paid(monkeypatch, PENDING, status=200)
    serve_receipts(monkeypatch, paid, status="pending", chain=chain, nonce=nonce)
    code, out, err = pay_generate(capsys, monkeypatch, *VERIFY, "--json")

    assert code == 1, err
    error = json.loads(out)["error"]
    assert error["code"] == "receipt_not_verified"
    assert error["message"].startswith("receipt NOT verified: ") and problem in error["message"]
    assert "not confirmed yet" not in error["message"]


def test_max_amount_zero_is_a_limit_not_the_default(capsys, monkeypatch):
    # The challenge asks $0.01, below the default limit ($0.10): --max-amount 0 must still refuse it.
    seen = serve_paid(monkeypatch, DEFERRED)
    code, out, err = pay_generate(capsys, monkeypatch, "--max-amount", "0")
    assert code == 1, (out, err)
    assert [r for r in seen if "payment-signature" in r.headers] == []
    assert len(seen) == 1
    # Without the flag the default limit applies and the same challenge is paid.
    seen = serve_paid(monkeypatch, DEFERRED)
    code, out, err = pay_generate(capsys, monkeypatch)
    assert code == 0, (out, err)
    assert "payment-signature" in seen[-1].headers
