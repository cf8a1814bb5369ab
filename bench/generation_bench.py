"""Generation pipeline benchmark: the job queue with 1, 2 and 4 worker PROCESSES on one PostgreSQL.

    .venv/bin/python -m bench.generation_bench                 # 1, 2, 4 processes; 3 runs of 1,000 jobs
    .venv/bin/python -m bench.generation_bench --workers 1,2 --jobs 1000 --concurrency 1

The tool is "echo" (one step that hands its input back), so what is measured is the pipeline itself:
admission and insert, SKIP LOCKED claims under leases, step bookkeeping, events and the settlement hook.
Each worker is a real `x402-resource-server worker` process (X402_RS_GENERATION_ECHO_TOOL=true), started
and idle before the clock starts. Per worker count, on a fresh database:

- accepted/s: jobs submitted and accepted (admission check + insert under the admission lock) by 16
  concurrent submitters in this process;
- throughput: a full queue (the accepted jobs, submitted held) released at once; jobs completed per
  second from the release to the last job's completion, by the database's clock;
- latency: jobs submitted one at a time at a steady rate well under capacity; queue-to-completion
  (queued_at to finished_at, the database's clock) p50 / p95 / max.

`--delay-ms N` makes each job's step wait N ms without CPU, as a provider call does: with 0 the numbers are
the pipeline's own cost (CPU-bound), with a delay they show how workers scale when jobs wait on providers.

PostgreSQL is embedded (a temporary folder) unless DATABASE_URL names a server (its role needs CREATEDB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from resource_server.challenges.store import ChallengeStore
from resource_server.generation.engine.admission import EngineLimits
from resource_server.generation.engine.service import EngineSettings, GenerationEngine, JobRequest
from resource_server.generation.schema import migrate_schema
from resource_server.generation.tools.echo import echo_tool
from shared.storage.database import connect_pool, quote_ident, resolve_database_url, with_database

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBMITTERS = 16
READY_LINE = "generation_worker_ready"


@dataclass
class Sample:
    """One run of one worker count on a fresh database."""

    accepted_per_s: float
    completed_per_s: float
    latencies_ms: list[float]
    workers_cpu_pct: float  # during the full-queue phase, % of one core (all worker processes)
    machine_cpu_pct: float  # the machine's busy time over the same phase (200 % = both cores)


@dataclass
class Row:
    workers: int
    concurrency: int
    jobs: int
    runs: int
    accepted_per_s: float  # median over the runs
    completed_per_s: float  # median over the runs
    completed_min: float
    completed_max: float
    latency_jobs: int  # per run
    latency_rate: float
    workers_cpu_pct: float  # median over the runs
    machine_cpu_pct: float
    p50_ms: float  # over every run's latency samples
    p95_ms: float
    max_ms: float


# -- processes and databases -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    name = f"genbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await admin.close()


async def migrate_all(dsn: str) -> None:
    """Every schema a worker needs, applied once here so worker start-up races nothing."""
    store = ChallengeStore()
    await store.open(dsn, min_size=1, max_size=2)
    await store.close()
    pool = await connect_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate_schema(pool)
    finally:
        await pool.close()


class Workers:
    def __init__(self, dsn: str, count: int, concurrency: int, logs: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("X402_")}
        env.update(
            {
                "DATABASE_URL": dsn,
                "X402_RS_GENERATION_ECHO_TOOL": "true",
                "X402_RS_FACILITATOR_URLS": "http://127.0.0.1:9",  # echo jobs carry no payment
                "X402_RS_LOG_JSON": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        argv = [sys.executable, "-m", "resource_server.cli", "worker", "--concurrency", str(concurrency)]
        self.logs = [logs / f"worker-{i}.log" for i in range(count)]
        self.procs = [
            subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            for log in self.logs
        ]

    async def ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not all(READY_LINE in log.read_text(errors="replace") for log in self.logs):
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not become ready")
            await asyncio.sleep(0.1)

    def cpu_seconds(self) -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the measurements ------------------------------------------------------------------------------------


def echo_inputs(label: str, delay_ms: int) -> dict[str, Any]:
    return {"message": label, **({"delay_ms": delay_ms} if delay_ms else {})}


async def submit_held(engine: GenerationEngine, count: int, delay_ms: int) -> float:
    """Submits ``count`` echo jobs, held (not claimable), from SUBMITTERS tasks; returns accepted/s."""
    counter = iter(range(count))

    async def submitter() -> None:
        for i in counter:
            inputs = echo_inputs(f"m{i}", delay_ms)
            await engine.submit_job(JobRequest("echo", inputs, payer=f"p{i}", hold_seconds=3600))

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    return count / (time.perf_counter() - start)


async def wait_done(pool: asyncpg.Pool, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        done = await pool.fetchval(
            "SELECT count(*) FROM generation_jobs WHERE status = 'completed' AND final_handled"
        )
        if done >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{count} jobs completed in {within:g} s")
        await asyncio.sleep(0.05)


async def throughput(pool: asyncpg.Pool, count: int) -> float:
    """Releases every held job at once; completed jobs per second by the database's clock."""
    async with pool.acquire() as conn, conn.transaction():
        released_at = await conn.fetchval("UPDATE generation_jobs SET run_after = now() RETURNING now()")
        await conn.execute("SELECT pg_notify('generation_jobs_queued', '')")
    await wait_done(pool, count, within=600)
    last = await pool.fetchval("SELECT max(finished_at) FROM generation_jobs")
    return float(count / (last - released_at).total_seconds())


