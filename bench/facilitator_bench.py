"""Facilitator benchmark: our facilitator vs the official x402 SDK's, side by side, on Anvil + real USDC.

    .venv/bin/python -m bench.facilitator_bench                       # verify + settle matrix, automine
    .venv/bin/python -m bench.facilitator_bench --block-time 2        # same matrix on 2 s blocks
    .venv/bin/python -m bench.facilitator_bench --scenario blocktime  # 1,000 settlements at once, 2 s blocks

Everything runs on this machine: Anvil (shared/devchain), an embedded PostgreSQL in a temporary folder,
each facilitator in its own uvicorn process (bench/serve.py) and the load generator (bench/loadgen.py) in
this process. Payments are signed before each cell's clock starts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.loadgen import CellResult, build_request, http_get, run_cell
from bench.payments import Payer, Payment, TokenInfo, make_payer, make_payments, new_addresses
from bench.procs import REPO_ROOT, CpuMeter, PySpy, Server, child_pids, postgres_pids, run_exit, start_server
from shared.devchain.chain import DevChain
from shared.storage.database import resolve_database_url

API_KEY = "bench-api-key"
HOST = "127.0.0.1"
MAX_FAILURE_SAMPLES = 5


# -- chain helpers (outside the timed sections) ----------------------------------------------------------


class ChainReader:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, params: list[Any]) -> Any:
        reply = self.http.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        ).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, list[Any]]], chunk: int = 200) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(calls), chunk):
            part = calls[start : start + chunk]
            body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(part)]
            replies = {r["id"]: r for r in self.http.post(self.url, json=body).json()}
            out.extend(replies[i].get("result") for i in range(len(part)))
        return out

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber", []), 16)

    def balances(self, token: str, holders: list[str]) -> list[int]:
        calls = [
            ("eth_call", [{"to": token, "data": "0x70a08231" + "00" * 12 + h[2:].lower()}, "latest"])
            for h in holders
        ]
        return [int(r, 16) for r in self.batch(calls)]

    def wait_txpool_empty(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("txpool_status", [])
            if int(status["pending"], 16) == 0 and int(status["queued"], 16) == 0:
                return True
            time.sleep(0.2)
        return False


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    target: str
    concurrency: int
    requests: int
    ok: int
    failed: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, Any] = field(default_factory=dict)
    chain_check: str = ""
    failure_samples: list[str] = field(default_factory=list)
    pool_exhausted: bool = False


def _ms(x: float) -> float:
    return round(x * 1000, 1)


def judge_verify(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return orjson.loads(body).get("isValid") is True
    except orjson.JSONDecodeError:
        return False


def judge_settle(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return orjson.loads(body).get("success") is True
    except orjson.JSONDecodeError:
        return False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="x402-bench-"))
        self.chain: DevChain | None = None
        self.embedded: Any = None
        self.reader: ChainReader | None = None
        self.servers: dict[str, Server] = {}
        self.token: TokenInfo | None = None
        self.payers: list[Payer] = []
        self.rows: list[Row] = []
        self.meter: CpuMeter | None = None
        self._signers: dict[str, list[str]] = {}
        self.blocktime_results: list[dict[str, Any]] = []
        self.dsn = ""
        self.generation = 0  # how many stacks (chain, database, servers) this run has started
        self._settled_cells = 0

    # -- set-up ------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        self.generation += 1
        self.payers = []
        self.chain = DevChain.start(
            block_time=a.block_time, facilitator_key_count=6, anvil_args=a.anvil_args.split()
        )
        chain = self.chain
        self.reader = ChainReader(chain.rpc_url)
        self.token = TokenInfo(chain.usdc.address, chain.usdc.name, chain.usdc.version, chain.chain_id)
        pg_dir = self.workdir / f"pg{self.generation}"
        dsn, self.embedded = await asyncio.to_thread(resolve_database_url, None, pg_dir)
        self.dsn = dsn
        log(f"chain {chain.rpc_url} (block time {a.block_time or 'automine'}), PostgreSQL in {pg_dir}")

        keys = chain.facilitator_keys
        our_keys = list(keys[: a.our_signers])
        sdk_key = keys[5]
        from eth_account import Account

        self._signers = {
            "ours": [Account.from_key(k).address for k in our_keys],
            "sdk": [Account.from_key(sdk_key).address],
        }
        t1 = time.perf_counter()
        # Fresh payers, each minted enough USDC for every payment it will sign.
        for _ in range(a.payers):
            account = chain.new_payer(10**13)
            self.payers.append(make_payer(account.key.hex()))
        log(f"minted USDC to {a.payers} fresh payers in {time.perf_counter() - t1:.1f}s")

        common = {
            "rpc_url": chain.rpc_url,
            "network": chain.network,
            "receipt_timeout_seconds": a.receipt_timeout,
        }
        if "ours" in a.targets:
            self.servers["ours"] = await start_server(
                "ours",
                {
                    **common,
                    "kind": "ours",
                    "signer_keys": our_keys,
                    "api_key": API_KEY,
                    "dsn": dsn,
                    "eip6492_factories": [chain.wallet_factory],
                    "settings": a.ours_settings,
                    "network_settings": a.ours_network_settings,
                    "sniffio_shim": a.exp_sniffio_shim,
                    "workers": a.ours_workers,
                },
                self.workdir,
            )
        if "sdk" in a.targets:
            self.servers["sdk"] = await start_server(
                "sdk",
                {
                    **common,
                    "kind": "sdk",
                    "private_key": sdk_key,
                    "mode": a.sdk_mode,
                    "threads": a.sdk_threads,
                    "sniffio_shim": a.exp_sniffio_shim,
                },
                self.workdir,
            )
        groups: dict[str, Any] = {"client": lambda: [__import__("os").getpid()]}
        for name, server in self.servers.items():
            groups[name] = lambda s=server: [s.pid, *child_pids(s.pid)]
        groups["anvil"] = lambda: [chain.anvil.pid]
        groups["postgres"] = lambda: postgres_pids(pg_dir)
        self.meter = CpuMeter(groups)
        log(
            f"servers up in {time.perf_counter() - t0:.1f}s: "
            + ", ".join(f"{n} pid {s.pid} port {s.port}" for n, s in self.servers.items())
        )

    async def stop_stack(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers = {}
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        if self.chain is not None:
            self.chain.stop()
            self.chain = None

    async def fresh_stack(self) -> None:
        """A new chain, database and servers, warmed up: Anvil 1.7.1 spends time per block in proportion
        to the contract storage it holds (foundry-rs/foundry#6124), so a settle cell on a chain that earlier
        cells filled measures Anvil's growth more than the facilitator."""
        await self.stop_stack()
        await self.setup()
        await self.warm_up()

    async def teardown(self) -> None:
        await self.stop_stack()
        if self.args.keep_workdir:
            log(f"kept {self.workdir} (server logs, configs)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------------

    def payments(self, count: int, payees: list[str], offset: int = 0) -> list[Payment]:
        assert self.token is not None
        return make_payments(
            self.token,
            self.payers,
            payees,
            count,
            base_amount=self.args.amount,
            version=self.args.x402_version,
            offset=offset,
        )

    def requests_for(self, target: str, path: str, payments: list[Payment]) -> list[bytes]:
        port = self.servers[target].port
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return [build_request(HOST, port, path, p.body, headers) for p in payments]

    async def cell(
        self,
        target: str,
        path: str,
        requests: list[bytes],
        concurrency: int,
        judge: Any,
        *,
        duration: float | None,
        profile: str | None = None,
        keep_bodies: bool = False,
    ) -> tuple[CellResult, dict[str, float]]:
        assert self.meter is not None
        server = self.servers[target]
        spy = None
        if profile is not None:
            spy = PySpy(server.pid, Path(profile))
            spy.start()
        rpc_before = await self.rpc_counts(target)
        assert self.reader is not None
        first_block = self.reader.block_number()
        before = self.meter.snapshot()
        try:
            result = await run_cell(
                HOST,
                server.port,
                requests,
                concurrency=concurrency,
                judge=judge,
                duration=duration,
                max_failure_samples=MAX_FAILURE_SAMPLES,
                keep_bodies=keep_bodies,
            )
        finally:
            after = self.meter.snapshot()
            if spy is not None:
                spy.stop()
        if server.popen.poll() is not None:
            raise RuntimeError(f"{target} died during the cell:\n{server.log_tail()}")
        cpu: dict[str, Any] = CpuMeter.percent(before, after)
        if path == "/settle" and result.ok:
            blocks = self.reader.block_number() - first_block
            cpu["_blocks"] = f"{blocks} blocks, {result.ok / max(blocks, 1):.1f} settlements per block"
        rpc_after = await self.rpc_counts(target)
        if rpc_before is not None and rpc_after is not None and result.sent:
            per = {m: (rpc_after[m] - rpc_before.get(m, 0)) / result.sent for m in rpc_after}
            cpu["_rpc_per_request"] = ", ".join(f"{m} {v:.2f}" for m, v in sorted(per.items()) if v >= 0.005)
        exclude = self.meter.own_pids()
        if spy is not None and spy.spy_pid:
            exclude.add(spy.spy_pid)
        others = self.meter.top_others(before, after, exclude)
        if others:
            cpu["_others"] = others
        return result, cpu

    async def rpc_counts(self, target: str) -> dict[str, float] | None:
        """Our facilitator's JSON-RPC requests so far, per method label (from its /metrics)."""
        if target != "ours":
            return None
        try:
            status, body = await http_get(HOST, self.servers[target].port, "/metrics", timeout=10.0)
        except (TimeoutError, OSError, ValueError):
            return None
        if status != 200:
            return None
        counts: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("x402_rpc_seconds_count{"):
                labels, _, value = line.rpartition(" ")
                method = labels.split('method="', 1)[1].split('"', 1)[0] if 'method="' in labels else "?"
                counts[method] = counts.get(method, 0.0) + float(value)
        return counts

    def pool_size(self, phase: str, concurrency: int) -> int:
        a = self.args
        if a.requests:
            return int(a.requests)
        guess = a.verify_rate_cap if phase == "verify" else a.settle_rate_cap
        return max(concurrency * 4, int(guess * a.duration))

    # -- matrix ------------------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """A few verifies and settles per target before any timing: connection pools, caches, imports."""
        payee = new_addresses(1)
        for target in self.servers:
            pays = self.payments(self.args.warmup, payee)
            res, _ = await self.cell(
                target, "/verify", self.requests_for(target, "/verify", pays), 4, judge_verify, duration=None
            )
            settle_pays = self.payments(max(2, self.args.warmup // 10), payee)
            sres, _ = await self.cell(
                target,
                "/settle",
                self.requests_for(target, "/settle", settle_pays),
                2,
                judge_settle,
                duration=None,
            )
            log(f"warm-up {target}: verify {res.ok}/{res.sent} ok, settle {sres.ok}/{sres.sent} ok")
            for sample in (res.failure_samples + sres.failure_samples)[:3]:
                log(f"  warm-up failure: {sample}")
        assert self.reader is not None
        self.reader.wait_txpool_empty(30)

    async def run_matrix(self) -> None:
        a = self.args
        await self.warm_up()
        targets = [t for t in a.targets if t in self.servers]
        for phase in a.phases:
            path = "/" + phase
            judge = judge_verify if phase == "verify" else judge_settle
            for i, c in enumerate(a.concurrency):
                # Alternate which target goes first, so neither always runs on the younger chain.
                order = targets if i % 2 == 0 else list(reversed(targets))
                for target in order:
                    if phase == "settle" and not a.shared_chain and self._settled_cells:
                        await self.fresh_stack()
                    payees = new_addresses(a.payees_per_cell)
                    t0 = time.perf_counter()
                    payments = self.payments(self.pool_size(phase, c), payees, offset=i)
                    requests = self.requests_for(target, path, payments)
                    gen_s = time.perf_counter() - t0
                    profile = None
                    if a.py_spy and target in a.py_spy_targets:
                        Path(a.py_spy).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                        profile = str(Path(a.py_spy) / f"{target}-{phase}-c{c}.txt")
                    duration = None if a.requests else a.duration
                    res, cpu = await self.cell(
                        target, path, requests, c, judge, duration=duration, profile=profile
                    )
                    row = self._row(phase, target, c, res, cpu)
                    if phase == "settle":
                        row.chain_check = self._check_settle(payments, res, payees)
                        self._settled_cells += 1
                    self.rows.append(row)
                    log(
                        f"{phase:6} {target:4} c={c:<4} {res.sent:6} req in {res.elapsed:6.2f}s = "
                        f"{res.throughput:8.1f}/s  p50 {_ms(res.percentile(50)):7.1f} ms  "
                        f"p99 {_ms(res.percentile(99)):7.1f} ms  fail {res.failed}"
                        f"{'  [pool exhausted]' if res.pool_exhausted else ''}"
                        f"  (signed {len(payments)} in {gen_s:.1f}s)"
                        f"  cpu% {_cpu_text(cpu)}"
                        + (f"  chain: {row.chain_check}" if row.chain_check else "")
                    )
                    if cpu.get("_blocks"):
                        log(f"    chain: {cpu['_blocks']}")
                    if cpu.get("_rpc_per_request"):
                        log(
                            f"    JSON-RPC HTTP requests per {phase} (ours /metrics): "
                            f"{cpu['_rpc_per_request']}"
                        )
                    for sample in res.failure_samples:
                        log(f"    failure: {sample}")

    def _row(self, phase: str, target: str, c: int, res: CellResult, cpu: dict[str, float]) -> Row:
        return Row(
            phase=phase,
            target=target,
            concurrency=c,
            requests=res.sent,
            ok=res.ok,
            failed=res.failed,
            seconds=round(res.elapsed, 3),
            rps=round(res.throughput, 1),
            p50_ms=_ms(res.percentile(50)),
            p99_ms=_ms(res.percentile(99)),
            cpu={k: (v if isinstance(v, str) else round(v)) for k, v in cpu.items()},
            failure_samples=res.failure_samples,
            pool_exhausted=res.pool_exhausted,
        )

    def _check_settle(self, payments: list[Payment], res: CellResult, payees: list[str]) -> str:
        """Chain-side truth: the cell's payees together received exactly what the successful answers say."""
        assert self.reader is not None and self.token is not None
        drained = self.reader.wait_txpool_empty(self.args.receipt_timeout)
        expected = sum(payments[i].amount for i in res.ok_indices)
        actual = sum(self.reader.balances(self.token.address, payees))
        verdict = "OK" if actual == expected else "MISMATCH"
        note = "" if drained else " (txpool not drained)"
        return (
            f"{verdict} payees received {actual} = {expected} answered{note}"
            if verdict == "OK"
            else (f"{verdict} payees received {actual}, successful answers say {expected}{note}")
        )

    # -- block-time scenario -----------------------------------------------------------------------------

    async def run_blocktime(self) -> None:
        a = self.args
        assert self.reader is not None and self.token is not None
        await self.warm_up()
        block_time = a.block_time
        n = a.settlements
        for target in [t for t in a.targets if t in self.servers]:
            payees = new_addresses(a.payees_per_cell)
            payments = self.payments(n, payees)
            requests = self.requests_for(target, "/settle", payments)
            conns = min(a.connections, n)
            # Start right after a block so every target meets the same phase of the block clock.
            start_block = self.reader.block_number()
            while self.reader.block_number() == start_block:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            start_block = self.reader.block_number()
            profile = None
            if a.py_spy and target in a.py_spy_targets:
                Path(a.py_spy).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                profile = str(Path(a.py_spy) / f"{target}-blocktime.txt")
            started_at = time.time()
            res, cpu = await self.cell(
                target,
                "/settle",
                requests,
                conns,
                judge_settle,
                duration=None,
                profile=profile,
                keep_bodies=True,
            )
            timeline = await self.ledger_timeline(started_at) if target == "ours" else None
            row = self._row("blocktime", target, conns, res, cpu)
            row.chain_check = self._check_settle(payments, res, payees)
            self.rows.append(row)
            txs = []
            for i in res.ok_indices:
                tx = orjson.loads(res.bodies[i]).get("transaction")
                if tx:
                    txs.append(tx.lower())
            end_block = self.reader.block_number()
            blocks = self.reader.batch(
                [("eth_getBlockByNumber", [hex(b), False]) for b in range(start_block + 1, end_block + 1)]
            )
            # Transfers per transaction: a batch carries several settlements under one hash.
            carried = Counter(txs)
            per_block: list[tuple[int, int, int, int]] = []  # (number, our transfers, all txs, gasUsed)
            gas_limit = 0
            for blk in blocks:
                mine = sum(carried.get(h.lower(), 0) for h in blk["transactions"])
                gas_limit = int(blk["gasLimit"], 16)
                if mine:
                    per_block.append(
                        (int(blk["number"], 16), mine, len(blk["transactions"]), int(blk["gasUsed"], 16))
                    )
            unique = list(carried)
            receipts = self.reader.batch([("eth_getTransactionReceipt", [h]) for h in unique])
            mined = [(h, int(r["gasUsed"], 16)) for h, r in zip(unique, receipts, strict=True) if r]
            gas = [g for _, g in mined]
            # What the blocks can hold is judged by the gas our own transfers used, batch overhead included.
            gas_per_transfer = sum(gas) / sum(carried[h] for h, _ in mined) if mined else float("nan")
            per_block_capacity = int(gas_limit // gas_per_transfer) if gas else 0
            capacity = per_block_capacity / block_time
            achieved = res.ok / res.elapsed if res.elapsed else 0.0
            counts = [m for _, m, _, _ in per_block]
            first_blk = per_block[0][0] if per_block else 0
            last_blk = per_block[-1][0] if per_block else 0
            span_blocks = (last_blk - first_blk + 1) if per_block else 0
            summary = {
                "target": target,
                "settlements": n,
                "connections": conns,
                "ok": res.ok,
                "failed": res.failed,
                "wall_seconds": round(res.elapsed, 2),
                "achieved_per_s": round(achieved, 1),
                "block_gas_limit": gas_limit,
                "gas_per_transfer_mean": round(gas_per_transfer),
                "capacity_per_block": per_block_capacity,
                "capacity_per_s": round(capacity, 1),
                "percent_of_capacity": round(100 * achieved / capacity, 1) if capacity else 0.0,
                "blocks_used": len(per_block),
                "block_span": span_blocks,
                "min_blocks_needed": -(-res.ok // per_block_capacity) if per_block_capacity else 0,
                "transfers_per_block": counts,
                "p50_ms": row.p50_ms,
                "p99_ms": row.p99_ms,
                "chain_check": row.chain_check,
                "cpu": row.cpu,
                "ledger_timeline": timeline,
            }
            self.blocktime_results.append(summary)
            log(
                f"blocktime {target}: {res.ok}/{n} ok in {res.elapsed:.2f}s = {achieved:.1f} transfers/s; "
                f"capacity {per_block_capacity}/block = {capacity:.1f}/s "
                f"(gas limit {gas_limit}, {gas_per_transfer:.0f} gas/transfer) -> "
                f"{summary['percent_of_capacity']}% of capacity; {len(per_block)} blocks used "
                f"(span {span_blocks}), per block {counts}; p50 {row.p50_ms} ms p99 {row.p99_ms} ms; "
                f"{row.chain_check}; cpu% {_cpu_text(cpu)}"
            )
            if timeline:
                log(f"    our ledger, seconds after the first request: {timeline}")
            for sample in res.failure_samples:
                log(f"    failure: {sample}")

    async def ledger_timeline(self, started_at: float) -> str:
        """When our facilitator stored, broadcast and finalised the settlements (from its ledger), as
        seconds after the burst started: shows which stage the burst queues in."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                """SELECT extract(epoch FROM created_at) AS c, extract(epoch FROM submitted_at) AS s,
                          extract(epoch FROM finalized_at) AS f
                   FROM settlements WHERE created_at >= to_timestamp($1)""",
                started_at,
            )
        finally:
            await conn.close()
        out = []
        for label, key in (("stored", "c"), ("broadcast", "s"), ("finalized", "f")):
            xs = sorted(float(r[key]) - started_at for r in rows if r[key] is not None)
            if xs:
                mid = xs[(len(xs) - 1) // 2]
                out.append(f"{label} p0 {xs[0]:.1f} p50 {mid:.1f} p100 {xs[-1]:.1f}")
        return f"{len(rows)} rows; " + "; ".join(out)

    # -- report ------------------------------------------------------------------------------------------

    def report(self) -> str:
        a = self.args
        lines: list[str] = []
        env = machine_facts()
        lines.append(
            f"Machine: {env['nproc']} cores, {env['cpu']}, Python {env['python']}; commit {env['commit']}; "
            + env["load"]
        )
        lines.append(
            f"Chain: Anvil, {'automine' if a.block_time is None else f'block time {a.block_time}s'}; "
            f"x402 v{a.x402_version}; ours: {a.our_signers} signer key(s), {a.ours_workers} worker(s); "
            f"sdk: 1 key, mode {a.sdk_mode}, {a.sdk_threads} threads"
            + (f"; ours settings {a.ours_settings}" if a.ours_settings else "")
            + (f"; ours network settings {a.ours_network_settings}" if a.ours_network_settings else "")
            + ("; EXPERIMENT sniffio shim" if a.exp_sniffio_shim else "")
        )
        lines.append("")
        matrix = [r for r in self.rows if r.phase in ("verify", "settle")]
        if matrix:
            lines.append(
                "| phase | target | conc | requests | ok | failed | req/s | p50 ms | p99 ms "
                "| CPU% server | anvil | postgres | client | other (noise) |"
            )
            lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in matrix:
                c = r.cpu
                lines.append(
                    f"| {r.phase} | {r.target} | {r.concurrency} | {r.requests} | {r.ok} | {r.failed} | "
                    f"{_rate(r.rps)} | {r.p50_ms} | {r.p99_ms} | {c.get(r.target, '-')} | "
                    f"{c.get('anvil', '-')} | "
                    f"{c.get('postgres', '-')} | {c.get('client', '-')} | {c.get('other', '-')} |"
                )
            rpc = [
                f"{r.phase} c={r.concurrency}: {r.cpu['_rpc_per_request']}"
                for r in matrix
                if r.target == "ours" and r.cpu.get("_rpc_per_request")
            ]
            if rpc:
                lines.append("")
                lines.append("Our facilitator's JSON-RPC HTTP requests per request (from its /metrics):")
                lines.extend(f"- {x}" for x in rpc)
            ratios = []
            by = {(r.phase, r.target, r.concurrency): r for r in matrix}
            for phase in a.phases:
                for c in a.concurrency:
                    o, k = by.get((phase, "ours", c)), by.get((phase, "sdk", c))
                    if o and k and k.rps > 0:
                        p50 = f"{o.p50_ms / k.p50_ms:.2f}" if k.p50_ms else "-"
                        ratios.append(f"| {phase} | {c} | {o.rps / k.rps:.1f}x | {p50} |")
            if ratios:
                lines.append("")
                lines.append("| phase | conc | throughput ours/sdk | p50 latency ours/sdk |")
                lines.append("|---|---:|---:|---:|")
                lines.extend(ratios)
            checks = [f"{r.target} c={r.concurrency}: {r.chain_check}" for r in matrix if r.chain_check]
            if checks:
                lines.append("")
                lines.append("Chain-side checks after settle cells:")
                lines.extend(f"- {c}" for c in checks)
        if self.blocktime_results:
            lines.append("")
            lines.append(
                "| target | settlements | conns | ok | failed | wall s | transfers/s | capacity/s "
                "| % of capacity "
                "| blocks used | per block | p50 ms | p99 ms |"
            )
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
            for s in self.blocktime_results:
                lines.append(
                    f"| {s['target']} | {s['settlements']} | {s['connections']} | {s['ok']} | "
                    f"{s['failed']} | "
                    f"{s['wall_seconds']} | {s['achieved_per_s']} | {s['capacity_per_s']} | "
                    f"{s['percent_of_capacity']} | {s['blocks_used']} | {s['transfers_per_block']} | "
                    f"{s['p50_ms']} | {s['p99_ms']} |"
                )
            for s in self.blocktime_results:
                lines.append(
                    f"- {s['target']}: gas limit {s['block_gas_limit']}, "
                    f"{s['gas_per_transfer_mean']} gas/transfer "
                    f"-> {s['capacity_per_block']} transfers/block; at least {s['min_blocks_needed']} blocks "
                    f"needed, {s['blocks_used']} used (span {s['block_span']}); {s['chain_check']}"
                    + (f"; ledger: {s['ledger_timeline']}" if s.get("ledger_timeline") else "")
                )
        return "\n".join(lines)


def _rate(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _cpu_text(cpu: dict[str, Any]) -> str:
    order = ["client", "ours", "sdk", "anvil", "postgres", "other", "machine"]
    text = " ".join(f"{k} {round(cpu[k])}" for k in order if k in cpu)
    if cpu.get("_others"):
        text += f" (other: {cpu['_others']})"
    return text


def machine_facts() -> dict[str, str]:
    import os
    import subprocess

    cpu = platform.processor() or "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    load = os.getloadavg()
    commit = "?"
    with contextlib.suppress(Exception):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )
        commit = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return {
        "commit": commit,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "load": f"load average before run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.facilitator_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", choices=["matrix", "blocktime"], default="matrix")
    p.add_argument("--targets", default="ours,sdk", help="comma-separated: ours, sdk")
    p.add_argument("--phases", default="verify,settle", help="matrix phases, comma-separated")
    p.add_argument("--concurrency", default="1,8,32,64", help="matrix concurrency levels (connections)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per matrix cell (default 8)")
    p.add_argument(
        "--requests", type=int, default=0, help="fixed number of requests per cell instead of --duration"
    )
    p.add_argument(
        "--block-time",
        type=float,
        default=None,
        help="Anvil block time in s (default automine; blocktime scenario: 2)",
    )
    p.add_argument(
        "--settlements", type=int, default=1000, help="blocktime scenario: settlements issued at once"
    )
    p.add_argument(
        "--connections", type=int, default=1000, help="blocktime scenario: connections (<= settlements)"
    )
    p.add_argument("--payers", type=int, default=64, help="fresh payer accounts (minted USDC)")
    p.add_argument("--payees-per-cell", type=int, default=16)
    p.add_argument("--amount", type=int, default=1000, help="base amount in USDC base units (varies +0..96)")
    p.add_argument("--x402-version", type=int, choices=[1, 2], default=2)
    p.add_argument("--our-signers", type=int, default=4, help="signer keys for our facilitator (1-5)")
    p.add_argument("--ours-workers", type=int, default=1, help="uvicorn worker processes for our facilitator")
    p.add_argument("--sdk-mode", choices=["thread", "inline"], default="thread")
    p.add_argument("--sdk-threads", type=int, default=32)
    p.add_argument(
        "--receipt-timeout",
        type=float,
        default=None,
        help="receipt wait in /settle for both (default 20 s matrix, 120 s blocktime)",
    )
    p.add_argument("--warmup", type=int, default=40, help="warm-up verifies per target (settles: a tenth)")
    p.add_argument(
        "--verify-rate-cap",
        type=float,
        default=3000.0,
        help="duration mode: payments signed per cell = cap x duration (the cell ends early if used up)",
    )
    p.add_argument("--settle-rate-cap", type=float, default=700.0)
    p.add_argument(
        "--ours-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a FacilitatorSettings field for our facilitator, e.g. log_level=WARNING",
    )
    p.add_argument(
        "--ours-network-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a NetworkSettings field, e.g. receipt_poll_seconds=0.01",
    )
    p.add_argument(
        "--exp-sniffio-shim",
        action="store_true",
        help="experiment: give both servers a stand-in `sniffio` module (see bench/serve.py)",
    )
    p.add_argument(
        "--py-spy", default="", help="folder: record py-spy raw stacks of each cell of --py-spy-targets"
    )
    p.add_argument("--py-spy-targets", default="ours")
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp folder (server logs)")
    p.add_argument(
        "--anvil-args",
        default="",
        help='extra Anvil options, e.g. "--hardfork cancun --prune-history" (see bench/README.md)',
    )
    p.add_argument(
        "--shared-chain",
        action="store_true",
        help="run every settle cell on the one chain (default: a fresh chain, database and servers each)",
    )
    a = p.parse_args(argv)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.phases = [t.strip() for t in a.phases.split(",") if t.strip()]
    a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    a.py_spy_targets = [t.strip() for t in a.py_spy_targets.split(",") if t.strip()]
    a.ours_settings = dict(_setting(kv, p) for kv in a.ours_setting)
    a.ours_network_settings = dict(_setting(kv, p) for kv in a.ours_network_setting)
    if a.scenario == "blocktime" and a.block_time is None:
        a.block_time = 2.0
    if a.receipt_timeout is None:
        a.receipt_timeout = 120.0 if a.scenario == "blocktime" else 20.0
    if not 1 <= a.our_signers <= 5:
        p.error("--our-signers must be 1..5 (key 6 is the SDK's)")
    bad = set(a.targets) - {"ours", "sdk"}
    if bad:
        p.error(f"unknown targets {bad}")
    return a


def _setting(text: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        parser.error(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


async def amain(args: argparse.Namespace) -> int:
    bench = Bench(args)
    log("command: " + " ".join([Path(sys.executable).name, "-m", "bench.facilitator_bench", *sys.argv[1:]]))
    try:
        await bench.setup()
        if args.scenario == "matrix":
            await bench.run_matrix()
        else:
            await bench.run_blocktime()
        report = bench.report()
        print("\n" + report + "\n", flush=True)
        if args.json:
            Path(args.json).write_text(  # noqa: ASYNC240
                json.dumps(
                    {
                        "args": {k: v for k, v in vars(args).items()},
                        "machine": machine_facts(),
                        "rows": [asdict(r) for r in bench.rows],
                        "blocktime": bench.blocktime_results,
                        "report": report,
                    },
                    indent=2,
                )
            )
        failed = sum(r.failed for r in bench.rows)
        return 0 if failed == 0 else 1
    finally:
        await bench.teardown()


def main(argv: list[str] | None = None) -> None:
    run_exit(amain(parse_args(argv)))


if __name__ == "__main__":
    main()
