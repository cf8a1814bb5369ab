"""A worker process SIGKILLed in the middle of a job loses nothing: another worker resumes the job at the
step it was on, the job completes, the settlement hook runs once and the final webhook goes out once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from resource_server.generation.engine.service import JobRequest
from resource_server.generation.engine.states import JobStatus, StepStatus
from resource_server.generation.webhooks.signing import verify_signature
from tests.fixtures.generation import (
    CRASH_TOOL,
    LOCAL,
    FinalLog,
    crash_tool,
    dispatching,
    fast_policy,
    make_engine,
    running_workers,
    wait_final_handled,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_crash"


def start_child_worker(dsn: str) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, sys\n"
        "from tests.fixtures.generation import crash_worker_main\n"
        "asyncio.run(crash_worker_main(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, dsn], cwd=REPO, env=env)


async def test_sigkilled_worker_job_resumes_at_its_step_and_the_final_event_goes_out_once(
    generation_pool, fresh_database, start_receiver
):
    receiver, server = await start_receiver()
    engine = make_engine(generation_pool, [crash_tool(hang_in_second=False)], webhook_allow=LOCAL)
    job = (
        await engine.submit_job(
            JobRequest(
                CRASH_TOOL,
                {"prompt": "x", "duration_seconds": 2},
                payer="p",
                webhook_url=f"{server.url}/hook",
                webhook_secret=SECRET,
            )
        )
    ).job

    child = start_child_worker(fresh_database)
    try:

        async def hanging_in_second() -> bool:
            steps = await engine.job_steps(job.id)
            return steps[0].status is StepStatus.SUCCEEDED and steps[1].status is StepStatus.RUNNING

        await wait_until(hanging_in_second, within=30)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    # Nothing was cleaned up: the dead worker still holds the lease until it runs out.
    orphan = await engine.get_job(job.id)
    assert orphan is not None and orphan.status is JobStatus.RUNNING
    assert orphan.lease_owner == f"child-{child.pid}"

    hook = FinalLog()
    async with running_workers(engine, on_final=hook), dispatching(engine, fast_policy()):
        done = await wait_final_handled(engine, job.id, within=15)
        await wait_until(lambda: _delivered(engine, job.id), within=10)

    assert done.status is JobStatus.COMPLETED
    steps = await engine.job_steps(job.id)
    assert [s.attempts for s in steps] == [1, 2, 1]  # the first step was not run again
    assert steps[0].output == {"pid": child.pid}
    assert steps[1].output == {"pid": os.getpid(), "first_pid": child.pid}
    assert done.result == {"pid": os.getpid(), "first_pid": child.pid}
    assert [c.status for c in hook.calls] == [JobStatus.COMPLETED]

    assert len(receiver.received) == 1
    [delivery] = await engine.webhook_deliveries(job.id)
    assert receiver.event_ids() == [str(delivery.event_id)]
    assert verify_signature(SECRET, receiver.received[0].headers["x-signature"], receiver.received[0].body)
    assert receiver.bodies()[0]["data"]["job"]["status"] == "completed"


async def _delivered(engine, job_id) -> bool:
    deliveries = await engine.webhook_deliveries(job_id)
    return bool(deliveries) and all(d.delivered_at is not None for d in deliveries)
