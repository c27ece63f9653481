"""Contract 4: a capture is readable 'for at least an hour after the call ends' (by the clock, not by waiting)."""

from __future__ import annotations

import datetime

import pytest

from gateway.audit import AuditLog
from gateway.capture.machine import CardEntryConfig
from gateway.capture.service import CaptureNotFound, CaptureService
from tests.capture.fakes import Calls, Clock, FakeTokenizer, Masking, key_all, until_ended

CARD_KEYS = "4111111111111111#1230#123#"
HOUR_S = 3600.0


async def _tokenized_capture(tmp_path):
    calls, masking, clock = Calls(), Masking(), Clock()
    calls.add("call-1", agent="alice")
    service = CaptureService(FakeTokenizer(), AuditLog.open(tmp_path, fsync=False), calls, masking, clock=clock,
                             wallclock=lambda: datetime.datetime(2025, 6, 15, 12, 0).timestamp(),
                             entry_config=CardEntryConfig(total_timeout_s=60.0))
    view = await service.start("call-1", ["pan", "expiry", "cvv"], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    await until_ended(service, view.capture_id)
    assert service.get(view.capture_id).state == "tokenized"
    return service, clock, view.capture_id


def _read_after(service: CaptureService, clock: Clock, capture_id: str, seconds: float) -> str:
    """Advance the clock in steps, running every due tick, then read the capture."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + 60.0)
        service.tick(clock.now)
    return service.get(capture_id).state


async def test_readable_an_hour_after_a_call_that_ends_right_after_the_capture(tmp_path):
    service, clock, capture_id = await _tokenized_capture(tmp_path)
    service.on_call_ended("call-1")
    assert _read_after(service, clock, capture_id, HOUR_S - 1) == "tokenized"



async def test_readable_an_hour_after_the_call_ends_when_the_call_went_on_for_hours(tmp_path):
    service, clock, capture_id = await _tokenized_capture(tmp_path)
    _read_after(service, clock, capture_id, 2 * HOUR_S)  # the caller and agent keep talking
    service.on_call_ended("call-1")
    assert _read_after(service, clock, capture_id, HOUR_S - 1) == "tokenized"


async def test_pruned_once_the_hour_after_the_call_has_passed(tmp_path):
    service, clock, capture_id = await _tokenized_capture(tmp_path)
    service.on_call_ended("call-1")
    with pytest.raises(CaptureNotFound):
        _read_after(service, clock, capture_id, HOUR_S + 120)
