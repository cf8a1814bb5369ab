"""Pure logic of the generation API: job tokens, signed links and payer signatures, request parsing,
offers and payment windows, the catalogue, job views, SSE framing and payment options."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from resource_server.facilitator_client import FacilitatorBadResponse, FacilitatorUnavailable
from resource_server.generation.engine.params import ToolLimits
from resource_server.generation.engine.pricing import price_breakdown
from resource_server.generation.engine.records import JobEvent, JobRecord
from resource_server.generation.engine.states import JobStatus
from resource_server.generation.tools.echo import echo_tool
from resource_server.generation.webhooks.addresses import AllowList
from resource_server.generation_api import access
from resource_server.generation_api.accepts import AcceptsError, resolve_accepts
from resource_server.generation_api.catalogue import describe_tool
from resource_server.generation_api.offers import PaymentTerms, priced_params
from resource_server.generation_api.parsing import (
    RequestError,
    check_webhook,
    parse_generate,
    parse_quote,
    validate_inputs,
)
from resource_server.generation_api.payments import (
    JobPayments,
    PaymentState,
    SettleNotSent,
    SettleUnresolved,
    settle_may_have_gone_out,
)
from resource_server.generation_api.sse import format_event, parse_last_event_id
from resource_server.generation_api.views import job_view, timings
from resource_server.paywall import HeldPayment, StorageUnavailable
from resource_server.pricing.loader import parse_pricing
from resource_server.pricing.model import SettlementPolicy
from resource_server.pricing.money import to_atomic
from resource_server.reconciler import EXPIRY_MARGIN_SECONDS
from tests.fixtures.generation import Script, scripted_tool

SECRET = b"k" * 32
JOB = uuid.UUID("5f0c4a52-8d7e-4b1e-9a3c-0e1f2a3b4c5d")
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PRICING = parse_pricing(
    {
        "defaults": {"pay_to": PAY_TO, "accepts": [{"network": "eip155:84532"}]},
        "routes": [{"path": "/a", "price": "$1"}],
    }
)


def music_like(**limits: Any) -> Any:
    from resource_server.generation.engine.pricing import StepPrice
    from resource_server.generation.engine.tools import Step, Tool

    async def run(ctx: Any) -> dict[str, Any]:
        return {}

    steps = (
        Step("refine", run, StepPrice(fixed=Decimal("0.001"))),
        Step("generate", run, StepPrice(per_second=Decimal("0.002"))),
    )
    return Tool("music", steps, limits=ToolLimits(**limits), description="music")


def terms(**kwargs: Any) -> PaymentTerms:
    values: dict[str, Any] = {
        "accepts": PRICING.routes[0].accepts,
        "settle_margin_seconds": 60.0,
        "signing_grace_seconds": 30.0,
        "settle_on_accept": frozenset(),
    }
    values.update(kwargs)
    return PaymentTerms(**values)


# -- access ----------------------------------------------------------------------------------------------


def test_job_tokens_are_per_job_and_per_secret():
    token = access.job_token(SECRET, JOB)
    assert access.token_matches(SECRET, JOB, token)
    assert not access.token_matches(SECRET, uuid.uuid4(), token)
    assert not access.token_matches(b"x" * 32, JOB, token)
    assert not access.token_matches(SECRET, JOB, token + "A")
    assert not access.token_matches(SECRET, JOB, "ünïcode")
    assert len(token) == 43 and "=" not in token  # 256 bits, URL-safe


def test_signed_links_are_valid_until_they_expire_and_bound_to_the_job():
    link = access.sign_result_link(SECRET, JOB, now=1_000, ttl_seconds=60)
    assert link.expires == 1_060 and link.query() == f"expires=1060&sig={link.signature}"
    check = access.check_result_link
    assert check(SECRET, JOB, "1060", link.signature, now=1_059.9) is access.LinkVerdict.VALID
    assert check(SECRET, JOB, "1060", link.signature, now=1_060) is access.LinkVerdict.EXPIRED
    assert check(SECRET, JOB, "1061", link.signature, now=1_000) is access.LinkVerdict.INVALID  # extended
    assert check(SECRET, uuid.uuid4(), "1060", link.signature, now=1_000) is access.LinkVerdict.INVALID
    for expires, sig in (("1e9", link.signature), ("-1", link.signature), ("1060", "zz"), ("1060", "")):
        assert check(SECRET, JOB, expires, sig, now=1_000) is access.LinkVerdict.INVALID


def _proof(account: Any, job: uuid.UUID, ts: int) -> str:
    signed = Account.sign_message(encode_defunct(text=access.payer_auth_message(job, ts)), account.key)
    return f"{ts}.0x{bytes(signed.signature).hex()}"


def test_the_payer_proves_their_address_with_a_fresh_eip191_signature():
    account = Account.create()
    assert access.payer_auth_message(JOB, 1700000000) == f"x402-job:{JOB}:1700000000"
    proof = _proof(account, JOB, 1_700_000_000)
    recover = access.recover_payer
    assert recover(proof, JOB, now=1_700_000_100, window_seconds=300) == account.address
    assert recover(proof, JOB, now=1_700_000_301, window_seconds=300) is None  # stale
    assert recover(proof, JOB, now=1_699_999_600, window_seconds=300) is None  # from the future
    assert recover(proof, uuid.uuid4(), now=1_700_000_000, window_seconds=300) != account.address
    for bad in ("", "1700000000", "x.0x00", "1700000000.0xzz", "1700000000.0x" + "00" * 65):
        assert recover(bad, JOB, now=1_700_000_000, window_seconds=300) is None


# -- requests --------------------------------------------------------------------------------------------


def _error(body: object) -> tuple[int, str]:
    with pytest.raises(RequestError) as exc:
        parse_generate(orjson.dumps(body) if not isinstance(body, bytes) else body)
    return exc.value.status, exc.value.error


def test_generate_requests_parse_with_poll_by_default_and_webhooks_on_request():
    plain = parse_generate(b'{"tool": "music", "inputs": {"prompt": "p", "duration_seconds": 3}}')
    assert plain.tool == "music" and plain.webhook is None
    assert parse_generate(b'{"tool": "m", "delivery": "poll"}').webhook is None
    hooked = parse_generate(
        orjson.dumps(
            {
                "tool": "m",
                "delivery": {
                    "mode": "webhook",
                    "url": "https://h/x",
                    "secret": "s" * 16,
                    "includeProgress": True,
                },
            }
        )
    )
    assert (
        hooked.webhook is not None and hooked.webhook.include_progress and hooked.webhook.secret == "s" * 16
    )
    assert hooked.inputs == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (400, "invalid_request")),
        (b"{", (400, "invalid_request")),
        ([1], (400, "invalid_request")),
        ({"inputs": {}}, (400, "invalid_request")),
        ({"tool": 3}, (400, "invalid_request")),
        ({"tool": "m", "input": {}}, (400, "invalid_request")),
        ({"tool": "m", "inputs": []}, (400, "invalid_inputs")),
        ({"tool": "m", "delivery": {"mode": "sms"}}, (400, "invalid_delivery")),
        (
            {"tool": "m", "delivery": {"mode": "webhook", "url": "https://h", "secret": "short"}},
            (400, "invalid_delivery"),
        ),
        ({"tool": "m", "delivery": {"mode": "webhook", "secret": "s" * 16}}, (400, "invalid_delivery")),
        (
            {
                "tool": "m",
                "delivery": {"mode": "webhook", "url": "https://h", "secret": "s" * 16, "includeProgress": 1},
            },
            (400, "invalid_delivery"),
        ),
        (
            {"tool": "m", "delivery": {"mode": "webhook", "url": "https://h", "secret": "s" * 16, "x": 1}},
            (400, "invalid_delivery"),
        ),
    ],
)
def test_generate_requests_are_refused_with_a_precise_reason(body, expected):
    assert _error(body) == expected


def test_webhook_destinations_are_checked_before_payment():
    hooked = parse_generate(
        orjson.dumps(
            {"tool": "m", "delivery": {"mode": "webhook", "url": "http://127.0.0.1:9/h", "secret": "s" * 16}}
        )
    )
    with pytest.raises(RequestError) as exc:
        check_webhook(hooked.webhook, AllowList())
    assert exc.value.error == "invalid_webhook" and "loopback" in exc.value.message
    check_webhook(hooked.webhook, AllowList.parse(["127.0.0.0/8"]))
    check_webhook(None, AllowList())


def test_inputs_are_validated_against_the_tool_and_unknown_ones_refused():
    tool = music_like(max_duration_seconds=30)
    assert validate_inputs(tool, {"prompt": " a  b ", "duration_seconds": "2.5"}) == {
        "prompt": "a b",
        "duration_seconds": 2.5,
    }
    for inputs, code in (
        ({"prompt": "p", "duration_seconds": 31}, "duration_too_long"),
        ({"prompt": "p", "duration_seconds": 3, "tempo": 90}, "invalid_inputs"),
        ({"duration_seconds": 3}, "invalid_prompt"),
    ):
        with pytest.raises(RequestError) as exc:
            validate_inputs(tool, inputs)
        assert (exc.value.status, exc.value.error) == (400, code)
    assert parse_quote(b'{"inputs": {"a": 1}}') == {"a": 1}
    with pytest.raises(RequestError):
        parse_quote(b'{"inputs": {}, "tool": "m"}')


# -- offers ----------------------------------------------------------------------------------------------


def test_an_offer_charges_the_tools_quote_exactly_rounded_up_once():
    tool = music_like()
    quote, breakdown = terms().offer(tool, {"prompt": "p", "duration_seconds": 7.25})
    # (0.001 + 0.002 x 7.25) x 1.2 = 0.0186 exactly
    assert breakdown.total == Decimal("0.0186") and quote.amounts[0].atomic == 18_600
    assert to_atomic(breakdown.total, 6)[1] == quote.amounts[0].atomic == breakdown.atomic_total()
    assert not quote.amounts[0].rounded_up
    assert quote.route.key == "POST /generate" and quote.route.settlement is SettlementPolicy.DEFERRED
    # A third of a cent per second: the quote is rounded up to whole atomic units, never down.
    thirds = price_breakdown(
        [("g", music_like().steps[1].price)], duration_seconds=Decimal("1.0000005"), markup_rate=Decimal(0)
    )
    assert thirds.total == Decimal("0.002001") and thirds.total >= Decimal("0.002000001")


def test_challenges_bind_the_tool_and_its_priced_inputs_only():
    tool = music_like()
    a = priced_params(tool, {"prompt": "calm", "duration_seconds": 10.0})
    b = priced_params(tool, {"prompt": "loud", "duration_seconds": 10})
    assert a == {"tool": "music", "duration_seconds": Decimal("10.0")}
    assert b["duration_seconds"] == Decimal(10)
    qa = terms().offer(tool, {"prompt": "calm", "duration_seconds": 10.0})[0]
    qb = terms().offer(tool, {"prompt": "loud", "duration_seconds": 10})[0]
    qc = terms().offer(tool, {"prompt": "calm", "duration_seconds": 11})[0]
    assert qa.params_hash == qb.params_hash != qc.params_hash
    assert priced_params(echo_tool(), {"message": "x"}) == {"tool": "echo"}


def test_payment_windows_cover_the_longest_job_plus_the_settlement_margin():
    tool = music_like(max_job_seconds=600)
    deferred = terms()
    assert deferred.required_window(tool) == 660 and deferred.max_timeout_seconds(tool) == 690
    assert deferred.route(tool, Decimal("0.01")).max_timeout_seconds == 690
    on_accept = terms(settle_on_accept=frozenset({"music"}))
    assert on_accept.policy(tool) is SettlementPolicy.AFTER and on_accept.max_timeout_seconds(tool) == 300


def test_payment_options_come_from_settings_or_the_pricing_files_routes():
    [own] = resolve_accepts(["eip155:84532/USDC"], PRICING, PAY_TO)
    assert own.token.symbol == "USDC" and own.pay_to == PAY_TO
    assert resolve_accepts([], PRICING, None) == PRICING.routes[0].accepts
    assert resolve_accepts(["base-sepolia"], PRICING, PAY_TO)[0].token.chain_id == 84532
    for entries, pricing, pay_to in (
        ([], parse_pricing({"routes": []}), None),
        (["eip155:84532"], PRICING, None),
        (["eip155:84532/DAI"], PRICING, PAY_TO),
        (["nowhere"], PRICING, PAY_TO),
        (["eip155:84532"], PRICING, "0xnot"),
    ):
        with pytest.raises(AcceptsError):
            resolve_accepts(entries, pricing, pay_to)


# -- catalogue -------------------------------------------------------------------------------------------


def test_the_catalogue_says_how_a_price_is_computed():
    described = describe_tool(music_like(), terms(), "http://h")
    assert described["price"]["dependsOn"] == ["duration_seconds"] and "fixed" not in described["price"]
    assert described["payment"]["settlement"] == "on_completion"
    assert described["payment"]["accepts"][0]["v1Network"] == "base-sepolia"
    echo = describe_tool(echo_tool(), terms(), "http://h")
    assert echo["price"]["fixed"] == "0.001" and echo["price"]["dependsOn"] == []
    assert echo["inputSchema"]["properties"]["message"] == {"type": "string", "maxLength": 1000}
    assert "maxDurationSeconds" not in echo["limits"] and echo["limits"]["maxJobSeconds"] == 120
    assert (
        describe_tool(scripted_tool("t", {"s": Script()}), terms(), "http://h")["urls"]["generate"]
        == "http://h/generate"
    )


# -- views and events ------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NONCE = "0x" + "5e" * 32


def record(**changes: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": JOB,
        "tool": "music",
        "params": {},
        "payer": PAY_TO,
        "idempotency_key": None,
        "status": JobStatus.RUNNING,
        "progress": 0.5,
        "status_text": "generating",
        "current_step": 1,
        "runs": 1,
        "run_after": T0,
        "lease_owner": "w",
        "lease_until": T0,
        "queued_at": T0,
        "started_at": T0 + timedelta(seconds=2),
        "finished_at": None,
        "updated_at": T0,
        "result": {},
        "failure_category": None,
        "failure_code": None,
        "failure_message": None,
        "failed_step": None,
        "notices": [],
        "price": None,
        "payment_challenge_id": "c" * 32,
        "payment_nonce": NONCE,
        "payment_tx_hash": None,
        "settlement_status": "held",
        "webhook_url": None,
        "webhook_secret": "never shown",
        "webhook_progress": False,
        "final_handled": False,
        "final_attempts": 0,
        "final_error": None,
        "deadline_at": T0 + timedelta(seconds=900),
    }
    values.update(changes)
    return JobRecord(**values)


def test_timings_run_on_while_the_job_is_not_final():
    now = T0 + timedelta(seconds=10)
    assert timings(record(), now) == {"queued_seconds": 2.0, "running_seconds": 8.0, "total_seconds": 10.0}
    done = record(status=JobStatus.COMPLETED, finished_at=T0 + timedelta(seconds=5))
    assert timings(done, now) == {"queued_seconds": 2.0, "running_seconds": 3.0, "total_seconds": 5.0}
    waiting = record(status=JobStatus.QUEUED, started_at=None)
    assert timings(waiting, now) == {"queued_seconds": 10.0, "running_seconds": None, "total_seconds": 10.0}


def test_the_job_view_adds_links_and_the_receipt_and_hides_the_webhook_secret():
    tx = "0x" + "ab" * 32
    link = access.sign_result_link(SECRET, JOB, now=0, ttl_seconds=60)
    view = job_view(
        record(status=JobStatus.COMPLETED, finished_at=T0, webhook_url="https://h"),
        base_url="http://rs",
        payment=PaymentState("settled", tx),
        receipt_base_url="http://fac/",
        result_link=link,
        now=T0,
    )
    # A batched settlement shares its transaction with other payments: the nonce names the job's.
    assert view["payment"]["receipt_url"] == f"http://fac/receipt/{tx}?nonce={NONCE}"
    assert view["payment"]["nonce"] == NONCE
    assert view["payment"]["settlement_status"] == "settled" and view["payment"]["challenge_id"] == "c" * 32
    assert view["links"]["result"] == f"http://rs/jobs/{JOB}/result?{link.query()}"
    assert view["links"]["webhook_redeliver"] == f"http://rs/jobs/{JOB}/webhook/redeliver"
    assert "never shown" not in orjson.dumps(view).decode()
    running = job_view(
        record(),
        base_url="http://rs",
        payment=PaymentState("held", None),
        receipt_base_url="x",
        result_link=link,
        now=T0,
    )
    assert "result" not in running["links"] and running["payment"]["receipt_url"] is None
    # A job stored before nonces were kept has none: the bare link, as before (fine for a lone settlement).
    old = job_view(
        record(status=JobStatus.COMPLETED, finished_at=T0, payment_nonce=None),
        base_url="http://rs",
        payment=PaymentState("settled", tx),
        receipt_base_url="http://fac",
        result_link=link,
        now=T0,
    )
    assert old["payment"]["receipt_url"] == f"http://fac/receipt/{tx}" and old["payment"]["nonce"] is None


def test_sse_frames_carry_the_event_id_and_last_event_id_is_strict():
    event = JobEvent(42, JOB, "progress", JobStatus.RUNNING, 0.25, "rendering", {}, T0)
    frame = format_event(event).decode()
    assert frame.startswith("id: 42\nevent: progress\ndata: {") and frame.endswith("}\n\n")
    assert orjson.loads(frame.split("data: ", 1)[1])["progress"] == 0.25
    assert [parse_last_event_id(v) for v in (None, "", "7", " 8 ", "-1", "x", "9" * 19)] == [
        0,
        0,
        7,
        8,
        None,
        None,
        None,
    ]


# -- the job's settlement hook: settle, release, or leave it to the reconciler ----------------------------


class FakePaywall:
    """Records what the hook asks of the paywall; its settle raises `settle_raises`, if set."""

    def __init__(self, settle_raises: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.settle_raises = settle_raises

    async def settle(self, held: HeldPayment, **kwargs: Any) -> None:
        self.calls.append(("settle", kwargs))
        if self.settle_raises is not None:
            raise self.settle_raises

    async def release(self, held: HeldPayment, **kwargs: Any) -> None:
        self.calls.append(("release", kwargs))


def held_payment(valid_before: int) -> HeldPayment:
    return HeldPayment("c" * 32, PAY_TO, "eip155:84532", {}, {}, valid_before)


NOW = 1_000_000


def hook(paywall: FakePaywall) -> JobPayments:
    return JobPayments(paywall, None, release_before_expiry_seconds=15.0, clock=lambda: NOW)  # type: ignore[arg-type]


async def decide(job: JobRecord, seconds_left: float) -> list[tuple[str, dict[str, Any]]]:
    paywall = FakePaywall()
    await hook(paywall)._decide(job, held_payment(int(NOW + seconds_left)))
    return paywall.calls


def after_failed_run(job: JobRecord, exc: BaseException) -> JobRecord:
    """The job as the worker leaves it after a hook run that raised `exc` (worker._settle, defer_final)."""
    return replace(job, final_attempts=job.final_attempts + 1, final_error=f"{type(exc).__name__}: {exc}")


def unreachable(*, maybe_delivered: bool) -> FacilitatorUnavailable:
    exc = FacilitatorUnavailable()
    exc.failures.append("http://fac/settle: cannot connect" if not maybe_delivered else "timed out")
    exc.maybe_delivered = maybe_delivered
    return exc


async def test_a_completed_job_in_time_settles_and_one_that_did_not_complete_is_released() -> None:
    [(what, kwargs)] = await decide(record(status=JobStatus.COMPLETED), 600)
    assert what == "settle" and kwargs["release_unsent"] is False
    [(what, kwargs)] = await decide(record(status=JobStatus.FAILED, failure_code="provider_error"), 600)
    assert what == "release" and kwargs["reason"] == "job_failed"
    # Completed too late for a settlement to land, on the hook's first try: released, nothing was ever sent.
    [(what, kwargs)] = await decide(record(status=JobStatus.COMPLETED), 10)
    assert what == "release" and kwargs["reason"] == "authorization_expiring"


@pytest.mark.parametrize(
    "job",
    [
        # Settle-on-accept: the settle went out with the 202 and its outcome was never recorded.
        record(status=JobStatus.CANCELED, settlement_status="settling"),
        # A completed job whose earlier hook run may have sent a settle before it failed or timed out.
        record(status=JobStatus.COMPLETED, final_attempts=2, final_error="TimeoutError: "),
        record(status=JobStatus.COMPLETED, final_attempts=1, final_error="SettleUnresolved: job x: lost"),
    ],
    ids=["settle-on-accept", "completed-after-a-timed-out-hook", "completed-after-an-unresolved-settle"],
)
async def test_a_payment_whose_settle_may_have_gone_out_is_left_to_the_reconciler(job: JobRecord) -> None:
    assert settle_may_have_gone_out(job)
    # Neither released nor settled by the hook, before the authorization expired or long after: the
    # reconciler asks the facilitator once it has expired, and the hook copies what it recorded.
    for seconds_left in (10, -EXPIRY_MARGIN_SECONDS - 1, -86_400):
        with pytest.raises(SettleUnresolved):
            await decide(job, seconds_left)
    assert not settle_may_have_gone_out(record(status=JobStatus.CANCELED, settlement_status="held"))


async def test_a_settle_that_certainly_never_went_out_does_not_hold_the_payment_until_expiry() -> None:
    completed = record(status=JobStatus.COMPLETED)
    paywall = FakePaywall(settle_raises=unreachable(maybe_delivered=False))
    with pytest.raises(SettleNotSent) as failed:
        await hook(paywall)._decide(completed, held_payment(NOW + 600))
    retried = after_failed_run(completed, failed.value)
    assert not settle_may_have_gone_out(retried)
    # Still in time: settled again. Too late by now: released at once, not kept until expiry.
    [(what, _)] = await decide(retried, 600)
    assert what == "settle"
    [(what, kwargs)] = await decide(retried, 10)
    assert what == "release" and kwargs["reason"] == "authorization_expiring"
    # A failure before any settle call (reading the payment) sent nothing either.
    assert not settle_may_have_gone_out(after_failed_run(retried, SettleNotSent("job x: OSError: down")))


@pytest.mark.parametrize(
    "error",
    [
        unreachable(maybe_delivered=True),  # defensive: the paywall records such a settle as pending
        FacilitatorBadResponse("http://fac answered with an invalid SettleResponse"),
        StorageUnavailable("the answer could not be recorded"),
        RuntimeError("anything else"),
    ],
    ids=["maybe-delivered", "bad-response", "answer-not-recorded", "unknown"],
)
async def test_a_settle_that_may_have_gone_out_is_counted_and_stays_counted(error: Exception) -> None:
    completed = record(status=JobStatus.COMPLETED)
    with pytest.raises(SettleUnresolved) as failed:
        await hook(FakePaywall(settle_raises=error))._decide(completed, held_payment(NOW + 600))
    retried = after_failed_run(completed, failed.value)
    assert settle_may_have_gone_out(retried)
    # A later run that certainly reaches no facilitator does not clear it: the earlier settle may land.
    with pytest.raises(SettleUnresolved) as again:
        await hook(FakePaywall(settle_raises=unreachable(maybe_delivered=False)))._decide(
            retried, held_payment(NOW + 600)
        )
    assert settle_may_have_gone_out(after_failed_run(retried, again.value))
    with pytest.raises(SettleUnresolved):
        await decide(retried, 10)


class BrokenStore:
    async def get_with_payment(self, challenge_id: str) -> None:
        raise OSError("connection refused")


async def test_a_run_that_fails_before_any_settle_keeps_what_earlier_runs_recorded() -> None:
    paywall = FakePaywall()
    paywall.store = BrokenStore()  # type: ignore[attr-defined]
    clean = record(status=JobStatus.COMPLETED, final_attempts=1, final_error="SettleNotSent: job x: down")
    with pytest.raises(SettleNotSent, match="OSError: connection refused"):
        await hook(paywall).on_final(clean)
    counted = record(status=JobStatus.COMPLETED, final_attempts=1, final_error="TimeoutError: ")
    with pytest.raises(SettleUnresolved, match="OSError: connection refused"):
        await hook(paywall).on_final(counted)
    assert paywall.calls == []
