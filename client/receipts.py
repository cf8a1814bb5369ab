"""Checking a facilitator's payment receipt: who signed it, and whether the chain itself shows that very
transfer. The chain is asked here, through the client's own RPC, and never through the facilitator: a
receipt is worth checking only if the evidence does not come from the party that issued it. Reading the
logs is a pure function of the mined receipt (shared.evm.transfer_logs), which the facilitator also uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_abi.abi import decode

from shared.evm.transfer_logs import MissingEvent, missing_transfer_event
from shared.receipt_signing import recover_receipt_signer

TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")

_DECIMALS = "0x313ce567"  # decimals()
_SYMBOL = "0x95d89b41"  # symbol()

# What the on-chain check says of a transaction in no block (yet); `x402 pay` tells it apart from a failure.
NOT_MINED = "not mined yet"
UNKNOWN_TRANSACTION = "the chain does not know this transaction"


class ReceiptUnavailable(Exception):
    """What the check needs could not be fetched (facilitator or RPC unreachable, unknown hash)."""


class AmbiguousReceipt(ReceiptUnavailable):
    """The transaction carries several payments (a batch) and no nonce said which one is meant."""

    def __init__(self, tx_hash: str, nonces: list[str]) -> None:
        listed = ", ".join(nonces) or "none listed"
        super().__init__(
            f"transaction {tx_hash} carries {len(nonces)} payments; name one with --nonce ({listed})"
        )
        self.nonces = nonces


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class TokenInfo:
    symbol: str | None = None
    decimals: int | None = None


@dataclass
class ReceiptReport:
    tx_hash: str
    document: dict[str, Any]  # as served: {"receipt", "signature", "signer", "signatureScheme"}
    checks: list[Check] = field(default_factory=list)
    token: TokenInfo = field(default_factory=TokenInfo)
    confirmations: int | None = None  # counted from the chain's head, not taken from the receipt

    @property
    def receipt(self) -> dict[str, Any]:
        body = self.document.get("receipt")
        return body if isinstance(body, dict) else {}

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


# -- facilitator ---------------------------------------------------------------------------------------


def fetch_document(
    http: httpx.Client, facilitator_url: str, tx_hash: str, nonce: str | None = None
) -> dict[str, Any]:
    """`nonce` names the payment when the transaction carries several (a batch); without one, the
    facilitator answers 409 for a batch, with the nonces it carries."""
    url = f"{facilitator_url.rstrip('/')}/receipt/{tx_hash}"
    answer = _get(http, url, params={"nonce": nonce} if nonce is not None else None)
    if answer.status_code == 404:
        named = f" and nonce {nonce}" if nonce is not None else ""
        raise ReceiptUnavailable(f"the facilitator knows no payment with transaction {tx_hash}{named}")
    body = _json(answer, url)
    if answer.status_code == 409 and isinstance(body, dict) and isinstance(body.get("nonces"), list):
        raise AmbiguousReceipt(tx_hash, [str(n) for n in body["nonces"]])
    if answer.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("receipt"), dict):
        raise ReceiptUnavailable(f"GET {url} answered {answer.status_code}: {answer.text[:200]}")
    return body


def fetch_receipt_key(http: httpx.Client, facilitator_url: str) -> str:
    url = f"{facilitator_url.rstrip('/')}/receipt-key"
    answer = _get(http, url)
    body = _json(answer, url)
    address = body.get("address") if isinstance(body, dict) else None
    if answer.status_code != 200 or not isinstance(address, str):
        raise ReceiptUnavailable(f"GET {url} gave no receipt key ({answer.status_code}): {answer.text[:200]}")
    return address


def _get(http: httpx.Client, url: str, params: dict[str, str] | None = None) -> httpx.Response:
    try:
        return http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise ReceiptUnavailable(f"cannot reach {url}: {exc}") from None


def _json(answer: httpx.Response, url: str) -> Any:
    try:
        return answer.json()
    except ValueError:
        raise ReceiptUnavailable(f"GET {url} answered {answer.status_code} without JSON") from None


# -- checks of the document itself ---------------------------------------------------------------------


def check_signature(document: dict[str, Any], expected: str, source: str) -> Check:
    """`source` says where `expected` came from, since that is what the result is worth."""
    if not document.get("signature"):
        return Check("signature", False, "the receipt is not signed (the facilitator has no receipt key)")
    try:
        signer = recover_receipt_signer(document)
    except Exception as exc:
        return Check("signature", False, f"malformed signature: {exc}")
    claimed = document.get("signer")
    if isinstance(claimed, str) and claimed.lower() != signer.lower():
        return Check("signature", False, f"signed by {signer}, but the document claims {claimed}")
    if signer.lower() != expected.lower():
        return Check("signature", False, f"signed by {signer}, not by {expected}, the key {source}")
    return Check("signature", True, f"signed by {signer}, the key {source}")


def check_document(receipt: dict[str, Any], tx_hash: str, nonce: str | None = None) -> list[Check]:
    """`nonce`: the payment asked for. A batch carries several, so a receipt of the right transaction may
    still be the receipt of someone else's payment in it."""
    checks = []
    named = str(receipt.get("txHash", ""))
    checks.append(
        Check("transaction hash", True, named)
        if named.lower() == tx_hash.lower()
        else Check(
            "transaction hash", False, f"the receipt is for {named or 'no transaction'}, not {tx_hash}"
        )
    )
    if nonce is not None:
        got = str(receipt.get("nonce", ""))
        checks.append(
            Check("nonce", True, got)
            if got.lower() == nonce.lower()
            else Check("nonce", False, f"the receipt is for nonce {got or '(none)'}, not {nonce}")
        )
    status = receipt.get("status")
    if status == "confirmed":
        checks.append(Check("facilitator status", True, "confirmed"))
    else:
        replaced = f", replaced by {receipt['replacedBy']}" if receipt.get("replacedBy") else ""
        checks.append(Check("facilitator status", False, f"{status}{replaced}, not confirmed"))
    return checks


