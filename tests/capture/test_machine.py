"""The card-entry machine: transitions, '#' absorption, '*', timeouts on a fake clock, limits, wiping."""

from __future__ import annotations

import datetime

import pytest

from gateway.capture.card import Brand
from gateway.capture.machine import (
    CardEntry,
    CardEntryConfig,
    CardEntryError,
    DigitEntered,
    EntryCompleted,
    EntryFailed,
    FeedbackRequested,
    Field,
    FieldCleared,
    FieldCompleted,
    FieldListError,
    FieldRejected,
    FieldStarted,
    State,
    parse_fields,
)
from tests.capture.cards import flip_last

TODAY = datetime.date(2025, 6, 15)
VISA = "4111111111111111"
MC = "5555555555554444"
AMEX = "378282246310005"


def machine(**kw) -> CardEntry:
    return CardEntry(CardEntryConfig(**kw), TODAY, now=0.0)


def feed(entry: CardEntry, keys: str, now: float = 0.0) -> list:
    events: list = []
    for key in keys:
        events += entry.handle_key(key, now)
    return events


def kinds(events, cls):
    return [e for e in events if isinstance(e, cls)]


def test_first_field_started():
    assert machine().initial_events() == [FieldStarted(Field.PAN, 1)]


def test_happy_path_with_hashes():
    entry = machine()
    events = feed(entry, VISA + "#1230#123#")
    done = kinds(events, EntryCompleted)
    assert len(done) == 1 and entry.state is State.COMPLETED
    card = done[0].card
    assert card.brand is Brand.VISA and card.last4 == "1111" and card.expiry() == (12, 2030)
    assert kinds(events, FieldCompleted)[0] == FieldCompleted(Field.PAN, Brand.VISA, "1111")
    assert [e.kind for e in kinds(events, FeedbackRequested)] == ["accepted", "accepted", "complete"]
    assert entry.get_timer() is None
    card.wipe()


def test_digit_events_carry_counts_not_digits():
    entry = machine()
    events = feed(entry, "4111")
    assert kinds(events, DigitEntered) == [DigitEntered(Field.PAN, i, Brand.VISA) for i in range(1, 5)]
    for event in events:
        assert "4111" not in repr(event)


def test_auto_complete_then_hash_absorbed():
    entry = machine()
    events = feed(entry, MC)  # Mastercard is complete at 16
    assert FieldCompleted(Field.PAN, Brand.MASTERCARD, "4444") in events
    assert entry.state is State.JUST_COMPLETED and entry.field is Field.EXPIRY
    assert feed(entry, "#") == []
    assert entry.state is State.ENTERING and entry.field is Field.EXPIRY
    # a second '#' is an empty field, not absorbed
    second = feed(entry, "#")
    assert second[0] == FieldRejected(Field.EXPIRY, "empty", 3)


def test_auto_complete_without_hash_continues():
    entry = machine()
    events = feed(entry, MC + "1230" + "123")
    assert len(kinds(events, EntryCompleted)) == 1


def test_amex_cvv_is_four_digits():
    entry = machine()
    events = feed(entry, AMEX + "1230" + "1234")
    assert len(kinds(events, EntryCompleted)) == 1
    assert len(kinds(events, EntryCompleted)[0].card.cvv_digits) == 4


def test_hash_after_last_field_ignored():
    entry = machine()
    feed(entry, MC + "1230" + "123")
    assert feed(entry, "#") == [] and entry.state is State.COMPLETED


def test_star_clears_field_and_counts_attempt():
    entry = machine()
    events = feed(entry, "4111*")
    assert events[-3:] == [FieldCleared(Field.PAN, 2), FeedbackRequested("reenter"), FieldStarted(Field.PAN, 2)]
    events = feed(entry, VISA + "#")
    assert FieldCompleted(Field.PAN, Brand.VISA, "1111") in events


def test_star_on_empty_field_does_nothing():
    entry = machine()
    assert feed(entry, "*") == []


def test_star_right_after_auto_complete_is_harmless():
    entry = machine()
    feed(entry, MC)
    assert feed(entry, "*") == [] and entry.field is Field.EXPIRY


def test_luhn_failure_reentry_then_success():
    entry = machine()
    events = feed(entry, flip_last(VISA) + "#")
    assert FieldRejected(Field.PAN, "luhn", 2) in events
    assert FeedbackRequested("reenter") in events
    assert feed(entry, VISA + "#")[-1] == FieldStarted(Field.EXPIRY, 1)


