"""Relay events name caller keys, which may be card digits: their reprs (and so tracebacks) never show them."""

from __future__ import annotations

from gateway.media.relay import InBandDigitDetected, InBandDigitEnded, TelephoneEventDetected, TelephoneEventEnded


def test_no_key_in_any_event_repr():
    events = [InBandDigitDetected("call-1", "7", 160, 480), InBandDigitEnded("call-1", "7", 960),
              TelephoneEventDetected("call-1", "7", 1000, 10), TelephoneEventEnded("call-1", "7", 1000, 800, True)]
    for event in events:
        assert event.digit == "7"
        assert "'7'" not in repr(event) and "digit" not in repr(event)
