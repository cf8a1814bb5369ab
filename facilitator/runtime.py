"""Per-network runtime: RPC, verification view, signers, fees and receipt watcher, built from settings."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.networks import v1_name
from shared.rpc.client import JsonRpcClient, Observer
from shared.rpc.eth import Eth

from .config import NetworkSettings
from .exact_evm.verifier import ChainView
from .settlement.fees import FeeOracle
from .settlement.gas import GasOracle
from .settlement.receipts_watcher import ReceiptWatcher
from .settlement.signers import Signer, SignerPool

GWEI = Decimal(10**9)


@dataclass
class NetworkRuntime:
    settings: NetworkSettings
    chain_id: int
    network: str  # CAIP-2
    v1_network: str | None
    rpc: JsonRpcClient
    eth: Eth
    view: ChainView
    signers: SignerPool
    fees: FeeOracle
    gas: GasOracle
    watcher: ReceiptWatcher

    @classmethod
    def build(cls, settings: NetworkSettings, *, observer: Observer | None = None) -> NetworkRuntime:
        rpc = JsonRpcClient(settings.rpc_urls, timeout=settings.rpc_timeout_seconds, observer=observer)
        eth = Eth(rpc)
        signers = SignerPool([Signer(k.get_secret_value()) for k in settings.signer_keys])
        return cls(
            settings=settings,
            chain_id=settings.chain_id,
            network=settings.network,
            v1_network=v1_name(settings.chain_id),
            rpc=rpc,
            eth=eth,
            view=ChainView(settings.chain_id, eth, signers.addresses[0], settings.eip6492_factories),
            signers=signers,
            fees=FeeOracle(
                eth,
                max_fee_cap=int(settings.max_fee_per_gas_gwei * GWEI),
                max_priority_fee=int(settings.max_priority_fee_gwei * GWEI),
            ),
            gas=GasOracle(eth, multiplier=settings.gas_limit_multiplier),
            watcher=ReceiptWatcher(eth, poll_seconds=settings.receipt_poll_seconds),
        )

    async def aclose(self) -> None:
        await self.watcher.stop()
        await self.rpc.aclose()
