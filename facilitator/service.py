"""The facilitator as one object: wires settings to runtimes, ledger, verifier, settlement and receipts.
The HTTP layer (api/) is a thin shell over `verify`, `settle`, `supported` and `receipt`."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import time
import uuid
from typing import Any

import asyncpg
import structlog

from shared.networks import v1_name
from shared.receipt_signing import sign_receipt
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.storage.database import connect_pool, migrate
from shared.telemetry.tracing import span
from shared.tokens import TokenRegistry
from shared.x402 import reasons
from shared.x402.models import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from .config import FacilitatorSettings
from .exact_evm.payment import ExactPayment, Rejected
from .exact_evm.verifier import ExactEvmVerifier
from .metrics import FacilitatorMetrics
from .receipts import ReceiptService
from .runtime import NetworkRuntime
from .settlement.ledger import Ledger
from .settlement.reconciler import Reconciler
from .settlement.service import SettlementService

log = structlog.get_logger(__name__)


class NetworkUnavailable(Exception):
    """The chain could not be asked: HTTP 503, nothing decided, nothing stored."""


class Facilitator:
    def __init__(self, settings: FacilitatorSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = FacilitatorMetrics({n.chain_id: n.network for n in settings.networks})
        self.networks = {
            n.chain_id: NetworkRuntime.build(n, observer=self.metrics.observe_rpc) for n in settings.networks
        }
        self.registry = TokenRegistry([t for n in settings.networks for t in n.token_list()])
        self.verifier = ExactEvmVerifier(
            chains={cid: rt.view for cid, rt in self.networks.items()},
            registry=self.registry,
            pay_to_allowlist=settings.pay_to_allowlist,
            valid_before_margin=settings.valid_before_margin_seconds,
        )
        self.ledger = Ledger(pool)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.settlement = SettlementService(
            ledger=self.ledger,
            verifier=self.verifier,
            networks=self.networks,
            owner=self.owner,
            lease_seconds=settings.settle_lease_seconds,
            simulate=settings.simulate_in_settle,
            verify_reuse_seconds=settings.verify_reuse_seconds,
            on_transaction=self.metrics.observe_transaction,
        )
        self.reconciler = Reconciler(self.settlement, interval=settings.reconcile_interval_seconds)
        self.receipts = ReceiptService(self.ledger, self.networks, self.registry)
        receipt_key = settings.receipt_key or (
            settings.networks[0].signer_keys[0] if settings.networks else None
        )
        self._receipt_key = receipt_key.get_secret_value() if receipt_key else None

    @classmethod
    async def open(cls, settings: FacilitatorSettings, dsn: str) -> Facilitator:
        pool = await connect_pool(dsn, min_size=2, max_size=settings.db_pool_size)
        await migrate(pool, importlib.resources.files("facilitator.migrations"), namespace="facilitator")
        return cls(settings, pool)

    async def start(self) -> None:
        for rt in self.networks.values():
            await self._check_chain_id(rt)
            rt.watcher.start()
            # The first settlements are priced from this read; without it they ask for it themselves (and
            # answer 503 while the chain is down), so a failure here does not stop start-up.
            try:
                await rt.fees.refresh()
            except (RpcError, RpcUnavailable) as exc:
                log.warning("fee_read_failed_at_start", network=rt.network, error=str(exc))
            for address in rt.signers.addresses:
                with contextlib.suppress(RpcError, RpcUnavailable):
                    await self.ledger.sync_signer_nonce(
                        rt.chain_id, address, await rt.eth.get_transaction_count(address, "pending")
                    )
        # Start-up reconciliation happens in the loop's first pass.
        self.reconciler.start()

    @staticmethod
    async def _check_chain_id(rt: NetworkRuntime) -> None:
        """Refuse to run against an RPC for another chain: signatures and nonces would go to the wrong place.
        An unreachable RPC is no reason to refuse start-up (readiness reports it)."""
        try:
            actual = await rt.eth.chain_id()
        except (RpcError, RpcUnavailable) as exc:
            log.warning("rpc_unreachable_at_start", network=rt.network, error=str(exc))
            return
        if actual != rt.chain_id:
            raise RuntimeError(f"RPC for {rt.network} reports chain id {actual}")

    async def stop(self) -> None:
        await self.reconciler.stop()
        for rt in self.networks.values():
            await rt.aclose()
        await self.pool.close()

    # -- protocol -----------------------------------------------------------------------------------------

    async def verify(self, payment: ExactPayment) -> VerifyResponse:
        started = time.perf_counter()
        outcome = "valid"
        try:
            async with span("x402.verify", network=payment.network, payer=payment.payer):
                verified = await self.verifier.verify(payment)
            self.settlement.remember(verified)
            return VerifyResponse(is_valid=True, payer=payment.payer)
        except Rejected as exc:
            outcome = exc.reason
            return VerifyResponse(
                is_valid=False,
                invalid_reason=exc.reason,
                invalid_message=exc.message,
                payer=exc.payer or payment.payer,
            )
        except RpcUnavailable as exc:
            outcome = reasons.NETWORK_UNAVAILABLE
            raise NetworkUnavailable(str(exc)) from None
        finally:
            self.metrics.verify_total.labels(payment.network, outcome).inc()
            self.metrics.verify_seconds.labels(payment.network, outcome).observe(
                time.perf_counter() - started
            )

    async def settle(self, payment: ExactPayment) -> SettleResponse:
        started = time.perf_counter()
        outcome = "success"
        try:
            async with span("x402.settle", network=payment.network, payer=payment.payer):
                result = await self.settlement.settle(payment)
            if not result.success:
                outcome = result.error_reason or "failed"
            return result
        except Rejected as exc:
            outcome = exc.reason
            return SettleResponse(
                success=False,
                error_reason=exc.reason,
                error_message=exc.message,
                payer=exc.payer or payment.payer,
                transaction="",
                network=payment.network,
            )
        except RpcUnavailable as exc:
            outcome = reasons.NETWORK_UNAVAILABLE
            raise NetworkUnavailable(str(exc)) from None
        finally:
            self.metrics.settle_total.labels(payment.network, outcome).inc()
            self.metrics.settle_seconds.labels(payment.network, outcome).observe(
                time.perf_counter() - started
            )

    def supported(self) -> SupportedResponse:
        kinds: list[SupportedKind] = []
        signers: list[str] = []
        for rt in self.networks.values():
            kinds.append(SupportedKind(x402_version=2, scheme="exact", network=rt.network))
            legacy = v1_name(rt.chain_id)
            if legacy:
                kinds.append(SupportedKind(x402_version=1, scheme="exact", network=legacy))
            signers.extend(rt.signers.addresses)
        return SupportedResponse(kinds=kinds, extensions=[], signers={"eip155:*": signers})

    async def receipt(self, tx_hash: str, nonce: str | None = None) -> dict[str, Any] | None:
        """The signed receipt of the payment `tx_hash` carries (the one with EIP-3009 `nonce` for a batch);
        raises AmbiguousReceipt for a batch without a nonce, and NetworkUnavailable when the chain could not
        answer what the document would state."""
        try:
            doc = await self.receipts.lookup(tx_hash, nonce)
        except RpcUnavailable as exc:
            raise NetworkUnavailable(str(exc)) from None
        if doc is None:
            return None
        if self._receipt_key is None:
            return {"receipt": doc}
        return sign_receipt(doc, self._receipt_key)

    @property
    def receipt_signer(self) -> str | None:
        from eth_account import Account

        return Account.from_key(self._receipt_key).address if self._receipt_key else None