async def latency(
    engine: GenerationEngine, pool: asyncpg.Pool, count: int, rate: float, delay_ms: int
) -> list[float]:
    """Open loop at ``rate`` jobs/s; queue-to-completion milliseconds of each job."""
    await pool.execute("DELETE FROM generation_jobs")
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.create_task(
                engine.submit_job(JobRequest("echo", echo_inputs(f"l{i}", delay_ms), payer=f"l{i}"))
            )
        )
    await asyncio.gather(*tasks)
    await wait_done(pool, count, within=120)
    rows = await pool.fetch(
        "SELECT extract(epoch FROM finished_at - queued_at) * 1000 AS ms FROM generation_jobs ORDER BY ms"
    )
    return [float(r["ms"]) for r in rows]


def _machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_one(server_dsn: str, workers: int, args: argparse.Namespace, logs: Path) -> Sample:
    async with fresh_database(server_dsn) as dsn:
        await migrate_all(dsn)
        pool = await connect_pool(dsn, min_size=2, max_size=SUBMITTERS + 4)
        # The bench only submits; a generous queue so admission never refuses the batch.
        limits = EngineLimits(max_queued=args.jobs + args.latency_jobs + 10, max_active_per_payer=10)
        engine = GenerationEngine(pool, [echo_tool()], EngineSettings(limits=limits))
        procs = Workers(dsn, workers, args.concurrency, logs)
        try:
            await procs.ready()
            accepted = await submit_held(engine, args.jobs, args.delay_ms)
            # What autovacuum does on a live queue table; a table filled in seconds and never analyzed
            # makes the planner sort the whole queue for every claim.
            await pool.execute("ANALYZE generation_jobs")
            before = procs.cpu_seconds(), _machine_busy_seconds(), time.perf_counter()
            completed = await throughput(pool, args.jobs)
            after = procs.cpu_seconds(), _machine_busy_seconds(), time.perf_counter()
            wall = after[2] - before[2]
            samples = await latency(engine, pool, args.latency_jobs, args.latency_rate, args.delay_ms)
        finally:
            procs.stop()
            await pool.close()
    return Sample(
        accepted,
        completed,
        samples,
        workers_cpu_pct=100 * (after[0] - before[0]) / wall,
        machine_cpu_pct=100 * (after[1] - before[1]) / wall,
    )


