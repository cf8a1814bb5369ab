"""`GET /receipt/{txHash}`: what a client needs to trust a payment, from the ledger or, for transfers this
facilitator did not send, from the chain; signed with the facilitator's receipt key."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from eth_abi.abi import decode

from shared.evm import calls
from shared.evm.address import normalize_address
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import to_int
from shared.tokens import TokenRegistry

from .runtime import NetworkRuntime
from .settlement.ledger import Ledger, SettlementRow
from .settlement.receipt_checks import receipt_succeeded, transfer_matches
from .settlement.states import Status

TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")

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


def receipt_from_row(
    row: SettlementRow, tx_hash: str, head: int | None, network: NetworkRuntime
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


class ReceiptService:
    def __init__(self, ledger: Ledger, networks: dict[int, NetworkRuntime], registry: TokenRegistry) -> None:
        self.ledger = ledger
        self.networks = networks
        self.registry = registry

    async def lookup(self, tx_hash: str) -> dict[str, Any] | None:
        tx_hash = tx_hash.lower()
        row = await self.ledger.get_by_tx_hash(tx_hash)
        if row is not None:
            network = self.networks.get(row.key.chain_id)
            if network is None:
                return None
            head = await _head(network)
            return receipt_from_row(row, tx_hash, head, network)
        for network in self.networks.values():
            found = await self._from_chain(network, tx_hash)
            if found is not None:
                return found
        return None

    async def _from_chain(self, network: NetworkRuntime, tx_hash: str) -> dict[str, Any] | None:
        try:
            tx, receipt = await network.rpc.batch(
                [("eth_getTransactionByHash", [tx_hash]), ("eth_getTransactionReceipt", [tx_hash])]
            )
        except RpcUnavailable:
            return None
        if not isinstance(tx, dict) or not tx.get("to"):
            return None
        token = self.registry.get(network.chain_id, str(tx["to"]))
        if token is None:
            return None
        decoded = decode_transfer_input(bytes.fromhex(str(tx.get("input", "0x"))[2:]))
        if decoded is None:
            return None
        doc: dict[str, Any] = {
            "txHash": tx_hash,
            "source": "chain",
            "network": network.network,
            "chainId": network.chain_id,
            "token": token.address,
            **{k: (str(v) if k == "amount" else v) for k, v in decoded.items()},
        }
        if not isinstance(receipt, dict):
            doc["status"] = "pending"
            doc["confirmations"] = 0
            return doc
        block_number = to_int(receipt["blockNumber"])
        ok = (
            receipt_succeeded(receipt)
            and transfer_matches(
                receipt,
                token=token.address,
                payer=decoded["payer"],
                pay_to=decoded["payTo"],
                amount=decoded["amount"],
                auth_nonce=decoded["nonce"],
            )
            is None
        )
        doc.update(
            status="confirmed" if ok else "failed",
            blockNumber=block_number,
            blockHash=receipt.get("blockHash"),
            confirmations=_confirmations(block_number, await _head(network)) if ok else 0,
        )
        return doc


async def _head(network: NetworkRuntime) -> int | None:
    try:
        return await network.eth.block_number()
    except (RpcError, RpcUnavailable):
        return None
