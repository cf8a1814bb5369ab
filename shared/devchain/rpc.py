"""A tiny synchronous JSON-RPC client for dev tooling (deploying, minting, test set-up).

Deliberately not web3.py: that costs several HTTP requests and milliseconds of ABI work per call. This is not
for hot paths either; the services have their own async clients.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

# Error(string) and Panic(uint256), the two revert payloads solc emits itself.
_ERROR_SELECTOR = bytes.fromhex("08c379a0")
_PANIC_SELECTOR = bytes.fromhex("4e487b71")


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data

    @property
    def revert_reason(self) -> str | None:
        """The contract's revert reason, if this error is a revert."""
        if isinstance(self.data, str) and self.data.startswith("0x"):
            reason = decode_revert_reason(bytes.fromhex(self.data[2:]))
            if reason is not None:
                return reason
        prefix = "execution reverted: "
        if self.message.startswith(prefix):
            return self.message[len(prefix) :]
        return None

    @property
    def is_revert(self) -> bool:
        # Code 3 is the de-facto standard for reverts; the message check covers nodes that use -32000.
        return self.code == 3 or "revert" in self.message.lower()


class TransactionReverted(Exception):
    """A transaction reverted, either during gas estimation or on chain."""

    def __init__(self, reason: str | None, receipt: Receipt | None = None) -> None:
        where = f" in tx {receipt.tx_hash}" if receipt is not None else " (gas estimation)"
        super().__init__(f"transaction reverted{where}: {reason or 'no reason'}")
        self.reason = reason
        self.receipt = receipt


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    status: int
    gas_used: int
    contract_address: str | None
    logs: tuple[dict[str, Any], ...]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Receipt:
        created = raw.get("contractAddress")
        return cls(
            tx_hash=raw["transactionHash"],
            block_number=int(raw["blockNumber"], 16),
            status=int(raw["status"], 16),
            gas_used=int(raw["gasUsed"], 16),
            contract_address=to_checksum_address(created) if created else None,
            logs=tuple(raw.get("logs", ())),
        )


def decode_revert_reason(data: bytes) -> str | None:
    if data[:4] == _ERROR_SELECTOR:
        (reason,) = decode(["string"], data[4:])
        return str(reason)
    if data[:4] == _PANIC_SELECTOR:
        (code,) = decode(["uint256"], data[4:])
        return f"Panic(0x{code:02x})"
    return None


def selector(signature: str) -> bytes:
    """4-byte selector of a canonical signature such as "transfer(address,uint256)"."""
    return keccak(text=signature)[:4]


def arg_types(signature: str) -> list[str]:
    """Top-level argument types of a canonical signature (tuple types are kept whole)."""
    inner = signature[signature.index("(") + 1 : signature.rindex(")")]
    types: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(inner):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            types.append(inner[start:i])
            start = i + 1
    if inner:
        types.append(inner[start:])
    return types


def encode_call(signature: str, args: Sequence[Any] = ()) -> bytes:
    return selector(signature) + encode(arg_types(signature), list(args))


