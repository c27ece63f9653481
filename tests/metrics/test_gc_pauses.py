"""`tonewall_gc_pause_seconds`: the collector's passes timed by generation."""

from __future__ import annotations

import gc

from gateway.metrics import GcPauseMonitor


def test_each_collection_is_timed_under_its_generation_and_stop_detaches():
    monitor = GcPauseMonitor()
    monitor.start()
    monitor.start()  # idempotent: one callback
    try:
        assert gc.callbacks.count(monitor._callback) == 1
        gc.collect(2)
        gc.collect(0)
        assert monitor.histograms["2"].count >= 1
        assert monitor.histograms["0"].count >= 1
        assert monitor.histograms["2"].sum_s > 0.0
    finally:
        monitor.stop()
    assert monitor._callback not in gc.callbacks
    before = monitor.histograms["2"].count
    gc.collect(2)
    assert monitor.histograms["2"].count == before
