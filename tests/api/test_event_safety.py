"""The outgoing guard: no card digit leaves the API in a capture view or progress event."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.server import UnsafeEvent, capture_json, check_event_safe
from tests.api.fakes import FakeView


def test_safe_events_pass() -> None:
    event = {
        "type": "field_completed", "field": "pan", "count": 16, "brand": "visa", "valid": True,
        "last4": "1111", "attempts_left": 2, "capture_id": "cap-7", "at_s": 12.5, "nested": {"field": "cvv"},
    }
    assert check_event_safe(event) is event


@given(pan=st.text(alphabet="0123456789", min_size=1, max_size=19), key=st.sampled_from(["field", "reason", "digits", "type", "value"]))
def test_any_digit_in_text_is_refused(pan: str, key: str) -> None:
    with pytest.raises(UnsafeEvent):
        check_event_safe({key: f"entered {pan}"})
    with pytest.raises(UnsafeEvent):
        check_event_safe({"nested": [{key: pan}]})


@given(st.integers(min_value=1000, max_value=10**19))
def test_large_numbers_are_refused(value: int) -> None:
    with pytest.raises(UnsafeEvent):
        check_event_safe({"count": value})
    with pytest.raises(UnsafeEvent):
        check_event_safe({"count": float(value)})


@pytest.mark.parametrize("last4", ["111", "11111", "41111111", "abcd", "12/3"])
def test_last4_must_be_four_digits(last4: str) -> None:
    with pytest.raises(UnsafeEvent):
        check_event_safe({"last4": last4})


def test_unexpected_types_are_refused() -> None:
    with pytest.raises(UnsafeEvent):
        check_event_safe({"card": b"4111"})


def test_capture_view_with_a_leaky_reason_is_refused() -> None:
    view = FakeView("cap-1", "call-a1", "alice", state="failed", reason="bad pan 4111111111111111")
    with pytest.raises(UnsafeEvent):
        capture_json(view)
    body = capture_json(FakeView("cap-1", "call-a1", "alice", state="tokenized", last4="1111", token="tok_9f8e"))
    assert body["last4"] == "1111" and body["token"] == "tok_9f8e"
