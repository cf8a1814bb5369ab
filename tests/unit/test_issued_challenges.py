"""The in-memory challenges a process issued: bounded, each handed out once, read as of the time asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from resource_server.challenges.issued import IssuedChallenges
from resource_server.challenges.records import Challenge
from resource_server.challenges.states import ChallengeStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def challenge(challenge_id: str, ttl: float = 60.0) -> Challenge:
    return Challenge(
        id=challenge_id,
        route="GET /weather",
        resource="http://test/weather",
        params={},
        params_hash="h",
        price={},
        requirements=[],
        requirements_v1=[],
        status=ChallengeStatus.ISSUED,
        issued_at=T0,
        expires_at=T0 + timedelta(seconds=ttl),
        now=T0,
    )


def test_take_hands_a_challenge_out_once_as_of_the_time_asked():
    issued = IssuedChallenges()
    issued.add(challenge("a", ttl=60))
    later = T0 + timedelta(seconds=61)
    taken = issued.take("a", now=later)
    assert taken is not None and taken.now == later and taken.expired
    assert issued.take("a", now=later) is None
    assert issued.take("never", now=later) is None


def test_the_oldest_go_first_beyond_the_bound():
    issued = IssuedChallenges(max_entries=2)
    for name in "abc":
        issued.add(challenge(name))
    assert len(issued) == 2
    assert issued.take("a", now=T0) is None
    assert issued.take("b", now=T0) is not None and issued.take("c", now=T0) is not None


def test_a_zero_bound_keeps_nothing_and_a_negative_one_is_refused():
    issued = IssuedChallenges(max_entries=0)
    issued.add(challenge("a"))
    assert len(issued) == 0 and issued.take("a", now=T0) is None
    with pytest.raises(ValueError):
        IssuedChallenges(max_entries=-1)
