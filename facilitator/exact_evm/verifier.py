"""Verification of exact/EVM EIP-3009 payments against the chain: static checks, the signature class the
token will apply, asset code, and an `eth_call` of the very transfer settlement will send. A failed
simulation is explained by one batched read of nonce state, domain and balance."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from shared.evm import calls
from shared.evm.eip712 import authorization_digest
from shared.evm.erc6492 import is_erc6492
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth, to_bytes, to_int
from shared.tokens import Token, TokenRegistry
from shared.x402 import reasons

from .checks import check_scheme_and_network, run_static_checks
from .payment import ExactPayment, Rejected
from .signature_check import (
    SignatureKind,
    SignaturePlan,
    inner_for_deployed,
    plan_for_counterfactual,
    plan_for_eoa,
)


@dataclass(frozen=True, slots=True)
class VerifiedPayment:
    payment: ExactPayment
    chain_id: int
    token: Token
    plan: SignaturePlan
    calldata: bytes  # what settlement sends to `target`
    gas_estimate: int | None = None  # set when the simulation was an eth_estimateGas
    target: str = ""  # the token, or Multicall3 when a counterfactual wallet is deployed in the same tx

    def __post_init__(self) -> None:
        if not self.target:
            object.__setattr__(self, "target", self.token.address)

    @property
    def payer(self) -> str:
        return self.payment.payer


class ChainView:
    """What verification needs from one network: its RPC and which facilitator address simulates."""

    def __init__(
        self, chain_id: int, eth: Eth, simulate_from: str, eip6492_factories: Collection[str]
    ) -> None:
        self.chain_id = chain_id
        self.eth = eth
        self.simulate_from = simulate_from
        self.eip6492_factories = {f.lower() for f in eip6492_factories}
        self._asset_has_code: set[str] = set()

    async def asset_deployed(self, token: str) -> bool:
        # Token contracts do not disappear: a positive answer is cached for the process lifetime.
        if token in self._asset_has_code:
            return True
        if await self.eth.get_code(token):
            self._asset_has_code.add(token)
            return True
        return False


def transfer_calldata(payment: ExactPayment, plan: SignaturePlan) -> bytes:
    if plan.kind is SignatureKind.EOA and plan.ecdsa is not None:
        return calls.transfer_with_authorization_vrs(payment.authorization, plan.ecdsa)
    return calls.transfer_with_authorization_bytes(payment.authorization, plan.signature)


class ExactEvmVerifier:
    def __init__(
        self,
        *,
        chains: dict[int, ChainView],
        registry: TokenRegistry,
        pay_to_allowlist: Collection[str] = (),
        valid_before_margin: int = 6,
    ) -> None:
        self.chains = chains
        self.registry = registry
        self.pay_to_allowlist = {a.lower() for a in pay_to_allowlist}
        self.valid_before_margin = valid_before_margin

    def chain_of(self, payment: ExactPayment) -> int:
        """The served chain a payment is for; enough to find it in the ledger."""
        chain_id = check_scheme_and_network(payment)
        if chain_id not in self.chains:
            raise Rejected(
                reasons.INVALID_NETWORK, f"network {payment.network} is not served by this facilitator"
            )
        return chain_id

    def static_checks(self, payment: ExactPayment, now: int | None = None) -> Token:
        return run_static_checks(
            payment,
            registry=self.registry,
            served_chains=self.chains.keys(),
            pay_to_allowlist=self.pay_to_allowlist,
            now=int(time.time()) if now is None else now,
            valid_before_margin=self.valid_before_margin,
        )

    async def verify(
        self, payment: ExactPayment, *, simulate: bool = True, estimate_gas: bool = False
    ) -> VerifiedPayment:
        """Raises Rejected with the reason, or RpcUnavailable when the chain cannot be asked.

        With `estimate_gas` the simulation is an eth_estimateGas, which reverts exactly like eth_call and
        also prices the transaction settlement is about to send."""
        token = self.static_checks(payment)
        chain = self.chains[token.chain_id]
        auth, payer = payment.authorization, payment.payer
        digest = authorization_digest(
            auth, name=token.name, version=token.version, chain_id=token.chain_id, token=token.address
        )

        # One round trip for what every payment needs: payer code, asset code (uncached), the simulation.
        eoa_plan: SignaturePlan | None = None
        eoa_error: Rejected | None = None
        wrapped = is_erc6492(payment.signature)
        if not wrapped:
            try:
                eoa_plan = plan_for_eoa(digest, payment.signature, payer)
            except Rejected as exc:
                eoa_error = exc
        sim_plan = eoa_plan or SignaturePlan(SignatureKind.ERC1271, inner_for_deployed(payment.signature))
        calldata = transfer_calldata(payment, sim_plan)
        requests: list[tuple[str, list[object]]] = [("eth_getCode", [payer, "latest"])]
        need_asset = token.address not in chain._asset_has_code
        if need_asset:
            requests.append(("eth_getCode", [token.address, "latest"]))
        if simulate and not wrapped:
            sim_tx = _tx(chain.simulate_from, token.address, calldata)
            requests.append(
                ("eth_estimateGas", [sim_tx]) if estimate_gas else ("eth_call", [sim_tx, "latest"])
            )
        replies = await chain.eth.rpc.batch(requests)
        for r in replies[: 2 if need_asset else 1]:
            if isinstance(r, RpcError):
                raise RpcUnavailable(f"eth_getCode failed: {r.message}")
        payer_code = to_bytes(replies[0])
        if need_asset:
            if not to_bytes(replies[1]):
                raise Rejected(reasons.ASSET_NOT_DEPLOYED, f"no contract at asset {token.address}", payer)
            chain._asset_has_code.add(token.address)
        sim_reply = replies[-1] if simulate and not wrapped else None

        if not payer_code:
            if wrapped:
                plan = plan_for_counterfactual(payment.signature, payer, chain.eip6492_factories)
                transfer = transfer_calldata(payment, plan)
                gas = None
                if simulate:
                    gas = await self._simulate_counterfactual(
                        chain, token, payment, plan, transfer, estimate_gas
                    )
                assert plan.deployment is not None
                # Deploy and transfer atomically: a deployed wallet with a failed transfer helps nobody.
                bundle = calls.try_aggregate(
                    [(plan.deployment.factory, plan.deployment.factory_calldata), (token.address, transfer)],
                    require_success=True,
                )
                return VerifiedPayment(
                    payment, token.chain_id, token, plan, bundle, gas, calls.MULTICALL3_ADDRESS
                )
            if eoa_error is not None:
                raise eoa_error
            assert eoa_plan is not None
            plan = eoa_plan
        else:
            # A contract wallet: strict ERC-1271, no ECDSA fallback (the token applies none either).
            inner = inner_for_deployed(payment.signature)
            plan = SignaturePlan(SignatureKind.ERC1271, inner)
            magic = await _try_call(chain.eth, payer, calls.is_valid_signature(digest, inner))
            if magic is None or magic[:4] != calls.ERC1271_MAGIC:
                raise Rejected(
                    reasons.SIGNATURE, f"contract wallet {payer} rejects the signature (ERC-1271)", payer
                )
            if calldata != transfer_calldata(payment, plan):
                calldata = transfer_calldata(payment, plan)
                sim_reply = None

        if simulate and sim_reply is None:
            # The first round trip simulated another call, or none (a deployed wallet whose signature
            # carries the ERC-6492 wrapper): simulate the very transfer settlement will send.
            sim_reply = await _simulate(chain, token.address, calldata, estimate_gas)
            if sim_reply is None:
                raise RpcUnavailable("the node answered the transfer's simulation with no result")
        if simulate and isinstance(sim_reply, RpcError):
            raise await self._diagnose(chain, token, payment, _verdict(sim_reply))
        gas = to_int(sim_reply) if estimate_gas and sim_reply is not None else None
        return VerifiedPayment(payment, token.chain_id, token, plan, calldata, gas)

    async def _simulate_counterfactual(
        self,
        chain: ChainView,
        token: Token,
        payment: ExactPayment,
        plan: SignaturePlan,
        calldata: bytes,
        estimate_gas: bool,
    ) -> int | None:
        assert plan.deployment is not None
        data = calls.try_aggregate(
            [(plan.deployment.factory, plan.deployment.factory_calldata), (token.address, calldata)]
        )
        try:
            out = await chain.eth.call(calls.MULTICALL3_ADDRESS, data, sender=chain.simulate_from)
            results = calls.decode_try_aggregate(out)
        except RpcError as exc:
            _verdict(exc)
            raise Rejected(
                reasons.SIMULATION_FAILED,
                f"counterfactual simulation failed: {exc.revert_reason}",
                payment.payer,
            ) from None
        except RpcUnavailable:
            raise  # the node, not the wallet
        except Exception:
            raise Rejected(
                reasons.SIMULATION_FAILED,
                "Multicall3 is not available to simulate a counterfactual wallet",
                payment.payer,
            ) from None
        if not results[0][0]:
            raise Rejected(
                reasons.SMART_WALLET_DEPLOYMENT_FAILED, "the ERC-6492 factory call reverts", payment.payer
            )
        if not results[1][0]:
            reason = calls.decode_revert_reason(results[1][1]) or "reverted"
            raise await self._diagnose(chain, token, payment, RpcError(3, f"execution reverted: {reason}"))
        if not estimate_gas:
            return None
        bundle = calls.try_aggregate(
            [(plan.deployment.factory, plan.deployment.factory_calldata), (token.address, calldata)],
            require_success=True,
        )
        try:
            return to_int(
                await chain.eth.rpc.call(
                    "eth_estimateGas", [_tx(chain.simulate_from, calls.MULTICALL3_ADDRESS, bundle)]
                )
            )
        except RpcError as exc:
            _verdict(exc)
            raise Rejected(
                reasons.SIMULATION_FAILED,
                f"counterfactual gas estimate failed: {exc.revert_reason}",
                payment.payer,
            ) from None

    async def _diagnose(
        self, chain: ChainView, token: Token, payment: ExactPayment, failure: RpcError
    ) -> Rejected:
        auth, payer = payment.authorization, payment.payer
        revert = failure.revert_reason
        replies = await chain.eth.rpc.batch(
            [
                (
                    "eth_call",
                    [_tx(None, token.address, calls.authorization_state(payer, auth.nonce)), "latest"],
                ),
                ("eth_call", [_tx(None, token.address, calls.NAME), "latest"]),
                ("eth_call", [_tx(None, token.address, calls.VERSION), "latest"]),
                ("eth_call", [_tx(None, token.address, calls.balance_of(payer)), "latest"]),
            ]
        )
        state, name, version, balance = replies
        if isinstance(state, RpcError):
            _verdict(state)
            return Rejected(
                reasons.EIP3009_NOT_SUPPORTED, f"token has no authorizationState: {revert}", payer
            )
        if calls.decode_bool(to_bytes(state)):
            return Rejected(
                reasons.NONCE_ALREADY_USED, "authorization nonce is already used or cancelled", payer
            )
        if not isinstance(name, RpcError) and _str(name) not in (None, token.name):
            return Rejected(
                reasons.TOKEN_NAME_MISMATCH, f"token name() is {_str(name)!r}, not {token.name!r}", payer
            )
        if not isinstance(version, RpcError) and _str(version) not in (None, token.version):
            return Rejected(
                reasons.TOKEN_VERSION_MISMATCH,
                f"token version() is {_str(version)!r}, not {token.version!r}",
                payer,
            )
        if not isinstance(balance, RpcError) and calls.decode_uint(to_bytes(balance)) < auth.value:
            return Rejected(
                reasons.INSUFFICIENT_BALANCE,
                f"payer balance {calls.decode_uint(to_bytes(balance))} < {auth.value}",
                payer,
            )
        return Rejected(reasons.SIMULATION_FAILED, f"transfer simulation reverted: {revert}", payer)


def _tx(sender: str | None, to: str, data: bytes) -> dict[str, str]:
    tx = {"to": to, "data": "0x" + data.hex()}
    if sender:
        tx["from"] = sender
    return tx


def _str(reply: object) -> str | None:
    try:
        return calls.decode_string(to_bytes(reply))
    except Exception:
        return None


async def _try_call(eth: Eth, to: str, data: bytes) -> bytes | None:
    """The call's answer, None when it reverts."""
    try:
        return await eth.call(to, data)
    except RpcError as exc:
        _verdict(exc)
        return None


def _verdict(exc: RpcError) -> RpcError:
    """`exc` when the call itself reverted, a verdict on the payment; otherwise the node could not answer
    (a rate limit, state it lacks, an internal error), which must not be reported as the payer's fault."""
    if not exc.is_revert:
        raise RpcUnavailable(f"the node could not answer: {exc.message}") from exc
    return exc


async def _simulate(chain: ChainView, to: str, data: bytes, estimate_gas: bool) -> object:
    tx = _tx(chain.simulate_from, to, data)
    try:
        if estimate_gas:
            return await chain.eth.rpc.call("eth_estimateGas", [tx])
        return await chain.eth.rpc.call("eth_call", [tx, "latest"])
    except RpcError as exc:
        return exc
