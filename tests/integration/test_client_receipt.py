"""`x402 receipt` against a real facilitator and chain: a settled payment verifies, a receipt signed by
someone else or altered after signing does not."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client.cli import main
from tests.support.payments import new_address, paid_request

pytestmark = pytest.mark.integration

AMOUNT = 12_345  # 0.012345 USDC


@pytest.fixture
async def settled(dev_chain, facilitator) -> dict[str, Any]:
    payer = dev_chain.new_payer(5_000_000)
    answer = await facilitator.post("/settle", paid_request(dev_chain, payer, AMOUNT))
    result = answer.json()
    assert result["success"] is True, result
    return {"tx": result["transaction"], "payer": payer.address}


async def x402(capsys, *argv: str) -> tuple[int, str, str]:
    # In a thread: the facilitator is served by this test's event loop, which must keep running.
    code = await asyncio.to_thread(main, ["--stack", "/nonexistent/stack.json", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_settled_payment_verifies(dev_chain, facilitator, settled, capsys):
    args = ["receipt", settled["tx"], "--facilitator", facilitator.url, "--rpc-url", dev_chain.rpc_url]
    code, out, err = await x402(capsys, *args)
    assert code == 0, out + err
    assert "0.012345 USDC" in out
    assert settled["payer"] in out
    assert "/receipt-key" in out  # says which key the signature was compared with
    assert "Receipt verified." in out

    signer = (await facilitator.get("/receipt-key")).json()["address"]
    code, out, err = await x402(capsys, *args, "--expected-signer", signer, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["receipt"]["amount"] == str(AMOUNT)
    assert report["confirmations"] >= 1
    assert any("--expected-signer" in c["detail"] for c in report["checks"] if c["name"] == "signature")


async def test_other_signer_fails(dev_chain, facilitator, settled, capsys):
    code, _, err = await x402(
        capsys,
        "receipt",
        settled["tx"],
        "--facilitator",
        facilitator.url,
        "--rpc-url",
        dev_chain.rpc_url,
        "--expected-signer",
        new_address(),
    )
    assert code == 1
    assert "NOT verified" in err and "signature" in err


@pytest.fixture
def forged_facilitator() -> Iterator[dict[str, Any]]:
    """Serves whatever `routes` holds: path -> JSON body."""
    routes: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(routes.get(self.path, {"error": "not found"})).encode()
            self.send_response(200 if self.path in routes else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "routes": routes}
    server.shutdown()
    server.server_close()


async def test_altered_receipt_fails(dev_chain, facilitator, settled, forged_facilitator, capsys):
    genuine = (await facilitator.get(f"/receipt/{settled['tx']}")).json()
    forged = {**genuine, "receipt": {**genuine["receipt"], "amount": str(AMOUNT * 100)}}
    forged_facilitator["routes"][f"/receipt/{settled['tx']}"] = forged
    forged_facilitator["routes"]["/receipt-key"] = (await facilitator.get("/receipt-key")).json()

    args = [
        "receipt",
        settled["tx"],
        "--facilitator",
        forged_facilitator["url"],
        "--rpc-url",
        dev_chain.rpc_url,
    ]
    code, out, err = await x402(capsys, *args)
    assert code == 1, out + err
    assert "signature" in err  # the altered body no longer recovers to the facilitator's key
    assert "Transfer of 1234500" in err  # and the chain shows a different amount


async def test_unknown_transaction_is_unavailable(dev_chain, facilitator, capsys):
    code, _, err = await x402(
        capsys, "receipt", "0x" + "ab" * 32, "--facilitator", facilitator.url, "--rpc-url", dev_chain.rpc_url
    )
    assert code == 3
    assert "knows no payment" in err
