"""RFC 4733 payloads and the receiver: one digit per key press, whatever the network did."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtmf.rfc4733 import (
    LOST_END_TIMEOUT_S,
    TelephoneEvent,
    TelephoneEventEnded,
    TelephoneEventParseError,
    TelephoneEventReceiver,
    TelephoneEventStarted,
    build_event,
    digit_packets,
)
from dtmf.tones import DIGITS

RATE = 8000


def test_parse_fields_rfc4733_2_3():
    ev = TelephoneEvent.parse(bytes([11, 0x80 | 0x40 | 37, 0x03, 0x20]))
    assert (ev.event, ev.end, ev.reserved, ev.volume, ev.duration, ev.digit) == (11, True, True, 37, 800, "#")


@pytest.mark.parametrize("event", range(16))
def test_round_trip_every_key(event):
    ev = TelephoneEvent(event, event % 2 == 0, event * 4 % 64, event * 4000)
    data = bytes(ev)
    assert TelephoneEvent.parse(data) == ev
    assert bytes(TelephoneEvent.parse(data)) == data
    assert ev.digit == DIGITS[event]
    assert build_event(DIGITS[event], event * 4000, event % 2 == 0, event * 4 % 64) == data


def test_events_beyond_15_parse_but_are_no_digit():
    assert TelephoneEvent.parse(bytes([16, 0, 0, 0])).digit is None


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_wrong_length_has_a_fixed_message(payload):
    with pytest.raises(TelephoneEventParseError, match="^telephone-event payload must be 4 bytes$"):
        TelephoneEvent.parse(payload)


def test_build_rejects_bad_input():
    with pytest.raises(ValueError):
        build_event("x", 0)
    with pytest.raises(ValueError):
        bytes(TelephoneEvent(1, False, 64, 0))
    with pytest.raises(ValueError):
        bytes(TelephoneEvent(1, False, 0, 0x10000))


@given(st.binary(max_size=16))
def test_arbitrary_bytes_raise_only_value_errors(data):
    try:
        TelephoneEvent.parse(data)
    except ValueError:
        pass


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.booleans(), st.binary(max_size=6)),
                max_size=30))
def test_receiver_on_arbitrary_packets_raises_only_value_errors(packets):
    rx = TelephoneEventReceiver()
    now = 0.0
    for ssrc, ts, marker, payload in packets:
        now += 0.02
        try:
            rx.receive(ssrc, ts, marker, payload, now)
        except ValueError:
            pass
        rx.handle_timer(now)


def _send(rx, packets, ssrc=1, t0=0.0, ts_rate=RATE):
    out = []
    for p in packets:
        out += rx.receive(ssrc, p.timestamp, p.marker, p.payload, t0 + p.offset_ts / ts_rate)
    return out


def test_a_digit_with_updates_and_three_ends_is_reported_once():
    rx = TelephoneEventReceiver()
    events = _send(rx, digit_packets("7", 1000, 1200))
    assert events == [TelephoneEventStarted(1, 1000, "7", 10), TelephoneEventEnded(1, 1000, "7", 1200, True)]
    assert rx.get_timer() is None


def test_duplicates_and_reordering_are_one_digit():
    rx = TelephoneEventReceiver()
    pk = digit_packets("3", 5000, 800)
    shuffled = [pk[1], pk[0], pk[1], pk[-1], pk[0], pk[-2], pk[-3], pk[1]]
    events = _send(rx, shuffled)
    assert [type(e) for e in events] == [TelephoneEventStarted, TelephoneEventEnded]


def test_marker_bit_is_not_the_key():
    rx = TelephoneEventReceiver()
    pk = digit_packets("1", 0, 800)
    events = [e for p in pk for e in rx.receive(1, p.timestamp, True, p.payload, 0.0)]  # all marked
    assert [e.digit for e in events if isinstance(e, TelephoneEventStarted)] == ["1"]
    rx2 = TelephoneEventReceiver()
    events = [e for p in pk for e in rx2.receive(1, p.timestamp, False, p.payload, 0.0)]  # start lost M
    assert [e.digit for e in events if isinstance(e, TelephoneEventStarted)] == ["1"]


def test_same_key_twice_is_two_digits():
    rx = TelephoneEventReceiver()
    events = _send(rx, digit_packets("5", 0, 800)) + _send(rx, digit_packets("5", 1600, 800), t0=0.2)
    assert [e.digit for e in events if isinstance(e, TelephoneEventStarted)] == ["5", "5"]


def test_ssrcs_are_separate():
    rx = TelephoneEventReceiver()
    events = _send(rx, digit_packets("5", 0, 800), ssrc=1) + _send(rx, digit_packets("5", 0, 800), ssrc=2)
    assert [(e.ssrc, e.digit) for e in events if isinstance(e, TelephoneEventStarted)] == [(1, "5"), (2, "5")]


def test_lost_end_packets_end_the_digit_by_timeout():
    rx = TelephoneEventReceiver()
    pk = digit_packets("9", 0, 1600)[:-3]
    events = _send(rx, pk)
    assert [type(e) for e in events] == [TelephoneEventStarted]
    deadline = rx.get_timer()
    assert deadline == pytest.approx(pk[-1].offset_ts / RATE + LOST_END_TIMEOUT_S)
    assert rx.handle_timer(deadline - 0.001) == []
    ended = rx.handle_timer(deadline)
    assert ended == [TelephoneEventEnded(1, 0, "9", pk[-1].offset_ts, False)]
    assert rx.get_timer() is None
    # A late end retransmission after the timeout is not a new digit.
    assert rx.receive(1, 0, False, build_event("9", 1600, True), deadline + 0.1) == []


def test_a_new_event_ends_one_whose_end_was_lost():
    rx = TelephoneEventReceiver()
    events = _send(rx, digit_packets("1", 0, 800)[:-3]) + _send(rx, digit_packets("2", 1200, 800), t0=0.15)
    kinds = [(type(e).__name__, e.digit) for e in events]
    assert kinds == [("TelephoneEventStarted", "1"), ("TelephoneEventEnded", "1"),
                     ("TelephoneEventStarted", "2"), ("TelephoneEventEnded", "2")]
    assert events[1].end_seen is False


def test_long_event_segments_are_one_digit_rfc4733_2_5_1_3():
    rx = TelephoneEventReceiver()
    out = []
    now = 0.0
    for d in range(0, 0xFFFF, 400):
        out += rx.receive(1, 0, d == 0, build_event("0", d), now)
        now += 0.05
    out += rx.receive(1, 0, False, build_event("0", 0xFFFF), now)
    for d in range(0, 4001, 400):  # the next segment: a new timestamp, duration restarts
        out += rx.receive(1, 0xFFFF, False, build_event("0", d), now)
        now += 0.05
    for _ in range(3):
        out += rx.receive(1, 0xFFFF, False, build_event("0", 4000, True), now)
    assert [type(e) for e in out] == [TelephoneEventStarted, TelephoneEventEnded]
    assert out[1].duration == 0xFFFF + 4000 and out[1].timestamp == 0


def test_sipp_play_dtmf_timestamps_in_ms_moving_mid_event():
    """PEERS.md: SIPp's play_dtmf advances the RTP timestamp (in ms) within an event."""
    rx = TelephoneEventReceiver()
    out = []
    for i, d in enumerate(range(0, 1600, 160)):
        out += rx.receive(7, 1000 + 20 * i, i == 0, build_event("4", d), i * 0.02)
    for j in range(3):
        out += rx.receive(7, 1200 + 20 * j, False, build_event("4", 1600, True), 0.2 + j * 0.02)
    assert [type(e) for e in out] == [TelephoneEventStarted, TelephoneEventEnded]
    assert out[0].digit == "4"


def test_each_digit_of_a_card_number_once_with_loss_and_duplicates():
    import random
    rnd = random.Random(4733)
    rx = TelephoneEventReceiver()
    number = "4111111111111111#"
    started = []
    now = 0.0
    ts = 0
    for digit in number:
        pk = digit_packets(digit, ts, 800)
        sent = []
        for p in pk:
            if p is not pk[0] and rnd.random() < 0.2:
                continue  # lost
            sent.append(p)
            if rnd.random() < 0.2:
                sent.append(p)  # duplicated
        for p in sent:
            for e in rx.receive(3, p.timestamp, p.marker, p.payload, now + p.offset_ts / RATE):
                if isinstance(e, TelephoneEventStarted):
                    started.append(e.digit)
        now += 0.2
        ts += 1600
        for e in rx.handle_timer(now):
            pass
    assert "".join(started) == number


def test_a_press_seen_only_by_its_start_packet_is_not_merged_with_the_next():
    rx = TelephoneEventReceiver()
    out = rx.receive(1, 0, True, build_event("1", 0), 0.0)
    out += rx.receive(1, 1600, True, build_event("1", 0), 0.2)
    assert [e.digit for e in out if isinstance(e, TelephoneEventStarted)] == ["1", "1"]
