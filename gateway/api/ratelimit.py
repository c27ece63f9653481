"""Per-identity token buckets, sans-IO: the caller passes `now` (float seconds, loop clock)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Holds up to `capacity` requests, refilled at `rate_per_s`."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated_at: float

    def refill(self, now: float) -> None:
        elapsed_s = max(0.0, now - self.updated_at)
        self.tokens = min(self.capacity, self.tokens + elapsed_s * self.rate_per_s)
        self.updated_at = max(self.updated_at, now)

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 when the request may go ahead, else the seconds until it could."""
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


class RateLimiter:
    """One bucket per key; the least recently used keys are forgotten past `max_keys`.

    A forgotten key comes back with a full bucket, so `max_keys` must exceed the
    number of identities active within one refill period.
    """

    def __init__(self, capacity: float, rate_per_s: float, max_keys: int = 10_000) -> None:
        if capacity < 1 or rate_per_s <= 0 or max_keys < 1:
            raise ValueError("invalid rate limit")
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take from `key`'s bucket: 0.0 if allowed, else retry-after seconds."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.capacity, self.rate_per_s, self.capacity, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def peek(self, key: str, now: float) -> float:
        """Retry-after seconds if `key` is out of tokens now, else 0.0; takes nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        bucket.refill(now)
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / bucket.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)
