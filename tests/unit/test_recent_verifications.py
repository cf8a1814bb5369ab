"""facilitator/settlement/recent.py: a settle may reuse a /verify of the identical payload, once, briefly."""

from __future__ import annotations

import time
from typing import Any, cast

from facilitator.exact_evm.verifier import VerifiedPayment
from facilitator.settlement.recent import RecentVerifications


def verified(tag: str) -> VerifiedPayment:
    return cast(VerifiedPayment, tag)  # the cache never looks inside


def test_taken_once_while_fresh() -> None:
    recent = RecentVerifications(5.0)
    recent.put("a", verified("A"))
    assert cast(Any, recent.take("a")) == "A"
    assert recent.take("a") is None  # used up: a second settle verifies for itself


def test_stale_entries_are_not_reused(monkeypatch: Any) -> None:
    recent = RecentVerifications(2.0)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now)
    recent.put("a", verified("A"))
    monkeypatch.setattr(time, "monotonic", lambda: now + 2.5)
    assert recent.take("a") is None


def test_bounded_and_off_at_zero() -> None:
    recent = RecentVerifications(5.0, max_entries=2)
    for key in "abc":
        recent.put(key, verified(key.upper()))
    assert recent.take("a") is None  # the oldest made room
    assert cast(Any, recent.take("c")) == "C"
    off = RecentVerifications(0.0)
    off.put("a", verified("A"))
    assert off.take("a") is None
