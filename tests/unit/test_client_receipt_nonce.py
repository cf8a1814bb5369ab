"""`x402 receipt --nonce`: naming one payment of a transaction that carries several (a batch)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from client.cli import main
from client.receipts import (
    AmbiguousReceipt,
    ReceiptUnavailable,
    check_document,
    fetch_document,
    transfer_problem,
)
from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC

TX = "0x" + "cd" * 32
NONCE = "0x" + "aa" * 32
OTHER = "0x" + "bb" * 32
_TRANSFER = "0x" + TRANSFER_TOPIC.hex()
_AUTHORIZATION_USED = "0x" + AUTHORIZATION_USED_TOPIC.hex()
FACILITATOR = "http://facilitator.test"


def facilitator(answers: dict[str | None, httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    """Answers GET /receipt/TX by its nonce query parameter (None: no nonce given)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path == f"/receipt/{TX}"
        return answers[request.url.params.get("nonce")]

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_fetch_document_asks_for_the_nonce():
    seen: list[httpx.Request] = []
    document = {"receipt": {"txHash": TX, "nonce": NONCE}}
    with facilitator({NONCE: httpx.Response(200, json=document)}, seen) as http:
        assert fetch_document(http, FACILITATOR + "/", TX, NONCE) == document
    assert str(seen[0].url) == f"{FACILITATOR}/receipt/{TX}?nonce={NONCE}"


def test_fetch_document_of_a_batch_without_a_nonce_lists_the_nonces():
    body = {
        "error": "this transaction carries 2 payments; name one with ?nonce=0x...",
        "nonces": [NONCE, OTHER],
    }
    with (
        facilitator({None: httpx.Response(409, json=body)}, []) as http,
        pytest.raises(AmbiguousReceipt) as caught,
    ):
        fetch_document(http, FACILITATOR, TX)
    assert caught.value.nonces == [NONCE, OTHER]
    assert (
        str(caught.value) == f"transaction {TX} carries 2 payments; name one with --nonce ({NONCE}, {OTHER})"
    )


def test_fetch_document_of_an_unknown_nonce():
    missing = pytest.raises(ReceiptUnavailable, match=f"with transaction {TX} and nonce {OTHER}$")
    with facilitator({OTHER: httpx.Response(404, json={"error": "no"})}, []) as http, missing:
        fetch_document(http, FACILITATOR, TX, OTHER)


def test_check_document_compares_the_nonce_asked_for():
    receipt: dict[str, Any] = {
        "txHash": TX,
        "status": "confirmed",
        "nonce": NONCE.upper().replace("0X", "0x"),
    }
    assert [c.name for c in check_document(receipt, TX)] == ["transaction hash", "facilitator status"]
    ok = check_document(receipt, TX, NONCE)
    assert [(c.name, c.ok) for c in ok] == [
        ("transaction hash", True),
        ("nonce", True),
        ("facilitator status", True),
    ]
    (wrong,) = [c for c in check_document(receipt, TX, OTHER) if c.name == "nonce"]
    assert not wrong.ok and wrong.detail == f"the receipt is for nonce {receipt['nonce']}, not {OTHER}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["--stack", "/nonexistent/stack.json", *argv])
    except SystemExit as exc:  # argparse's own usage errors and --help
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_receipt_help_documents_nonce(capsys):
    code, out, _ = run(capsys, "receipt", "--help")
    assert code == 0
    assert "--nonce NONCE" in out and "EIP-3009 authorization nonce" in out and "carries several" in out


@pytest.mark.parametrize("bad", ["0x12", NONCE[2:], NONCE + "00", "0x" + "zz" * 32])
def test_receipt_refuses_a_malformed_nonce(capsys, bad):
    code, _, err = run(capsys, "receipt", TX, "--nonce", bad, "--facilitator", FACILITATOR, "--rpc-url", "x")
    assert code == 2
    assert "--nonce: must be 0x followed by 64 hex digits (an EIP-3009 nonce)" in err


def test_the_chain_check_pairs_each_authorization_with_its_own_transfer():
    """In a batch, another call's Transfer must not vouch for this authorization: the token emits
    AuthorizationUsed and then that transfer's Transfer."""
    token, payer, pay_to = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20

    def topic(address: str) -> str:
        return "0x" + address[2:].rjust(64, "0")

    def used(nonce: str) -> dict[str, Any]:
        return {"address": token, "topics": [_AUTHORIZATION_USED, topic(payer), nonce], "data": "0x"}

    def moved(to: str, amount: int) -> dict[str, Any]:
        return {"address": token, "topics": [_TRANSFER, topic(payer), topic(to)], "data": hex(amount)}

    crafted = {"logs": [used(NONCE), moved(payer, 1), used(OTHER), moved(pay_to, 100)]}
    kwargs: dict[str, Any] = dict(token=token, payer=payer, pay_to=pay_to, amount=100)
    assert transfer_problem(crafted, nonce=NONCE, **kwargs) == (
        f"no Transfer of 100 from {payer} to {pay_to} by {token} paired with its AuthorizationUsed"
    )
    assert transfer_problem(crafted, nonce=OTHER, **kwargs) is None
    assert transfer_problem(crafted, nonce="0x" + "cc" * 32, **kwargs) == (
        f"no AuthorizationUsed({payer}, {'0x' + 'cc' * 32}) event of {token}"
    )