def test_reentry_limit_fails_entry():
    entry = machine(max_attempts=2)
    feed(entry, "1234#")
    events = feed(entry, "1234#")
    assert events[-3:] == [FieldRejected(Field.PAN, "unknown_brand", 0), FeedbackRequested("error"),
                           EntryFailed("too_many_attempts")]
    assert entry.state is State.FAILED and feed(entry, "4") == []


@pytest.mark.parametrize("expiry, reason", [("0525", "expired"), ("1330", "bad_month"), ("123#", "bad_length")])
def test_expiry_rejections(expiry, reason):
    entry = machine()
    feed(entry, VISA + "#")
    events = feed(entry, expiry if expiry.endswith("#") else expiry)
    assert FieldRejected(Field.EXPIRY, reason, 2) in events


def test_wrong_cvv_length_rejected():
    entry = machine()
    feed(entry, VISA + "#1230#")
    assert FieldRejected(Field.CVV, "bad_length", 2) in feed(entry, "12#")


def test_postcode_field():
    entry = machine(fields=parse_fields(["pan", "expiry", "cvv", "postcode"]))
    events = feed(entry, VISA + "#1230#123#12345#")
    card = kinds(events, EntryCompleted)[0].card
    assert len(card.postcode_digits) == 5


def test_pan_only():
    entry = machine(fields=parse_fields(["pan"]))
    events = feed(entry, VISA + "#")
    assert kinds(events, EntryCompleted)[0].card.expiry() is None


def test_unknown_brand_at_max_length_rejected():
    entry = machine()
    events = feed(entry, "9" * 19)
    assert FieldRejected(Field.PAN, "unknown_brand", 2) in events


def test_inter_digit_timeout_rejects_field():
    entry = machine(inter_digit_timeout_s=5.0, first_digit_timeout_s=20.0, total_timeout_s=100.0)
    feed(entry, "4111", now=1.0)
    assert entry.get_timer() == 6.0
    assert entry.handle_timer(5.9) == []
    events = entry.handle_timer(entry.get_timer())
    assert events[0] == FieldRejected(Field.PAN, "timeout", 2)
    assert entry.get_timer() == 26.0


def test_first_digit_timeout_then_attempts_run_out():
    entry = machine(first_digit_timeout_s=20.0, total_timeout_s=1000.0, max_attempts=2)
    entry.handle_timer(entry.get_timer())
    events = entry.handle_timer(entry.get_timer())
    assert events[-1] == EntryFailed("too_many_attempts")
    assert entry.get_timer() is None


def test_total_timeout_fails_and_wipes():
    entry = machine(inter_digit_timeout_s=5.0, total_timeout_s=12.0)
    buffers = dict(entry._buffers)
    now = 0.0
    for key in VISA[:10]:
        now += 1.0
        entry.handle_key(key, now)
    assert entry.get_timer() == 12.0
    assert entry.handle_timer(12.0)[-1] == EntryFailed("timeout")
    assert all(len(b) == 0 and not any(b._buf) for b in buffers.values())


def test_abort_wipes_every_field():
    entry = machine()
    buffers = dict(entry._buffers)
    feed(entry, VISA + "#1230#12")
    assert entry.abort("hangup") == [FeedbackRequested("error"), EntryFailed("hangup")]
    assert all(not any(b._buf) for b in buffers.values())
    assert entry.abort("again") == []


def test_rejection_wipes_field():
    entry = machine()
    buf = entry._buffers[Field.PAN]
    feed(entry, flip_last(VISA) + "#")
    assert not any(buf._buf)


def test_completion_hands_over_card_and_keeps_nothing():
    entry = machine()
    card = kinds(feed(entry, VISA + "#1230#123#"), EntryCompleted)[0].card
    assert entry._buffers == {}
    assert "1111111" not in repr(card)
    card.wipe()
    assert card.wiped


def test_letters_ignored_and_junk_refused():
    entry = machine()
    assert feed(entry, "A") == []
    with pytest.raises(CardEntryError):
        entry.handle_key("x", 0.0)


@pytest.mark.parametrize(
    "names, message",
    [(["expiry"], "capture fields must include pan"), (["pan", "pan"], "capture field repeated"),
     (["cvv", "pan"], "capture fields out of order"), (["pan", "pin"], "unknown capture field")],
)
def test_field_lists(names, message):
    with pytest.raises(FieldListError, match=message):
        parse_fields(names)


def test_event_reprs_hold_no_digit_run():
    entry = machine()
    events = feed(entry, VISA + "#1230#123#")
    text = " ".join(repr(e) for e in events)
    assert "4111111" not in text and "111111" not in text
    kinds(events, EntryCompleted)[0].card.wipe()
