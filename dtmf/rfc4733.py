"""RFC 4733 telephone-event payloads and a receiver that reports each digit once.

The receiver is sans-IO: the edge feeds each telephone-event packet's SSRC, RTP
timestamp, marker bit and payload with `now` (loop seconds), calls
`handle_timer(now)` when `get_timer()` is due, and drains the returned events.
Safe state: a digit that is on stays on until an end packet, a new event on the
same SSRC, or the lost-end timeout ends it; it is never reported twice.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from dtmf.tones import DIGITS

MAX_DURATION = 0xFFFF
LOST_END_TIMEOUT_S = 0.3
"""A digit with no packet for this long has lost its end packets (RFC 4733 2.5.2.2 leaves it to us)."""
SEGMENT_MARGIN = 0x0800
"""A new timestamp continues an event whose duration got this close to 0xFFFF (a segment)."""
_RECENT_KEYS = 16


class TelephoneEventParseError(ValueError):
    """A telephone-event payload that is not RFC 4733."""


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 2.3 event payload."""

    event: int
    """0-255; 0-15 are the DTMF keys in `dtmf.tones.DIGITS` order."""
    end: bool
    """E bit: this is (a retransmission of) the event's final packet."""
    volume: int
    """Power level, 0 to -63 dBm0, as a positive number."""
    duration: int
    """Duration so far in RTP timestamp units (16 bits)."""
    reserved: bool = False
    """R bit: senders send 0, receivers ignore it."""

    @property
    def digit(self) -> str | None:
        """The DTMF key, or None for events beyond 15."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse a 4-byte payload (RFC 4733 2.3: event, E|R|volume, duration)."""
        if len(payload) != 4:
            raise TelephoneEventParseError("telephone-event payload must be 4 bytes")
        event, flags, duration = struct.unpack("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration, bool(flags & 0x40))

    def __bytes__(self) -> bytes:
        if not (0 <= self.event <= 255 and 0 <= self.volume <= 63 and 0 <= self.duration <= MAX_DURATION):
            raise ValueError("telephone-event field out of range")
        flags = (0x80 if self.end else 0) | (0x40 if self.reserved else 0) | self.volume
        return struct.pack("!BBH", self.event, flags, self.duration)


def build_event(digit: str, duration: int, end: bool = False, volume: int = 10) -> bytes:
    """Payload for a DTMF key."""
    if len(digit) != 1 or digit.upper() not in DIGITS:
        raise ValueError("not a DTMF key")
    return bytes(TelephoneEvent(DIGITS.index(digit.upper()), end, volume, duration))


@dataclass(frozen=True)
class EventPacket:
    """One telephone-event packet as a sender would send it."""

    timestamp: int
    marker: bool
    payload: bytes
    offset_ts: int
    """When to send it, in RTP units after the event's start."""


def digit_packets(digit: str, start_ts: int, duration_ts: int, update_ts: int = 400,
                  volume: int = 10) -> list[EventPacket]:
    """Packets for one key (RFC 4733 2.5.1): start with M bit, updates every 50 ms, three ends."""
    packets = [EventPacket(start_ts, True, build_event(digit, 0, volume=volume), 0)]
    d = update_ts
    while d < duration_ts:
        packets.append(EventPacket(start_ts, False, build_event(digit, d, volume=volume), d))
        d += update_ts
    for _ in range(3):  # RFC 4733 2.5.1.4: the final packet is sent three times
        packets.append(EventPacket(start_ts, False, build_event(digit, duration_ts, True, volume),
                                   duration_ts))
    return packets


@dataclass(frozen=True)
class TelephoneEventStarted:
    """A new DTMF key began on an SSRC."""

    ssrc: int
    timestamp: int
    """RTP timestamp of the event (its first segment)."""
    digit: str
    volume: int


@dataclass(frozen=True)
class TelephoneEventEnded:
    """A DTMF key ended: an end packet came, or a new event or the timeout ended it."""

    ssrc: int
    timestamp: int
    digit: str
    duration: int
    """Total duration in RTP timestamp units, over all segments."""
    end_seen: bool
    """False when no end packet arrived (lost, or superseded)."""


ReceiverEvent = TelephoneEventStarted | TelephoneEventEnded


@dataclass
class _Current:
    timestamp: int  # of the current segment
    first_timestamp: int
    event: int
    duration: int  # of the current segment
    base_duration: int  # of earlier segments
    last_rx: float
    ended: bool = False


@dataclass
class _Source:
    current: _Current | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=_RECENT_KEYS))


