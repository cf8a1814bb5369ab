"""DevChain: Anvil plus USDC at Base Sepolia's address plus the test-wallet factory, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

from eth_account import Account
from eth_account.signers.local import LocalAccount

from shared.devchain import contracts, usdc
from shared.devchain.anvil import AnvilProcess, start_anvil
from shared.devchain.constants import (
    BASE_SEPOLIA_CHAIN_ID,
    BASE_SEPOLIA_USDC,
    BASE_SEPOLIA_USDC_NAME,
    DEV_ACCOUNT_KEYS,
)
from shared.devchain.rpc import Rpc
from shared.devchain.usdc import UsdcDeployment

# Dev accounts 0.. go to the facilitator; 7..9 are USDC's roles (see usdc.py), 6 deploys test contracts.
DEPLOYER_KEY = DEV_ACCOUNT_KEYS[6]
MAX_FACILITATOR_KEYS = 6


class DevChain:
    """A disposable local chain for tests and the local stack. Not thread-safe (shared admin nonces).

    Helper transactions (mint, wallet deployment) are mined at once even when Anvil runs with a block
    time, so set-up never waits for blocks; that also mines whatever else is pending at that moment.
    """

    def __init__(
        self,
        anvil: AnvilProcess,
        rpc: Rpc,
        usdc_deployment: UsdcDeployment,
        wallet_factory: str,
        facilitator_keys: tuple[str, ...],
    ) -> None:
        self.anvil = anvil
        self.rpc = rpc
        self.usdc = usdc_deployment
        self.wallet_factory = wallet_factory
        self.facilitator_keys = facilitator_keys

    @classmethod
    def start(
        cls,
        *,
        block_time: float | None = None,
        chain_id: int = BASE_SEPOLIA_CHAIN_ID,
        port: int | None = None,
        usdc_address: str = BASE_SEPOLIA_USDC,
        usdc_name: str = BASE_SEPOLIA_USDC_NAME,
        facilitator_key_count: int = 4,
        anvil_args: Sequence[str] = (),
    ) -> DevChain:
        if not 0 < facilitator_key_count <= MAX_FACILITATOR_KEYS:
            raise ValueError(f"facilitator_key_count must be 1..{MAX_FACILITATOR_KEYS}")
        anvil = start_anvil(port=port, chain_id=chain_id, block_time=block_time, extra_args=anvil_args)
        rpc = Rpc(anvil.rpc_url, mine_on_send=block_time is not None)
        try:
            deployment = usdc.deploy_usdc(rpc, address=usdc_address, name=usdc_name)
            factory = contracts.deploy_wallet_factory(rpc, DEPLOYER_KEY)
            contracts.install_multicall(rpc)
        except BaseException:
            rpc.close()
            anvil.stop()
            raise
        return cls(anvil, rpc, deployment, factory, DEV_ACCOUNT_KEYS[:facilitator_key_count])

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url

    @property
    def chain_id(self) -> int:
        return self.anvil.chain_id

    @property
    def network(self) -> str:
        """CAIP-2 id, as x402 v2 names networks."""
        return f"eip155:{self.chain_id}"

    # -- accounts and balances -----------------------------------------------------------------------

    def new_payer(self, usdc_amount: int) -> LocalAccount:
        """A fresh random account holding `usdc_amount` base units; EIP-3009 payers need no ETH."""
        account: LocalAccount = Account.create()
        if usdc_amount:
            self.mint(account.address, usdc_amount)
        return account

    def mint(self, address: str, amount: int) -> None:
        usdc.mint(self.rpc, self.usdc, address, amount)

    def balance_of(self, address: str) -> int:
        """USDC balance in base units."""
        return usdc.balance_of(self.rpc, self.usdc, address)

    def fund_eth(self, address: str, wei: int) -> None:
        """Add `wei` to the address's ETH balance (anvil_setBalance sets, so read first)."""
        self.rpc.set_balance(address, self.rpc.get_balance(address) + wei)

    def eth_balance(self, address: str) -> int:
        return self.rpc.get_balance(address)

    # -- test wallets --------------------------------------------------------------------------------

    def wallet_address(self, owner: str, salt: bytes = b"") -> str:
        """Counterfactual ERC1271Wallet address for (owner, salt); it may not be deployed yet."""
        return contracts.wallet_address(self.wallet_factory, owner, salt)

    def deploy_wallet(self, owner: str, salt: bytes = b"") -> str:
        return contracts.deploy_wallet(self.rpc, DEPLOYER_KEY, self.wallet_factory, owner, salt)

    def erc6492_signature(self, owner: str, salt: bytes, inner_signature: bytes) -> bytes:
        """Wrap an owner's signature for the (possibly undeployed) wallet at wallet_address(owner, salt)."""
        calldata = contracts.wallet_deploy_calldata(owner, salt)
        return contracts.wrap_erc6492(self.wallet_factory, calldata, inner_signature)

    # -- state ---------------------------------------------------------------------------------------

    def snapshot(self) -> str:
        return self.rpc.snapshot()

    def revert(self, snapshot_id: str) -> None:
        """Anvil forgets the snapshot on revert: call snapshot() again to return to it later."""
        self.rpc.revert(snapshot_id)

    def stop(self) -> None:
        self.rpc.close()
        self.anvil.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DevChain(rpc_url={self.rpc_url!r}, network={self.network!r}, usdc={self.usdc.address})"
