"""GET /metrics on the resource server: free, and its payment metrics move with the requests made."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.facilitator import free_port
from tests.fixtures.resource_server import RunningResourceServer
from tests.integration.test_resource_server import (
    HANDLERS,
    WEATHER_PRICE,
    challenge_of,
    pay_to,
    payer,
    pricing_toml,
    start_rs,
    v2_header,
)

pytestmark = pytest.mark.integration
__all__ = ["pay_to", "payer"]  # fixtures, shared with test_resource_server


@pytest.fixture
async def rs(start_resource_server, facilitator, pay_to):
    # The reconciler's first pass sets the gauge; later passes would race the assertions on it.
    return await start_rs(start_resource_server, facilitator, pay_to, reconcile_interval_seconds=3600.0)


async def scrape(rs: RunningResourceServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await rs.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_payment_metrics_follow_paid_and_refused_requests(dev_chain, rs, payer, pay_to):
    before = await scrape(rs)
    assert value(before, "x402_rs_unsettled_challenges", status="verified") == 0

    v2, _ = challenge_of(await rs.get("/weather"))
    payment = v2_header(payer, v2.accepts[0])
    paid = await rs.get("/weather", headers=payment)
    assert paid.status_code == 200, paid.text
    after_paid = await scrape(rs)
    assert delta(before, after_paid, "x402_rs_challenges_issued_total") == 1
    assert delta(before, after_paid, "x402_rs_payments_total", outcome="verified") == 1
    assert delta(before, after_paid, "x402_rs_settlements_total", outcome="success", reason="") == 1
    verify, settle = {"endpoint": "verify", "outcome": "valid"}, {"endpoint": "settle", "outcome": "success"}
    assert delta(before, after_paid, "x402_rs_facilitator_seconds_count", **verify) == 1
    assert delta(before, after_paid, "x402_rs_facilitator_seconds_count", **settle) == 1
    assert value(after_paid, "x402_rs_facilitator_seconds_sum", **settle) > 0

    # The same payment again: refused before the facilitator is asked, answered with a fresh challenge.
    replay = await rs.get("/weather", headers=payment)
    assert challenge_of(replay)[0].error == "payment_already_used"
    after_replay = await scrape(rs)
    assert delta(after_paid, after_replay, "x402_rs_payments_total", outcome="payment_already_used") == 1
    assert delta(after_paid, after_replay, "x402_rs_payments_total", outcome="verified") == 0
    assert delta(after_paid, after_replay, "x402_rs_challenges_issued_total") == 1
    assert delta(after_paid, after_replay, "x402_rs_facilitator_seconds_count", **verify) == 0

    # A handler failure releases the payment: counted as released, by reason.
    v2, _ = challenge_of(await rs.get("/fail"))
    assert (await rs.get("/fail", headers=v2_header(payer, v2.accepts[0]))).status_code == 500
    after_fail = await scrape(rs)
    released = {"outcome": "released", "reason": "handler_status"}
    assert delta(after_replay, after_fail, "x402_rs_settlements_total", **released) == 1
    assert delta(after_replay, after_fail, "x402_rs_payments_total", outcome="verified") == 1

    # The gauge, refreshed by the reconciler: nothing paid is left unsettled.
    await rs.runtime.reconciler.refresh_gauge()
    gauge = await scrape(rs)
    assert value(gauge, "x402_rs_unsettled_challenges", status="verified") == 0
    assert value(gauge, "x402_rs_unsettled_challenges", status="settlement_pending") == 0
    assert dev_chain.balance_of(pay_to) == WEATHER_PRICE


async def test_metrics_are_free_and_count_an_unreachable_facilitator(start_resource_server, payer, pay_to):
    dead = f"http://127.0.0.1:{free_port()}"
    rs = await start_resource_server(pricing_toml(pay_to), facilitator_urls=[dead], handlers=HANDLERS)
    v2, _ = challenge_of(await rs.get("/weather"))
    assert (await rs.get("/weather", headers=v2_header(payer, v2.accepts[0]))).status_code == 503
    samples = await scrape(rs)  # no payment asked for
    assert value(samples, "x402_rs_facilitator_seconds_count", endpoint="verify", outcome="unavailable") == 1
    assert value(samples, "x402_rs_payments_total", outcome="verified") == 0


async def test_the_gateway_serves_metrics_too(start_resource_server, pay_to):
    gateway = await start_resource_server(
        pricing_toml(pay_to), facilitator_urls=["http://127.0.0.1:9"], upstream="http://127.0.0.1:9"
    )
    assert (await gateway.get("/weather")).status_code == 402
    samples = await scrape(gateway)
    assert value(samples, "x402_rs_challenges_issued_total") == 1


async def test_one_metrics_endpoint_serves_the_generation_metrics_too(fresh_database):
    from tests.integration.test_generation_api import generation_servers, music

    async with generation_servers(fresh_database) as start:
        gen = await start(run_worker=False)
        assert (await gen.post("/generate", json=music(3))).status_code == 402
        response = await gen.get("/metrics")
    assert response.status_code == 200, response.text
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert {
        "x402_rs_challenges_issued",
        "generation_final_hook_failures",
        "generation_jobs_finished",
    } <= families
    assert "x402_rs_challenges_issued_total 1.0" in response.text
