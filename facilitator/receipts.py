"""`GET /receipt/{txHash}`: what a client needs to trust a payment, from the ledger or, for transfers this
facilitator did not send, from the chain; signed with the facilitator's receipt key.

One transaction may carry several payments (a Multicall3 `tryAggregate` batch), so a payment is named by the
transaction hash and its EIP-3009 nonce; the nonce may be left out when the transaction carries only one."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from eth_abi.abi import decode

from shared.evm import calls
from shared.evm.address import normalize_address
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import to_int
from shared.tokens import Token, TokenRegistry

from .runtime import NetworkRuntime
from .settlement.ledger import Ledger, SettlementRow
from .settlement.receipt_checks import receipt_succeeded, transfer_matches
from .settlement.states import Status

# A transaction hash or an EIP-3009 nonce: 32 bytes in hex. Matched whole (fullmatch: no trailing newline).
BYTES32_HEX = re.compile(r"0x[0-9a-fA-F]{64}")

P = TypeVar("P")


class AmbiguousReceipt(Exception):
    """The transaction carries several payments and no nonce named one (HTTP 409, with their nonces)."""

    def __init__(self, nonces: list[str]) -> None:
        super().__init__(f"this transaction carries {len(nonces)} payments; name one with ?nonce=0x...")
        self.nonces = nonces


_AUTH_TYPES_VRS = [
    "address",
    "address",
    "uint256",
    "uint256",
    "uint256",
    "bytes32",
    "uint8",
    "bytes32",
    "bytes32",
]
_AUTH_TYPES_BYTES = ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _confirmations(block_number: int | None, head: int | None) -> int:
    if block_number is None or head is None:
        return 0
    return max(head - block_number + 1, 0)


def select_payment(payments: Sequence[tuple[str, P]], nonce: str | None) -> P | None:
    """The payment a request names among a transaction's (nonce, payment) pairs: the one of `nonce`, or
    without a nonce the only one. None when there is none; AmbiguousReceipt when only a nonce could say."""
    if nonce is not None:
        return next((p for n, p in payments if n.lower() == nonce.lower()), None)
    if len(payments) > 1:
        raise AmbiguousReceipt([n for n, _ in payments])
    return payments[0][1] if payments else None


def receipt_from_row(
    row: SettlementRow, tx_hash: str, head: int | None, network: NetworkRuntime, carried: int = 1
) -> dict[str, Any]:
    status = {Status.CONFIRMED: "confirmed", Status.FAILED: "failed"}.get(row.status, "pending")
    doc: dict[str, Any] = {
        "txHash": tx_hash,
        "status": status,
        "source": "ledger",
        "network": network.network,
        "chainId": row.key.chain_id,
        "token": row.key.token,
        "payer": row.key.payer,
        "payTo": row.pay_to,
        "amount": str(row.amount),
        "nonce": row.key.auth_nonce,
        "x402Version": row.x402_version,
        "blockNumber": row.block_number,
        "blockHash": row.block_hash,
        "confirmations": _confirmations(row.block_number, head) if status == "confirmed" else 0,
        "createdAt": _iso(row.created_at),
        "submittedAt": _iso(row.submitted_at),
        "finalizedAt": _iso(row.finalized_at),
        "errorReason": row.error_reason,
        # Only for a batch: a single-payment document stays exactly what it was before batching.
        "paymentsInTransaction": carried if carried > 1 else None,
    }
    if row.tx_hash and row.tx_hash.lower() != tx_hash.lower():
        # A dropped transaction of this settlement: point at the one that carries it now.
        doc["status"] = "replaced"
        doc["replacedBy"] = row.tx_hash
    return {k: v for k, v in doc.items() if v is not None}


def decode_transfer_input(data: bytes) -> dict[str, Any] | None:
    selector, args = data[:4], data[4:]
    try:
        if selector == calls.TRANSFER_WITH_AUTHORIZATION_VRS:
            values = decode(_AUTH_TYPES_VRS, args)
        elif selector == calls.TRANSFER_WITH_AUTHORIZATION_BYTES:
            values = decode(_AUTH_TYPES_BYTES, args)
        else:
            return None
    except Exception:
        return None
    return {
        "payer": normalize_address(values[0]),
        "payTo": normalize_address(values[1]),
        "amount": int(values[2]),
        "nonce": "0x" + bytes(values[5]).hex(),
    }


def batch_calls(data: bytes) -> list[tuple[str, bytes]] | None:
    """The (target, calldata) calls of a Multicall3 `tryAggregate` input; None for any other input."""
    inner = calls.decode_try_aggregate_input(data)
    return None if inner is None else [(normalize_address(target), calldata) for target, calldata in inner]


def transfers_in_transaction(
    to: str, data: bytes, token_at: Callable[[str], Token | None]
) -> list[tuple[Token, dict[str, Any]]]:
    """The EIP-3009 transfers of configured tokens a transaction makes, in call order: one sent straight to
    the token, or the calls of a Multicall3 `tryAggregate` (a batch, or an ERC-6492 deployment and its
    transfer). Other calls of a batch (a wallet deployment, anything else) are not payments: skipped."""
    is_batch = to.lower() == calls.MULTICALL3_ADDRESS.lower()
    inner = (batch_calls(data) or []) if is_batch else [(to, data)]
    found = []
    for target, calldata in inner:
        token = token_at(target)
        decoded = decode_transfer_input(calldata) if token is not None else None
        if token is not None and decoded is not None:
            found.append((token, decoded))
    return found


class ReceiptService:
    def __init__(self, ledger: Ledger, networks: dict[int, NetworkRuntime], registry: TokenRegistry) -> None:
        self.ledger = ledger
        self.networks = networks
        self.registry = registry

    async def lookup(self, tx_hash: str, nonce: str | None = None) -> dict[str, Any] | None:
        """The receipt of the payment `nonce` names in the transaction (or of its only payment); None when
        there is no such payment. Raises AmbiguousReceipt for a batch without a nonce, and RpcUnavailable
        when the chain did not answer what the receipt would state: a signed document must not guess."""
        tx_hash = tx_hash.lower()
        rows = await self.ledger.rows_by_tx_hash(tx_hash)
        if rows:
            # A transaction the ledger stored carries exactly its rows: no need to ask the chain.
            row = select_payment([(r.key.auth_nonce, r) for r in rows], nonce)
            network = self.networks.get(row.key.chain_id) if row is not None else None
            if row is None or network is None:
                return None
            # Only a confirmed row counts confirmations: the others need nothing from the chain.
            head = await _head(network) if row.status is Status.CONFIRMED else None
            return receipt_from_row(row, tx_hash, head, network, carried=len(rows))
        unavailable: RpcUnavailable | None = None
        for network in self.networks.values():
            try:
                found = await self._from_chain(network, tx_hash, nonce)
            except RpcUnavailable as exc:
                unavailable = exc  # the transaction may be on this chain: "no such payment" is not known
                continue
            if found is not None:
                return found
        if unavailable is not None:
            raise unavailable
        return None

    async def _from_chain(
        self, network: NetworkRuntime, tx_hash: str, nonce: str | None
    ) -> dict[str, Any] | None:
        tx, receipt = await network.rpc.batch(
            [("eth_getTransactionByHash", [tx_hash]), ("eth_getTransactionReceipt", [tx_hash])]
        )
        for answer in (tx, receipt):
            # An error is not "unknown" nor "not mined": the document would call a mined payment pending.
            if isinstance(answer, RpcError):
                raise RpcUnavailable(f"{network.network}: {answer.message}")
        if not isinstance(tx, dict) or not tx.get("to"):
            return None
        transfers = transfers_in_transaction(
            str(tx["to"]),
            bytes.fromhex(str(tx.get("input", "0x"))[2:]),
            lambda address: self.registry.get(network.chain_id, address),
        )
        mined = receipt if isinstance(receipt, dict) else None

        def happened(token: Token, decoded: dict[str, Any]) -> bool:
            # The logs decide, not the transaction's status alone: a batch succeeds even when an inner
            # transfer fails, and then only that transfer's AuthorizationUsed and Transfer logs are missing.
            return (
                mined is not None
                and receipt_succeeded(mined)
                and transfer_matches(
                    mined,
                    token=token.address,
                    payer=decoded["payer"],
                    pay_to=decoded["payTo"],
                    amount=decoded["amount"],
                    auth_nonce=decoded["nonce"],
                )
                is None
            )

        shown = [(token, decoded, happened(token, decoded)) for token, decoded in transfers]
        # Calls that reuse one nonce (only one of them can succeed): the one that did answers for it.
        ranked = sorted(shown, key=lambda tdh: not tdh[2])
        found = select_payment([(d["nonce"], (t, d, ok)) for t, d, ok in ranked], nonce)
        if found is None:
            return None
        token, decoded, ok = found
        doc: dict[str, Any] = {
            "txHash": tx_hash,
            "source": "chain",
            "network": network.network,
            "chainId": network.chain_id,
            "token": token.address,
            **{k: (str(v) if k == "amount" else v) for k, v in decoded.items()},
        }
        if len(transfers) > 1:
            doc["paymentsInTransaction"] = len(transfers)
        if mined is None:
            doc["status"] = "pending"
            doc["confirmations"] = 0
            return doc
        block_number = to_int(mined["blockNumber"])
        doc.update(
            status="confirmed" if ok else "failed",
            blockNumber=block_number,
            blockHash=mined.get("blockHash"),
            confirmations=_confirmations(block_number, await _head(network)) if ok else 0,
        )
        return doc


async def _head(network: NetworkRuntime) -> int:
    """The chain's head, for a confirmation count; RpcUnavailable rather than a count of 0 for a mined
    payment."""
    try:
        return await network.eth.block_number()
    except RpcError as exc:
        raise RpcUnavailable(f"{network.network}: eth_blockNumber: {exc.message}") from exc