class TelephoneEventReceiver:
    """Reports each DTMF key once per SSRC, keyed on RTP timestamp + event, never on the marker bit."""

    def __init__(self, lost_end_timeout_s: float = LOST_END_TIMEOUT_S) -> None:
        self._timeout_s = lost_end_timeout_s
        self._sources: dict[int, _Source] = {}

    def receive(self, ssrc: int, timestamp: int, marker: bool, payload: bytes,
                now: float) -> list[ReceiverEvent]:
        """Feed one telephone-event packet; the marker bit is ignored (RFC 4733 2.5.2.1: it may be lost)."""
        ev = TelephoneEvent.parse(payload)
        if ev.digit is None:
            return []
        src = self._sources.setdefault(ssrc, _Source())
        key = (timestamp, ev.event)
        cur = src.current
        out: list[ReceiverEvent] = []
        if cur is not None and (cur.timestamp, cur.event) == key:
            if not cur.ended:
                cur.duration = max(cur.duration, ev.duration)
                cur.last_rx = now
                if ev.end:
                    out.append(self._end(ssrc, src, cur, True))
            return out  # RFC 4733 2.5.1.4: end retransmissions and duplicates
        if key in src.recent:
            return out  # a late packet of an event already reported
        if (cur is not None and cur.ended and ev.end and cur.event == ev.event
                and now - cur.last_rx < self._timeout_s):
            return out  # end retransmissions whose timestamp moved (SIPp play_dtmf)
        if cur is not None and not cur.ended and cur.event == ev.event and (
                cur.duration >= MAX_DURATION - SEGMENT_MARGIN or ev.duration > cur.duration):
            # RFC 4733 2.5.1.3: a long event continues in a new segment with a new timestamp.
            # A sender that moves the timestamp mid-event (SIPp play_dtmf) looks the same:
            # the duration keeps growing.
            src.recent.append((cur.timestamp, cur.event))
            if cur.duration >= MAX_DURATION - SEGMENT_MARGIN:
                cur.base_duration += cur.duration
            cur.timestamp, cur.duration, cur.last_rx = timestamp, ev.duration, now
            if ev.end:
                out.append(self._end(ssrc, src, cur, True))
            return out
        if cur is not None and not cur.ended:
            out.append(self._end(ssrc, src, cur, False))  # its end packets were lost
        cur = _Current(timestamp, timestamp, ev.event, ev.duration, 0, now)
        src.current = cur
        out.append(TelephoneEventStarted(ssrc, timestamp, DIGITS[ev.event], ev.volume))
        if ev.end:
            out.append(self._end(ssrc, src, cur, True))
        return out

    def _end(self, ssrc: int, src: _Source, cur: _Current, end_seen: bool) -> TelephoneEventEnded:
        cur.ended = True
        src.recent.append((cur.timestamp, cur.event))
        return TelephoneEventEnded(ssrc, cur.first_timestamp, DIGITS[cur.event],
                                   cur.base_duration + cur.duration, end_seen)

    def get_timer(self) -> float | None:
        """When `handle_timer` should next run (loop seconds), or None."""
        deadlines = [s.current.last_rx + self._timeout_s for s in self._sources.values()
                     if s.current is not None and not s.current.ended]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[ReceiverEvent]:
        """End digits whose packets stopped without an end packet."""
        out: list[ReceiverEvent] = []
        for ssrc, src in self._sources.items():
            cur = src.current
            if cur is not None and not cur.ended and now >= cur.last_rx + self._timeout_s:
                out.append(self._end(ssrc, src, cur, False))
        return out

    def forget(self, ssrc: int) -> None:
        """Drop an SSRC's state (the stream ended)."""
        self._sources.pop(ssrc, None)