def summarize(workers: int, samples: list[Sample], args: argparse.Namespace) -> Row:
    completed = [s.completed_per_s for s in samples]
    latencies = sorted(ms for s in samples for ms in s.latencies_ms)
    return Row(
        workers=workers,
        concurrency=args.concurrency,
        jobs=args.jobs,
        runs=len(samples),
        accepted_per_s=round(statistics.median(s.accepted_per_s for s in samples), 1),
        completed_per_s=round(statistics.median(completed), 1),
        completed_min=round(min(completed), 1),
        completed_max=round(max(completed), 1),
        latency_jobs=args.latency_jobs,
        latency_rate=args.latency_rate,
        workers_cpu_pct=round(statistics.median(s.workers_cpu_pct for s in samples)),
        machine_cpu_pct=round(statistics.median(s.machine_cpu_pct for s in samples)),
        p50_ms=round(statistics.median(latencies), 1),
        p95_ms=round(percentile(latencies, 0.95), 1),
        max_ms=round(max(latencies), 1),
    )


def table(rows: list[Row]) -> str:
    base = rows[0].completed_per_s
    lines = [
        "| worker processes | accepted jobs/s | completed jobs/s, full queue (min-max) | scaling "
        "| CPU% workers / machine, full queue | queue-to-completion p50 | p95 | max |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        scaling = r.completed_per_s / base
        lines.append(
            f"| {r.workers} | {r.accepted_per_s:.0f} | {r.completed_per_s:.0f} "
            f"({r.completed_min:.0f}-{r.completed_max:.0f}) | {scaling:.2f}x "
            f"| {r.workers_cpu_pct:.0f} / {r.machine_cpu_pct:.0f} "
            f"| {r.p50_ms:.0f} ms | {r.p95_ms:.0f} ms | {r.max_ms:.0f} ms |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="x402-genbench-"))
    explicit = os.environ.get("DATABASE_URL")
    server_dsn, embedded = await asyncio.to_thread(resolve_database_url, explicit, root / "postgres")
    if args.async_commit:
        # asyncpg passes unknown DSN parameters on as server settings, to the workers' pools too.
        server_dsn += ("&" if "?" in server_dsn else "?") + "synchronous_commit=off"
    samples: dict[int, list[Sample]] = {w: [] for w in args.workers}
    try:
        # Worker counts take turns, so slow phases of a shared machine (disk, neighbours) hit them alike.
        for run in range(args.repeat):
            for workers in args.workers:
                logs = root / f"logs-{workers}-{run}"
                logs.mkdir()
                sample = await run_one(server_dsn, workers, args, logs)
                samples[workers].append(sample)
                brief = {"workers": workers, "run": run, "accepted": round(sample.accepted_per_s, 1)}
                brief["completed"] = round(sample.completed_per_s, 1)
                print(json.dumps(brief), file=sys.stderr, flush=True)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        shutil.rmtree(root, ignore_errors=True)
    rows = [summarize(w, samples[w], args) for w in args.workers]
    settings = {"async_commit": args.async_commit, "delay_ms": args.delay_ms, "concurrency": args.concurrency}
    print(json.dumps({"machine": machine(), **settings, "rows": [asdict(r) for r in rows]}, indent=2))
    print()
    print(table(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="jobs each process runs at once (default 1)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count; medians (default 3)")
    parser.add_argument(
        "--jobs", type=int, default=1000, help="jobs in the full-queue run (default %(default)s)"
    )
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs in the latency run (default 200)")
    parser.add_argument(
        "--latency-rate", type=float, default=20.0, help="jobs/s in the latency run (default 20)"
    )
    parser.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="each job's step waits this long, as a provider call would, without CPU (default 0: no-op)",
    )
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="synchronous_commit=off for every connection: shows how much of the cost is WAL flushes",
    )
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
