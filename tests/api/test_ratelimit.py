"""Token buckets with an explicit clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.ratelimit import RateLimiter, TokenBucket


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(capacity=3, rate_per_s=2)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a", 0.0) == pytest.approx(0.5)
    assert limiter.check("a", 0.25) == pytest.approx(0.25)
    assert limiter.check("a", 0.5) == 0.0
    assert limiter.check("b", 0.5) == 0.0, "buckets are per key"


def test_time_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(capacity=1, rate_per_s=1, tokens=0, updated_at=10.0)
    assert bucket.take(5.0) > 0
    assert bucket.take(10.5) > 0
    assert bucket.take(11.0) == 0.0


def test_peek_takes_nothing() -> None:
    limiter = RateLimiter(capacity=1, rate_per_s=1)
    assert limiter.peek("a", 0.0) == 0.0
    limiter.check("a", 0.0)
    assert limiter.peek("a", 0.0) == pytest.approx(1.0)
    assert limiter.peek("a", 1.0) == 0.0
    assert limiter.check("a", 1.0) == 0.0


def test_keys_are_bounded() -> None:
    limiter = RateLimiter(capacity=1, rate_per_s=1, max_keys=2)
    for key in "abc":
        limiter.check(key, 0.0)
    assert len(limiter) == 2


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(capacity=0, rate_per_s=1)


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_never_more_than_capacity_plus_refill(gaps: list[float]) -> None:
    limiter = RateLimiter(capacity=5, rate_per_s=4)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.check("k", now) == 0.0
    assert allowed <= 5 + 4 * now + 1e-9
