"""Load compiled contract artifacts and deploy them; helpers for the ERC-1271/ERC-6492 test wallets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

from shared.devchain.rpc import Rpc, encode_call

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "contracts" / "artifacts"

WALLET_FACTORY_DEPLOY = "deploy(address,bytes32)"
# ERC-6492: a signature ending in this suffix is abi.encode(factory, factoryCalldata, innerSignature).
ERC6492_MAGIC_SUFFIX = bytes.fromhex("64926492" * 8)


# {source path: {library name: [{"start": byte offset, "length": 20}, ...]}}, as solc and hardhat emit it.
LinkReferences = Mapping[str, Mapping[str, Sequence[Mapping[str, int]]]]


@dataclass(frozen=True)
class Artifact:
    """ABI and bytecode of one contract. Bytecode stays hex because unlinked code holds placeholders."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode_hex: str
    deployed_bytecode_hex: str
    link_references: LinkReferences
    deployed_link_references: LinkReferences

    def constructor_types(self) -> list[str]:
        for entry in self.abi:
            if entry.get("type") == "constructor":
                return [str(arg["type"]) for arg in entry.get("inputs", [])]
        return []

    def creation_code(self, args: Sequence[Any] = (), libraries: Mapping[str, str] | None = None) -> bytes:
        """Linked init code followed by the ABI-encoded constructor arguments."""
        code = link(self.bytecode_hex, self.link_references, libraries or {})
        return code + encode(self.constructor_types(), list(args))

    def deployed_code(self, libraries: Mapping[str, str] | None = None) -> bytes:
        """Runtime code as the compiler emitted it (immutables zero-filled)."""
        return link(self.deployed_bytecode_hex, self.deployed_link_references, libraries or {})


def link(bytecode_hex: str, link_references: LinkReferences, libraries: Mapping[str, str]) -> bytes:
    """Splice library addresses in at the compiler's recorded offsets (not by placeholder search)."""
    code = bytecode_hex.removeprefix("0x")
    for by_name in link_references.values():
        for library, references in by_name.items():
            if library not in libraries:
                raise ValueError(f"bytecode needs library {library}; pass its address")
            address_hex = to_canonical_address(libraries[library]).hex()
            for ref in references:
                start, length = 2 * ref["start"], 2 * ref["length"]
                if length != len(address_hex):
                    raise ValueError(f"unexpected link reference length {ref['length']} for {library}")
                code = code[:start] + address_hex + code[start + length :]
    try:
        return bytes.fromhex(code)
    except ValueError:
        raise ValueError("bytecode still holds unlinked library placeholders") from None


def load_artifact_file(path: Path) -> Artifact:
    """Our own artifacts (contracts/build.mjs) and hardhat artifacts share the fields used here."""
    raw = json.loads(path.read_text())
    return Artifact(
        name=raw["contractName"],
        abi=tuple(raw["abi"]),
        bytecode_hex=raw["bytecode"],
        deployed_bytecode_hex=raw["deployedBytecode"],
        link_references=raw.get("linkReferences", {}),
        deployed_link_references=raw.get("deployedLinkReferences", {}),
    )


@cache
def load_artifact(name: str) -> Artifact:
    """One of this project's contracts, e.g. load_artifact("ERC1271Wallet")."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `npm run build:contracts`")
    return load_artifact_file(path)


def deploy(
    rpc: Rpc,
    key: str,
    artifact: Artifact,
    args: Sequence[Any] = (),
    libraries: Mapping[str, str] | None = None,
) -> str:
    """Deploy with a normal CREATE transaction from `key`; returns the checksummed address."""
    receipt = rpc.send_transaction(key, to=None, data=artifact.creation_code(args, libraries))
    if receipt.contract_address is None:
        raise RuntimeError(f"deployment of {artifact.name} produced no contract address")
    return receipt.contract_address


# -- ERC-1271 wallets --------------------------------------------------------------------------------


def deploy_wallet_factory(rpc: Rpc, key: str) -> str:
    return deploy(rpc, key, load_artifact("ERC1271WalletFactory"))


def wallet_address(factory: str, owner: str, salt: bytes) -> str:
    """Counterfactual address of factory.deploy(owner, salt), computed locally (CREATE2)."""
    init_code = load_artifact("ERC1271Wallet").creation_code([owner])
    digest = keccak(b"\xff" + to_canonical_address(factory) + _salt32(salt) + keccak(init_code))
    return to_checksum_address(digest[12:])


def wallet_deploy_calldata(owner: str, salt: bytes) -> bytes:
    return encode_call(WALLET_FACTORY_DEPLOY, [owner, _salt32(salt)])


def deploy_wallet(rpc: Rpc, key: str, factory: str, owner: str, salt: bytes) -> str:
    """Deploy (or find) the wallet; any funded key may pay, ownership comes from `owner`."""
    rpc.send_transaction(key, to=factory, data=wallet_deploy_calldata(owner, salt))
    return wallet_address(factory, owner, salt)


def wrap_erc6492(factory: str, factory_calldata: bytes, signature: bytes) -> bytes:
    """ERC-6492 signature for a wallet that may not be deployed yet."""
    encoded = encode(["address", "bytes", "bytes"], [factory, factory_calldata, signature])
    return encoded + ERC6492_MAGIC_SUFFIX


def _salt32(salt: bytes) -> bytes:
    if len(salt) > 32:
        raise ValueError("salt longer than 32 bytes")
    # Left-padded like a uint256, so small integer salts (b"\x01") mean the same thing everywhere.
    return salt.rjust(32, b"\0")


MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"


def install_multicall(rpc: Rpc) -> str:
    """Puts a Multicall3-compatible `tryAggregate` at Multicall3's canonical address, where public chains
    have it, so ERC-6492 simulation works on the dev chain as it does on Base."""
    artifact = load_artifact("Multicall")
    rpc.set_code(MULTICALL3_ADDRESS, bytes.fromhex(artifact.deployed_bytecode_hex.removeprefix("0x")))
    return MULTICALL3_ADDRESS
