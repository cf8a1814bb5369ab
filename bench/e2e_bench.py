"""End-to-end benchmark: paid requests through our resource server and our facilitator, on Anvil + real USDC.

    .venv/bin/python -m bench.e2e_bench                          # c = 1,8,32, 5 s per cell, automine
    .venv/bin/python -m bench.e2e_bench --concurrency 32 --duration 10 --py-spy /tmp/e2e_spy

Everything runs on this machine: Anvil with USDC (shared/devchain), one embedded PostgreSQL shared by both
servers (each migrates its own namespace), our facilitator in its own uvicorn process (bench/serve.py,
`kind: ours`), our resource server in another (bench/e2e_serve.py: examples/pricing.toml, GET /weather at
$0.001, pointed at the facilitator), and the load generator in this process. Every request is the full x402
flow, timed by the client:

    GET /weather -> 402, decode PAYMENT-REQUIRED, sign EIP-3009 for accepts[0] (client/signing.pay_v2,
    coincurve) -> GET /weather with PAYMENT-SIGNATURE -> 200 with a PAYMENT-RESPONSE whose success is true.

The resource server settles after the handler ("after" in the pricing file) and the facilitator answers
/settle after the receipt, so each 200 means the transfer is mined. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.facilitator_bench import ChainReader, _setting, log, machine_facts
from bench.loadgen import Connection, HttpError, http_get
from bench.payments import new_addresses
from bench.procs import REPO_ROOT, CpuMeter, PySpy, Server, free_port, postgres_pids, run_exit, start_server
from client.signing import pay_v2
from shared.devchain.chain import DevChain
from shared.storage.database import resolve_database_url
from shared.x402.codec import decode_json_header, encode_json_header
from shared.x402.models import PaymentRequirementsV2

API_KEY = "bench-api-key"
HOST = "127.0.0.1"
PATH = "/weather"
PRICING_FILE = REPO_ROOT / "examples" / "pricing.toml"
MAX_FAILURE_SAMPLES = 5
GROUPS = ("resource_server", "facilitator", "anvil", "postgres", "client")


# -- payers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payer:
    address: str
    key_hex: str


# -- one cell -------------------------------------------------------------------------------------------


@dataclass
class FlowResult:
    flows: int = 0  # flows started and finished (ok or failed)
    ok: int = 0
    failed: int = 0
    paid_amount: int = 0  # sum of accepts[0].amount over successful flows
    elapsed: float = 0.0
    challenge_lat: list[float] = field(default_factory=list)  # leg 1: GET -> 402
    sign_lat: list[float] = field(default_factory=list)  # decode + sign + encode, client only
    paid_lat: list[float] = field(default_factory=list)  # leg 2: GET with PAYMENT-SIGNATURE -> 200
    flow_lat: list[float] = field(default_factory=list)  # both legs and the signing
    failure_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


def percentile(data: list[float], q: float) -> float:
    if not data:
        return float("nan")
    xs = sorted(data)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def run_flows(
    port: int, payers: list[Payer], *, concurrency: int, duration: float, max_flows: int | None = None
) -> FlowResult:
    """Full paid flows over `concurrency` keep-alive connections (one flow in flight on each) for
    `duration` seconds (flows in flight finish), or exactly `max_flows` flows."""
    res = FlowResult()
    host_line = f"Host: {HOST}:{port}\r\n"
    challenge_req = f"GET {PATH} HTTP/1.1\r\n{host_line}\r\n".encode()
    paid_prefix = f"GET {PATH} HTTP/1.1\r\n{host_line}PAYMENT-SIGNATURE: ".encode()
    conns = [Connection(HOST, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    counter = 0
    started = time.perf_counter()
    deadline = started + duration
    last_done = started

    def fail(msg: str) -> None:
        res.failed += 1
        if len(res.failure_samples) < MAX_FAILURE_SAMPLES:
            res.failure_samples.append(msg)

    async def worker(conn: Connection) -> None:
        nonlocal counter, last_done
        while True:
            if max_flows is not None:
                if counter >= max_flows:
                    return
            elif time.perf_counter() >= deadline:
                return
            i = counter
            counter += 1
            payer = payers[i % len(payers)]
            t0 = time.perf_counter()
            counted = False
            try:
                status, headers, body = await conn.request_with_headers(challenge_req)
                t1 = time.perf_counter()
                res.flows += 1
                counted = True
                if status != 402 or b"payment-required" not in headers:
                    last_done = max(last_done, t1)
                    fail(f"#{i} leg 1: HTTP {status} {body[:300].decode(errors='replace')}")
                    continue
                required = decode_json_header(headers[b"payment-required"].decode("ascii"))
                requirements = PaymentRequirementsV2.model_validate(required["accepts"][0])
                payload = pay_v2(payer.key_hex, payer.address, requirements)
                data = paid_prefix + encode_json_header(payload).encode("ascii") + b"\r\n\r\n"
                t2 = time.perf_counter()
                status, headers, body = await conn.request_with_headers(data)
                t3 = time.perf_counter()
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError, KeyError) as exc:
                if not counted:
                    res.flows += 1
                last_done = max(last_done, time.perf_counter())
                fail(f"#{i} error: {type(exc).__name__}: {exc}")
                await conn.close()
                continue
            last_done = max(last_done, t3)
            res.challenge_lat.append(t1 - t0)
            res.sign_lat.append(t2 - t1)
            res.paid_lat.append(t3 - t2)
            res.flow_lat.append(t3 - t0)
            settled = None
            if status == 200 and b"payment-response" in headers:
                with contextlib.suppress(ValueError):
                    settled = decode_json_header(headers[b"payment-response"].decode("ascii"))
            if settled is not None and settled.get("success") is True:
                res.ok += 1
                res.paid_amount += int(requirements.amount)
            else:
                fail(
                    f"#{i} leg 2: HTTP {status} PAYMENT-RESPONSE {settled} "
                    f"{body[:300].decode(errors='replace')}"
                )

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    res.elapsed = last_done - started
    return res


_COUNTERS = (
    "x402_verify_seconds_sum",
    "x402_verify_seconds_count",
    "x402_settle_seconds_sum",
    "x402_settle_seconds_count",
    "x402_settlement_transaction_settlements_sum",
    "x402_settlement_transaction_settlements_count",
    "x402_rpc_seconds_count",
)


async def facilitator_timings(port: int) -> dict[str, float] | None:
    """Our facilitator's counters so far, summed over labels: /verify and /settle handling time, the
    settlements its transactions carried, and its JSON-RPC requests (a batch counts once)."""
    try:
        status, body = await http_get(HOST, port, "/metrics", timeout=10.0)
    except (TimeoutError, OSError, ValueError):
        return None
    if status != 200:
        return None
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        for name in _COUNTERS:
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] = out.get(name, 0.0) + float(line.rpartition(" ")[2])
    return out


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _mean_ms(before: dict[str, float], after: dict[str, float], what: str) -> float:
    n = after.get(f"x402_{what}_seconds_count", 0.0) - before.get(f"x402_{what}_seconds_count", 0.0)
    s = after.get(f"x402_{what}_seconds_sum", 0.0) - before.get(f"x402_{what}_seconds_sum", 0.0)
    return round(1000 * s / n, 1) if n > 0 else float("nan")


# -- results --------------------------------------------------------------------------------------------


@dataclass
class Row:
    concurrency: int
    flows: int
    ok: int
    failed: int
    seconds: float
    rps: float
    paid_p50_ms: float
    paid_p99_ms: float
    flow_p50_ms: float
    flow_p99_ms: float
    challenge_p50_ms: float
    sign_p50_ms: float
    fac_verify_mean_ms: float = float("nan")
    fac_settle_mean_ms: float = float("nan")
    settlements_per_tx: float = float("nan")
    rpc_requests_per_paid: float = float("nan")
    cpu: dict[str, Any] = field(default_factory=dict)
    chain_check: str = ""
    failure_samples: list[str] = field(default_factory=list)


def _ms(x: float) -> float:
    return round(x * 1000, 1)


def _cpu_text(cpu: dict[str, Any]) -> str:
    order = [*GROUPS, "other", "machine"]
    text = " ".join(f"{k} {round(cpu[k])}" for k in order if k in cpu)
    if cpu.get("_others"):
        text += f" (other: {cpu['_others']})"
    return text


class E2EBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="x402-e2e-bench-"))
        self.chain: DevChain | None = None
        self.embedded: Any = None
        self.reader: ChainReader | None = None
        self.facilitator: Server | None = None
        self.rs: Server | None = None
        self.payers: list[Payer] = []
        self.pay_to = ""
        self.token = ""
        self.meter: CpuMeter | None = None
        self.rows: list[Row] = []
        self.generation = 0  # stacks (chain, database, servers) started so far

    async def setup(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        self.generation += 1
        self.payers = []
        self.chain = chain = DevChain.start(block_time=None, facilitator_key_count=a.facilitator_signers)
        self.reader = ChainReader(chain.rpc_url)
        self.token = chain.usdc.address
        pg_dir = self.workdir / f"pg{self.generation}"
        dsn, self.embedded = await asyncio.to_thread(resolve_database_url, None, pg_dir)
        log(f"chain {chain.rpc_url} (automine), PostgreSQL in {pg_dir}")
        t1 = time.perf_counter()
        for _ in range(a.payers):
            account = chain.new_payer(10**13)
            self.payers.append(Payer(str(account.address), account.key.hex()))
        log(f"minted USDC to {a.payers} fresh payers in {time.perf_counter() - t1:.1f}s")
        self.pay_to = new_addresses(1)[0]
        self.facilitator = await start_server(
            "facilitator",
            {
                "kind": "ours",
                "rpc_url": chain.rpc_url,
                "network": chain.network,
                "receipt_timeout_seconds": 20.0,
                "signer_keys": list(chain.facilitator_keys[: a.facilitator_signers]),
                "api_key": API_KEY,
                "dsn": dsn,
                "eip6492_factories": [chain.wallet_factory],
                "settings": a.facilitator_settings,
                "network_settings": a.facilitator_network_settings,
            },
            self.workdir,
        )
        self.rs = await start_module_server(
            "resource_server",
            "bench.e2e_serve",
            {
                "dsn": dsn,
                "facilitator_url": f"http://{HOST}:{self.facilitator.port}",
                "facilitator_api_key": API_KEY,
                "pay_to": self.pay_to,
                "pricing_file": str(PRICING_FILE),
                "settings": a.rs_settings,
            },
            self.workdir,
        )
        rs, fac = self.rs, self.facilitator
        self.meter = CpuMeter(
            {
                "resource_server": lambda: [rs.pid],
                "facilitator": lambda: [fac.pid],
                "anvil": lambda: [chain.anvil.pid],
                "postgres": lambda: postgres_pids(pg_dir),
                "client": lambda: [os.getpid()],
            }
        )
        log(
            f"up in {time.perf_counter() - t0:.1f}s: facilitator pid {fac.pid} port {fac.port}, "
            f"resource server pid {rs.pid} port {rs.port}, payTo {self.pay_to}"
        )

    async def stop_stack(self) -> None:
        for server in (self.rs, self.facilitator):
            if server is not None:
                server.stop()
        self.rs = self.facilitator = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        if self.chain is not None:
            self.chain.stop()
            self.chain = None

    async def teardown(self) -> None:
        await self.stop_stack()
        if self.args.keep_workdir:
            log(f"kept {self.workdir} (server logs, configs)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def balance(self) -> int:
        assert self.reader is not None
        return self.reader.balances(self.token, [self.pay_to])[0]

    async def warm_up(self) -> None:
        assert self.rs is not None
        warm = await run_flows(
            self.rs.port, self.payers, concurrency=2, duration=0, max_flows=self.args.warmup
        )
        log(f"warm-up: {warm.ok}/{warm.flows} paid flows ok")
        for s in warm.failure_samples[:3]:
            log(f"  warm-up failure: {s}")

    async def run(self) -> None:
        a = self.args
        await self.warm_up()
        for i, c in enumerate(a.concurrency):
            if i and not a.shared_chain:
                # A fresh chain per cell: Anvil's cost per block grows with the storage the chain holds
                # (see the facilitator section of bench/README.md), which earlier cells would have filled.
                await self.stop_stack()
                await self.setup()
                await self.warm_up()
            assert self.rs is not None and self.meter is not None and self.reader is not None
            self.reader.wait_txpool_empty(30)
            before_balance = self.balance()
            spy = None
            if a.py_spy:
                Path(a.py_spy).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                spy = []
                for name in a.py_spy_targets:
                    server = self.rs if name == "resource_server" else self.facilitator
                    assert server is not None
                    p = PySpy(server.pid, Path(a.py_spy) / f"{name}-c{c}.txt")
                    p.start()
                    spy.append(p)
            assert self.facilitator is not None
            fac_before = await facilitator_timings(self.facilitator.port)
            before = self.meter.snapshot()
            try:
                res = await run_flows(self.rs.port, self.payers, concurrency=c, duration=a.duration)
            finally:
                after = self.meter.snapshot()
                for p in spy or []:
                    p.stop()
            for server in (self.rs, self.facilitator):
                assert server is not None
                if server.popen.poll() is not None:
                    raise RuntimeError(f"{server.name} died during the cell:\n{server.log_tail()}")
            cpu: dict[str, Any] = CpuMeter.percent(before, after)
            fac_after = await facilitator_timings(self.facilitator.port)
            fac_verify = fac_settle = per_tx = rpc_per_paid = float("nan")
            if fac_before is not None and fac_after is not None:
                fac_verify = _mean_ms(fac_before, fac_after, "verify")
                fac_settle = _mean_ms(fac_before, fac_after, "settle")
                txs = _delta(fac_before, fac_after, "x402_settlement_transaction_settlements_count")
                if txs:
                    carried = _delta(fac_before, fac_after, "x402_settlement_transaction_settlements_sum")
                    per_tx = round(carried / txs, 1)
                if res.ok:
                    rpc_per_paid = round(_delta(fac_before, fac_after, "x402_rpc_seconds_count") / res.ok, 2)
            exclude = self.meter.own_pids() | {p.spy_pid for p in spy or [] if p.spy_pid}
            others = self.meter.top_others(before, after, exclude)
            if others:
                cpu["_others"] = others
            drained = self.reader.wait_txpool_empty(30)
            received = self.balance() - before_balance
            verdict = "OK" if received == res.paid_amount else "MISMATCH"
            check = (
                f"{verdict}: payTo received {received} = {res.ok} x price "
                f"(sum answered {res.paid_amount})" + ("" if drained else " (txpool not drained)")
            )
            row = Row(
                concurrency=c,
                flows=res.flows,
                ok=res.ok,
                failed=res.failed,
                seconds=round(res.elapsed, 3),
                rps=round(res.rps, 1),
                paid_p50_ms=_ms(percentile(res.paid_lat, 50)),
                paid_p99_ms=_ms(percentile(res.paid_lat, 99)),
                flow_p50_ms=_ms(percentile(res.flow_lat, 50)),
                flow_p99_ms=_ms(percentile(res.flow_lat, 99)),
                challenge_p50_ms=_ms(percentile(res.challenge_lat, 50)),
                sign_p50_ms=round(percentile(res.sign_lat, 50) * 1000, 2),
                fac_verify_mean_ms=fac_verify,
                fac_settle_mean_ms=fac_settle,
                settlements_per_tx=per_tx,
                rpc_requests_per_paid=rpc_per_paid,
                cpu={k: (v if isinstance(v, str) else round(v)) for k, v in cpu.items()},
                chain_check=check,
                failure_samples=res.failure_samples,
            )
            self.rows.append(row)
            log(
                f"c={c:<3} {res.ok:5} paid ok / {res.flows} flows in {res.elapsed:5.2f}s = {res.rps:6.1f}/s  "
                f"paid p50 {row.paid_p50_ms} p99 {row.paid_p99_ms} ms  flow p50 {row.flow_p50_ms} "
                f"p99 {row.flow_p99_ms} ms  (402 leg p50 {row.challenge_p50_ms}, sign p50 "
                f"{row.sign_p50_ms} ms; facilitator mean verify {fac_verify} settle {fac_settle} ms, "
                f"{per_tx} settlements per tx, {rpc_per_paid} RPC requests per paid)  "
                f"fail {res.failed}  cpu% {_cpu_text(cpu)}  chain: {check}"
            )
            for s in res.failure_samples:
                log(f"    failure: {s}")

    def report(self) -> str:
        env = machine_facts()
        lines = [
            f"Machine: nproc {env['nproc']}, {env['cpu']}, Python {env['python']}; commit {env['commit']}; "
            + env["load"],
            f"Anvil automine; facilitator: {self.args.facilitator_signers} signer keys, product defaults"
            + (f" + {self.args.facilitator_settings}" if self.args.facilitator_settings else "")
            + "; resource server: examples/pricing.toml GET /weather ($0.001 = 1000 USDC units), "
            "product defaults" + (f" + {self.args.rs_settings}" if self.args.rs_settings else ""),
            "",
            "| conc | flows | paid ok | failed | paid req/s | paid p50 ms | paid p99 ms | flow p50 ms "
            "| flow p99 ms | 402 leg p50 ms | fac. verify / settle mean ms | CPU% resource server "
            "| facilitator | anvil | postgres "
            "| client | other (noise) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            c = r.cpu
            lines.append(
                f"| {r.concurrency} | {r.flows} | {r.ok} | {r.failed} | {r.rps} | {r.paid_p50_ms} | "
                f"{r.paid_p99_ms} | {r.flow_p50_ms} | {r.flow_p99_ms} | {r.challenge_p50_ms} | "
                f"{r.fac_verify_mean_ms} / {r.fac_settle_mean_ms} | "
                + " | ".join(str(c.get(g, "-")) for g in (*GROUPS, "other"))
                + " |"
            )
        lines.append("")
        lines.append("Chain-side checks (payTo's USDC balance change per cell):")
        lines.extend(f"- c={r.concurrency}: {r.chain_check}" for r in self.rows)
        others = [f"c={r.concurrency}: {r.cpu['_others']}" for r in self.rows if r.cpu.get("_others")]
        if others:
            lines.append("")
            lines.append("Busiest other processes: " + "; ".join(others))
        return "\n".join(lines)


async def start_module_server(
    name: str,
    module: str,
    config: dict[str, Any],
    workdir: Path,
    timeout: float = 90.0,  # noqa: ASYNC109
) -> Server:
    """As bench.procs.start_server, for another `python -m MODULE CONFIG.json` server."""
    port = free_port()
    config = {**config, "port": port}
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps(config))
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", module, str(cfg_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log_file.close()
    server = Server(name, port, popen, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode} during start-up:\n{server.log_tail()}")
        with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
            status, _ = await http_get(HOST, port, "/health", timeout=2.0)
            if status == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not become healthy in {timeout}s:\n{server.log_tail()}")
        await asyncio.sleep(0.1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--concurrency", default="1,8,32", help="keep-alive connections, one flow in flight each")
    p.add_argument(
        "--shared-chain",
        action="store_true",
        help="run every cell on one chain (default: a fresh chain, database and servers per cell)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell (default 5)")
    p.add_argument("--payers", type=int, default=64, help="fresh payer accounts (minted USDC)")
    p.add_argument("--warmup", type=int, default=20, help="paid flows before the first cell")
    p.add_argument("--facilitator-signers", type=int, default=4, help="signer keys of the facilitator")
    p.add_argument(
        "--rs-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ResourceServerSettings field, e.g. log_level=WARNING",
    )
    p.add_argument(
        "--facilitator-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a FacilitatorSettings field",
    )
    p.add_argument(
        "--facilitator-network-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a NetworkSettings field",
    )
    p.add_argument(
        "--py-spy", default="", help="folder: py-spy raw stacks of each cell (see --py-spy-targets)"
    )
    p.add_argument("--py-spy-targets", default="resource_server", help="resource_server,facilitator")
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp folder (server logs)")
    a = p.parse_args(argv)
    a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    a.py_spy_targets = [t.strip() for t in a.py_spy_targets.split(",") if t.strip()]
    a.rs_settings = dict(_setting(kv, p) for kv in a.rs_setting)
    a.facilitator_settings = dict(_setting(kv, p) for kv in a.facilitator_setting)
    a.facilitator_network_settings = dict(_setting(kv, p) for kv in a.facilitator_network_setting)
    return a


async def amain(args: argparse.Namespace) -> int:
    bench = E2EBench(args)
    log("command: " + " ".join([Path(sys.executable).name, "-m", "bench.e2e_bench", *sys.argv[1:]]))
    try:
        await bench.setup()
        await bench.run()
        report = bench.report()
        print("\n" + report + "\n", flush=True)
        if args.json:
            Path(args.json).write_text(  # noqa: ASYNC240
                json.dumps(
                    {
                        "args": vars(args),
                        "machine": machine_facts(),
                        "rows": [asdict(r) for r in bench.rows],
                        "report": report,
                    },
                    indent=2,
                )
            )
        bad = any(r.failed or not r.chain_check.startswith("OK") for r in bench.rows)
        return 1 if bad else 0
    finally:
        await bench.teardown()


def main(argv: list[str] | None = None) -> None:
    run_exit(amain(parse_args(argv)))


if __name__ == "__main__":
    main()
