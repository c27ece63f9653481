"""Plain counters for hot code, read by the metrics exporter at scrape time.

The audio loop must not pay for Prometheus client objects per packet: it bumps
ints and numpy bins here, and `gateway.metrics` turns them into metric families
only when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

import numpy as np

LATENCY_BOUNDS_S: tuple[float, ...] = (
    10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6,
    1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3,
)
"""Buckets that resolve 10 us to 20 ms (per-packet work, look-ahead, loop lag)."""

SLOW_BOUNDS_S: tuple[float, ...] = (
    5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
)
"""Buckets for network round trips (tokenization) and detection latency."""


class Histogram:
    """Fixed-bucket histogram: an int array of counts and a float sum."""

    __slots__ = ("bounds_s", "counts", "sum_s")

    def __init__(self, bounds_s: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        self.bounds_s = bounds_s
        self.counts = np.zeros(len(bounds_s) + 1, dtype=np.int64)  # last bin: +Inf
        self.sum_s = 0.0

    def observe(self, value_s: float) -> None:
        self.counts[bisect_left(self.bounds_s, value_s)] += 1
        self.sum_s += value_s

    def observe_many(self, values_s: np.ndarray) -> None:
        """Observe a batch in one numpy call (the relay's per-batch path)."""
        if len(values_s):
            idx = np.searchsorted(self.bounds_s, values_s, side="left")
            self.counts += np.bincount(idx, minlength=len(self.counts))
            self.sum_s += float(np.sum(values_s))

    def observe_repeated(self, value_s: float, n: int) -> None:
        """Observe the same value n times (every packet of a batch shares its time)."""
        self.counts[bisect_left(self.bounds_s, value_s)] += n
        self.sum_s += value_s * n

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs in Prometheus exposition order."""
        running = np.cumsum(self.counts)
        out = [(repr(float(b)), int(c)) for b, c in zip(self.bounds_s, running[:-1])]
        out.append(("+Inf", int(running[-1])))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (for summaries and reports)."""
        total = self.count
        if total == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.counts), q * total))
        return self.bounds_s[idx] if idx < len(self.bounds_s) else float("inf")


class LabelledCounter(Counter):
    """Counts by a label value (drop reason, method, outcome): `c["bad_version"] += 1`."""