# -- the chain ----------------------------------------------------------------------------------------


class JsonRpc:
    def __init__(self, http: httpx.Client, url: str) -> None:
        self._http = http
        self.url = url

    def call(self, method: str, params: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        try:
            answer = self._http.post(self.url, json=body).json()
        except httpx.HTTPError as exc:
            raise ReceiptUnavailable(f"cannot reach the RPC at {self.url}: {exc}") from None
        except ValueError:
            raise ReceiptUnavailable(f"the RPC at {self.url} did not answer JSON") from None
        if not isinstance(answer, dict) or "error" in answer:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise ReceiptUnavailable(f"RPC {method} failed: {error}")
        return answer.get("result")


def transfer_problem(
    chain_receipt: dict[str, Any], *, token: str, payer: str, pay_to: str, amount: int, nonce: str
) -> str | None:
    """None when the mined receipt's logs show this authorization used and this amount moved by it.

    AuthorizationUsed proves this very authorization (payer, nonce) was consumed, its paired Transfer
    where the money went and how much; in a batch another call's Transfer cannot vouch for it."""
    missing = missing_transfer_event(
        chain_receipt, token=token, payer=payer, pay_to=pay_to, amount=amount, nonce=nonce
    )
    if missing is None:
        return None
    if missing is MissingEvent.AUTHORIZATION_USED:
        return f"no AuthorizationUsed({payer}, {nonce}) event of {token}"
    return f"no Transfer of {amount} from {payer} to {pay_to} by {token} paired with its AuthorizationUsed"


def _int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def check_on_chain(rpc: JsonRpc, receipt: dict[str, Any], tx_hash: str) -> tuple[list[Check], int | None]:
    """The checks, and the confirmations counted from the chain's head (None when not mined).

    Only the mined receipt's logs prove the payment, never the transaction's `to` or input: a facilitator
    may send the transfer to the token itself or batch it with others through Multicall3's tryAggregate,
    where the batch succeeds (status 1) even when one inner transfer fails; then that payment's events are
    missing and the "events" check fails."""
    checks: list[Check] = []
    expected_chain = _int(receipt.get("chainId"))
    chain_id = _int(rpc.call("eth_chainId", []))
    if expected_chain is None or chain_id != expected_chain:
        checks.append(
            Check("chain", False, f"the RPC serves chain {chain_id}, the receipt names {expected_chain}")
        )
        return checks, None
    checks.append(Check("chain", True, f"chain id {chain_id}"))

    tx = rpc.call("eth_getTransactionByHash", [tx_hash])
    mined = rpc.call("eth_getTransactionReceipt", [tx_hash])
    if not isinstance(tx, dict):
        checks.append(Check("transaction", False, UNKNOWN_TRANSACTION))
        return checks, None
    if not isinstance(mined, dict):
        checks.append(Check("transaction", False, NOT_MINED))
        return checks, None
    if _int(mined.get("status")) != 1:
        checks.append(Check("transaction", False, f"reverted on chain (status {mined.get('status')})"))
        return checks, None
    checks.append(Check("transaction", True, "mined, status 1"))

    block = _int(mined.get("blockNumber"))
    block_hash = str(mined.get("blockHash", "")).lower()
    claimed_block = _int(receipt.get("blockNumber"))
    claimed_hash = str(receipt.get("blockHash", "")).lower()
    if (
        block != claimed_block
        or block_hash != claimed_hash
        or str(tx.get("blockHash", "")).lower() != block_hash
    ):
        checks.append(
            Check(
                "block",
                False,
                f"the chain has it in block {block} ({block_hash}), "
                f"the receipt says {claimed_block} ({claimed_hash or 'no hash'})",
            )
        )
    else:
        checks.append(Check("block", True, f"block {block} ({block_hash})"))

    amount = _int(receipt.get("amount"))
    fields = [receipt.get(k) for k in ("token", "payer", "payTo", "nonce")]
    if amount is None or not all(isinstance(f, str) for f in fields):
        checks.append(Check("events", False, "the receipt lacks token, payer, payTo, amount or nonce"))
    else:
        token, payer, pay_to, nonce = (str(f) for f in fields)
        problem = transfer_problem(mined, token=token, payer=payer, pay_to=pay_to, amount=amount, nonce=nonce)
        checks.append(
            Check(
                "events", problem is None, problem or "AuthorizationUsed and Transfer of the amount to payTo"
            )
        )

    head = _int(rpc.call("eth_blockNumber", []))
    confirmations = max(head - block + 1, 0) if head is not None and block is not None else None
    return checks, confirmations


def read_token(rpc: JsonRpc, token: str) -> TokenInfo:
    """Symbol and decimals for display; a token that will not say is shown in base units."""
    try:
        decimals = decode(
            ["uint8"], _bytes(rpc.call("eth_call", [{"to": token, "data": _DECIMALS}, "latest"]))
        )
        symbol = decode(["string"], _bytes(rpc.call("eth_call", [{"to": token, "data": _SYMBOL}, "latest"])))
    except Exception:
        return TokenInfo()
    return TokenInfo(symbol=str(symbol[0]), decimals=int(decimals[0]))


def _bytes(result: Any) -> bytes:
    return bytes.fromhex(str(result)[2:])


# -- everything -----------------------------------------------------------------------------------------


def verify_receipt(
    tx_hash: str,
    *,
    facilitator_url: str,
    rpc_url: str,
    expected_signer: str | None = None,
    nonce: str | None = None,
    timeout: float = 10.0,
) -> ReceiptReport:
    """Fetch the receipt of `tx_hash` (of its payment with EIP-3009 `nonce`, needed when the transaction
    carries several) and run every check. Raises ReceiptUnavailable when something the checks need cannot
    be fetched (AmbiguousReceipt when a nonce is needed); a receipt that fails a check comes back with
    report.ok False."""
    with httpx.Client(timeout=timeout) as http:
        document = fetch_document(http, facilitator_url, tx_hash, nonce)
        report = ReceiptReport(tx_hash, document)
        if expected_signer is not None:
            source = "given by --expected-signer"
        else:
            # Weaker: the facilitator vouches for its own key. Pin it with --expected-signer where it matters.
            expected_signer = fetch_receipt_key(http, facilitator_url)
            source = "the facilitator publishes at /receipt-key"
        report.checks.append(check_signature(document, expected_signer, source))
        report.checks.extend(check_document(report.receipt, tx_hash, nonce))
        rpc = JsonRpc(http, rpc_url)
        chain_checks, report.confirmations = check_on_chain(rpc, report.receipt, tx_hash)
        report.checks.extend(chain_checks)
        token = report.receipt.get("token")
        if isinstance(token, str):
            report.token = read_token(rpc, token)
    return report