class Rpc:
    """Synchronous JSON-RPC client bound to one node.

    Not safe for concurrent senders with the same key: nonces come from the node's pending count.
    With `mine_on_send`, every sent transaction is followed by `anvil_mine`, so set-up does not wait a block
    per transaction on an Anvil that runs with a block time.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, mine_on_send: bool = False) -> None:
        self.url = url
        self.mine_on_send = mine_on_send
        self._http = httpx.Client(timeout=timeout)
        self._ids = itertools.count(1)
        self._chain_id: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        response = self._http.post(self.url, json=body)
        response.raise_for_status()
        payload = response.json()
        error = payload.get("error")
        if error is not None:
            raise RpcError(
                method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        return payload["result"]

    # -- reads ---------------------------------------------------------------------------------------

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.request("eth_chainId"), 16)
        return self._chain_id

    def block_number(self) -> int:
        return int(self.request("eth_blockNumber"), 16)

    def latest_timestamp(self) -> int:
        block = self.request("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    def get_balance(self, address: str) -> int:
        return int(self.request("eth_getBalance", [address, "latest"]), 16)

    def get_code(self, address: str) -> bytes:
        return _hex_bytes(self.request("eth_getCode", [address, "latest"]))

    def get_storage_at(self, address: str, slot: int) -> bytes:
        return _hex_bytes(self.request("eth_getStorageAt", [address, hex(slot), "latest"])).rjust(32, b"\0")

    def eth_call(self, to: str, data: bytes, *, sender: str | None = None, block: str = "latest") -> bytes:
        tx: dict[str, str] = {"to": to, "data": "0x" + data.hex()}
        if sender is not None:
            tx["from"] = sender
        return _hex_bytes(self.request("eth_call", [tx, block]))

    def call(
        self,
        to: str,
        signature: str,
        args: Sequence[Any] = (),
        returns: Sequence[str] = (),
        *,
        sender: str | None = None,
    ) -> tuple[Any, ...]:
        """Call a view function: call(token, "balanceOf(address)", [who], ["uint256"])."""
        out = self.eth_call(to, encode_call(signature, args), sender=sender)
        return tuple(decode(list(returns), out)) if returns else ()

    # -- transactions --------------------------------------------------------------------------------

    def send_transaction(
        self, key: str, *, to: str | None, data: bytes = b"", value: int = 0, gas: int | None = None
    ) -> Receipt:
        """Sign locally, send, wait for the receipt. `to=None` deploys. Raises TransactionReverted."""
        account = Account.from_key(key)
        call: dict[str, str] = {"from": account.address, "data": "0x" + data.hex(), "value": hex(value)}
        if to is not None:
            call["to"] = to
        if gas is None:
            try:
                # Headroom because estimates can be tight for calls that touch cold storage late.
                gas = int(self.request("eth_estimateGas", [call]), 16) * 6 // 5
            except RpcError as exc:
                if exc.is_revert:
                    raise TransactionReverted(exc.revert_reason) from exc
                raise
        gas_price = int(self.request("eth_gasPrice"), 16)
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id(),
            "nonce": int(self.request("eth_getTransactionCount", [account.address, "pending"]), 16),
            "value": value,
            "data": data,
            "gas": gas,
            # Twice the current price survives several full blocks of base-fee increases.
            "maxFeePerGas": 2 * gas_price,
            "maxPriorityFeePerGas": int(self.request("eth_maxPriorityFeePerGas"), 16),
        }
        if to is not None:
            tx["to"] = to
        signed = Account.sign_transaction(tx, key)
        receipt = self.wait_for_receipt(self.send_raw_transaction(signed.raw_transaction))
        if receipt.status != 1:
            raise TransactionReverted(self._replay_reason(call, receipt), receipt)
        return receipt

    def send_raw_transaction(self, raw: bytes) -> str:
        tx_hash = str(self.request("eth_sendRawTransaction", ["0x" + raw.hex()]))
        if self.mine_on_send:
            self.mine()
        return tx_hash

    def wait_for_receipt(self, tx_hash: str, *, timeout: float = 60.0) -> Receipt:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            raw = self.request("eth_getTransactionReceipt", [tx_hash])
            if raw is not None:
                return Receipt.from_json(raw)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no receipt for {tx_hash} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _replay_reason(self, call: dict[str, str], receipt: Receipt) -> str | None:
        # Re-executing on the block's state only approximates the original context (transactions earlier
        # in the same block are already applied), which is good enough to surface a revert string.
        try:
            self.request("eth_call", [call, hex(receipt.block_number)])
        except RpcError as exc:
            return exc.revert_reason
        return None

    # -- Anvil / Hardhat test methods ----------------------------------------------------------------

    def set_balance(self, address: str, wei: int) -> None:
        self.request("anvil_setBalance", [address, hex(wei)])

    def set_code(self, address: str, code: bytes) -> None:
        self.request("anvil_setCode", [address, "0x" + code.hex()])

    def set_storage_at(self, address: str, slot: int, value: bytes) -> None:
        self.request(
            "anvil_setStorageAt", [address, "0x" + slot.to_bytes(32, "big").hex(), "0x" + value.hex()]
        )

    def snapshot(self) -> str:
        return str(self.request("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        """Anvil drops the snapshot (and later ones) on revert: take a new one to revert again."""
        if not self.request("evm_revert", [snapshot_id]):
            raise RpcError("evm_revert", 0, f"unknown snapshot {snapshot_id}")

    def mine(self, blocks: int = 1) -> None:
        self.request("anvil_mine", [hex(blocks)])

    def increase_time(self, seconds: int) -> None:
        self.request("evm_increaseTime", [hex(seconds)])


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)
