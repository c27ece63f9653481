"""The per-call media relay core: routing, latching, PT remap, SRTP, the DTMF hook.

Sans-IO. The edge (`gateway.transport.rtp`) owns one socket per leg port and feeds
each datagram to `Relay.receive_rtp` / `receive_rtcp` with the leg it arrived on,
sending whatever comes back; after its reads of one event-loop iteration it calls
`flush()` once (via `loop.call_soon`), which runs all caller packets of that
iteration through the DTMF detector (and the masker during a capture) in one
numpy call each.

Caller->agent packets outside a capture are forwarded at once, bit-exact (PT byte
remapped only; SSRC, sequence and timestamp kept) and a copy of the payload goes to
the batch for detection. During a capture the caller's audio is held for one packet
(the masker's look-ahead) and leaves from `flush()`, masked; the caller's RFC 4733
packets are not forwarded and the agent leg's sequence numbers are renumbered so
that the dropped packets leave no gap. Agent->caller packets are relayed untouched.
The safe state of a leg in capture is "hold and mask": a packet whose masked form is
unknown leaves as silence, never as the caller's audio.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dtmf.g711 import ALAW_DECODE, DECODE_TABLES, ENCODE_TABLES, SILENCE_CODES, ULAW_DECODE
from dtmf.rfc4733 import TelephoneEventReceiver, TelephoneEventStarted
from gateway.media.leg import LegMedia, SrtpParams
from gateway.media.rtp import RTP_HEADER, RtcpError, RtpError, parse_rtcp, rtp_payload_bounds
from gateway.media.srtp import SrtpError, SrtpLeg
from gateway.stats import LATENCY_BOUNDS_S, Histogram, LabelledCounter

CALLER_TO_AGENT = 0
AGENT_TO_CALLER = 1
DIRECTION_NAMES = ("caller_to_agent", "agent_to_caller")
PROCESSING_BOUNDS_S: tuple[float, ...] = (1e-6, 2e-6, 5e-6) + LATENCY_BOUNDS_S
"""Per-packet processing buckets, resolving the few microseconds a relayed packet costs."""
MAX_QUEUED_EVENTS = 100_000
"""Undrained events beyond this are discarded oldest-first (memory bound)."""
_SEQ = struct.Struct("!H")
_NO_PT = 255


class CaptureUnavailable(ValueError):
    """A capture cannot be guaranteed on this call (fail closed)."""


class DetectorLike(Protocol):
    def add_stream(self) -> int: ...
    def remove_stream(self, slot: int) -> None: ...
    def process(self, slots: np.ndarray, frames: np.ndarray) -> list[Any]: ...


class MaskerLike(Protocol):
    def add_stream(self) -> int: ...
    def remove_stream(self, slot: int) -> None: ...
    def set_capture(self, slot: int, on: bool) -> None: ...
    def process(self, slots: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class InBandDigitDetected:
    """The detector decided an in-band DTMF digit in the caller's audio."""

    call_id: str
    digit: str
    start_sample: int
    """Stream sample index (8 kHz) where the tone began."""
    decided_sample: int
    """Stream sample index at which the detector decided."""


@dataclass(frozen=True)
class InBandDigitEnded:
    """An in-band digit in the caller's audio ended."""

    call_id: str
    digit: str
    end_sample: int


@dataclass(frozen=True)
class TelephoneEventDetected:
    """The caller began an RFC 4733 DTMF event (reported once, however often it is sent)."""

    call_id: str
    digit: str
    rtp_timestamp: int
    """RTP timestamp identifying the event (RFC 4733 2.5.1.1)."""
    volume: int
    """Power level in -dBm0 (RFC 4733 2.3.4)."""


@dataclass(frozen=True)
class TelephoneEventEnded:
    """The caller's RFC 4733 event ended: end packet seen, superseded, or timed out."""

    call_id: str
    digit: str
    rtp_timestamp: int
    duration_samples: int
    end_seen: bool


@dataclass(frozen=True)
class SourceLatched:
    """Symmetric RTP: a leg now sends to the address its peer's packets come from."""

    call_id: str
    leg: str
    """'caller' or 'agent'."""
    rtcp: bool
    address: tuple[str, int]


class RelayStats:
    """Plain counters read by the metrics exporter at scrape time."""

    __slots__ = ("relayed", "relayed_bytes", "rtcp_relayed", "drops", "processing_counts",
                 "processing_sum_s", "captured", "detector_batches", "hook_s")

    def __init__(self) -> None:
        self.relayed = [0, 0]
        """RTP packets relayed, by direction index."""
        self.relayed_bytes = [0, 0]
        """Bytes received of relayed RTP packets, by direction index."""
        self.rtcp_relayed = [0, 0]
        self.drops = (LabelledCounter(), LabelledCounter())
        """Dropped packets by reason, per direction index."""
        self.processing_counts = [0] * (len(PROCESSING_BOUNDS_S) + 1)
        """Per-packet processing time per PROCESSING_BOUNDS_S bucket (last: +Inf); plain ints
        because a numpy element update costs more than relaying a packet."""
        self.processing_sum_s = 0.0
        self.captured = 0
        """Caller packets that left masked (or were withheld) during a capture."""
        self.detector_batches = 0
        self.hook_s = 0.0
        """Seconds spent in batched detection and masking (measured by the edge)."""

    def packets_total(self) -> dict[tuple[str, str], int]:
        """{(direction, outcome): count} for tonewall_packets_total."""
        out: dict[tuple[str, str], int] = {}
        for d, name in enumerate(DIRECTION_NAMES):
            out[(name, "relayed")] = self.relayed[d]
            out[(name, "dropped")] = sum(self.drops[d].values())
        return out

    def drops_total(self) -> dict[tuple[str, str], int]:
        """{(direction, reason): count}."""
        return {(DIRECTION_NAMES[d], r): n for d in (0, 1) for r, n in self.drops[d].items()}

    def record_processing(self, elapsed_s: float, packets: int) -> None:
        """Record a batch's processing time as `packets` observations of its mean."""
        if packets:
            self.processing_counts[bisect_left(PROCESSING_BOUNDS_S, elapsed_s / packets)] += packets
            self.processing_sum_s += elapsed_s

    @property
    def processing(self) -> Histogram:
        """tonewall_packet_processing_seconds, built at scrape time."""
        hist = Histogram(PROCESSING_BOUNDS_S)
        hist.counts[:] = self.processing_counts
        hist.sum_s = self.processing_sum_s
        return hist


class Leg:
    """One side of a call: the peer's addresses, payload types, SRTP and latch state."""

    __slots__ = (
        "call", "name", "direction", "peer", "media", "srtp", "strict",
        "pt_map", "audio_pt", "te_pt", "inspect", "capturing",
        "rtp_dest", "rtcp_dest", "rtp_src", "rtcp_src", "sdp_rtp", "sdp_rtcp",
        "last_rx_s", "seq_offset", "held", "slot", "mask_slot", "is_alaw",
        "te_receiver", "endpoint",
    )

    def __init__(self, call: RelayCall, name: str, direction: int, strict: bool) -> None:
        self.call = call
        self.name = name
        self.direction = direction
        """Direction index of packets *received* on this leg."""
        self.peer: Leg = self
        self.media: LegMedia | None = None
        self.srtp: SrtpLeg | None = None
        self.strict = strict
        self.pt_map = bytes([_NO_PT]) * 128
        """Incoming PT -> PT on the peer leg; 255 for payload types not negotiated."""
        self.audio_pt = -1
        self.te_pt = -1
        self.inspect = direction == CALLER_TO_AGENT
        self.capturing = False
        self.rtp_dest: tuple[str, int] | None = None
        """Where RTP to this leg's peer goes: the SDP address until latched."""
        self.rtcp_dest: tuple[str, int] | None = None
        self.rtp_src: tuple[str, int] | None = None
        """Latched source of the peer's RTP (None until its first valid packet)."""
        self.rtcp_src: tuple[str, int] | None = None
        self.sdp_rtp: tuple[str, int] | None = None
        self.sdp_rtcp: tuple[str, int] | None = None
        self.last_rx_s: float | None = None
        self.seq_offset = 0
        """Packets withheld from the peer so far; subtracted from outgoing sequence numbers."""
        self.held: tuple[bytes, bytes] | None = None
        """Capture look-ahead: (header, raw payload) of the packet the masker holds."""
        self.slot = -1
        self.mask_slot = -1
        self.is_alaw = False
        self.te_receiver: TelephoneEventReceiver | None = None
        """RFC 4733 de-duplication for the caller's events (created on the first one)."""
        self.endpoint: Any = None
        """Opaque handle for the edge (its socket pair); the core never touches it."""

    def __repr__(self) -> str:
        return f"Leg({self.call.call_id!r}, {self.name!r}, dest={self.rtp_dest!r})"


class RelayCall:
    """Two legs of one call."""

    __slots__ = ("call_id", "caller", "agent")

    def __init__(self, call_id: str, strict: bool) -> None:
        self.call_id = call_id
        self.caller = Leg(self, "caller", CALLER_TO_AGENT, strict)
        self.agent = Leg(self, "agent", AGENT_TO_CALLER, strict)
        self.caller.peer = self.agent
        self.agent.peer = self.caller

    @property
    def last_packet_s(self) -> float | None:
        """Loop time of the last valid packet from either peer (media timeout)."""
        times = [t for t in (self.caller.last_rx_s, self.agent.last_rx_s) if t is not None]
        return max(times) if times else None


class Relay:
    """All calls' media routing in one object; the edge feeds it datagrams."""

    def __init__(self, detector: DetectorLike | None = None, masker: MaskerLike | None = None,
                 strict: bool = False) -> None:
        self.detector = detector
        self.masker = masker
        self.strict = strict
        self.stats = RelayStats()
        self.calls: dict[str, RelayCall] = {}
        self._events: deque[Any] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._slot_legs: dict[int, Leg] = {}
        self._te_legs: set[Leg] = set()
        self.timer_changed = False
        """Set when a telephone-event packet may have moved `get_timer()`; the edge clears it."""
        self._batch_legs: list[Leg] = []
        self._batch_payloads: list[bytes] = []
        self._batch_alaw = False
        self._capture_legs: list[Leg] = []
        self._capture_headers: list[bytes] = []
        self._capture_payloads: list[bytes] = []

    # ---- calls -----------------------------------------------------------------

    def add_call(self, call_id: str) -> RelayCall:
        """Create a call's two legs; they relay nothing until `configure`."""
        if call_id in self.calls:
            raise ValueError("call already has media")
        call = RelayCall(call_id, self.strict)
        if self.detector is not None:
            call.caller.slot = self.detector.add_stream()
            self._slot_legs[call.caller.slot] = call.caller
        self.calls[call_id] = call
        return call

    def remove_call(self, call_id: str) -> None:
        """Forget a call and free its detector and masker slots."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        leg = call.caller
        if leg.slot >= 0 and self.detector is not None:
            self.detector.remove_stream(leg.slot)
            self._slot_legs.pop(leg.slot, None)
        if leg.mask_slot >= 0 and self.masker is not None:
            self.masker.remove_stream(leg.mask_slot)
        leg.slot = leg.mask_slot = -1
        leg.capturing = False
        self._te_legs.discard(leg)
        self._drop_pending(leg)

    def configure(self, call_id: str, caller: LegMedia, agent: LegMedia) -> None:
        """Apply an offer/answer outcome (first negotiation or any re-INVITE)."""
        call = self.calls[call_id]
        if caller.codec != agent.codec:
            raise ValueError("legs negotiated different codecs")
        if caller.codec not in DECODE_TABLES:
            raise ValueError("codec cannot be inspected")
        for leg, media in ((call.caller, caller), (call.agent, agent)):
            _apply_media(leg, media)
        for leg in (call.caller, call.agent):
            table = bytearray([_NO_PT]) * 128
            table[leg.audio_pt] = leg.peer.audio_pt
            if leg.te_pt >= 0 and leg.peer.te_pt >= 0:
                # Issue 3 item 2: the caller may use 101 and the agent 96 for telephone-event.
                table[leg.te_pt] = leg.peer.te_pt
            leg.pt_map = bytes(table)

    def set_capture(self, call_id: str, on: bool) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Switch the caller leg to masking with look-ahead (on) or back to pass-through.

        Turning it off returns the held packet, masked, for the edge to send.
        """
        call = self.calls.get(call_id)
        if call is None:
            raise CaptureUnavailable("call has no media")
        leg = call.caller
        if on:
            if self.masker is None:
                raise CaptureUnavailable("no masker is available")
            if leg.media is None or leg.media.codec not in DECODE_TABLES or leg.media.ptime_ms != 20:
                raise CaptureUnavailable("caller codec cannot be masked")
            if leg.mask_slot < 0:
                leg.mask_slot = self.masker.add_stream()
            # Rows this leg left for detection go first: the detector sees each leg in order.
            sends = self.flush()
            self.masker.set_capture(leg.mask_slot, True)
            leg.capturing = True
            return sends
        if not leg.capturing:
            return []
        # Packets of this iteration still waiting in the batch go out before the switch.
        sends = self.flush()
        last = self.masker.set_capture(leg.mask_slot, False)  # type: ignore[union-attr]
        leg.capturing = False
        held, leg.held = leg.held, None
        if held is not None:
            sent = self._forward_built(leg, held[0] + self._masked_body(leg, held[1], last), 0)
            if sent is not None:
                sends.append(sent)
                self.stats.captured += 1
        return sends

    def next_event(self) -> Any | None:
        """Next relay event (digits, telephone-events, latching), or None."""
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def pending(self) -> bool:
        """True when `flush()` has work: the edge schedules it once per iteration."""
        return bool(self._batch_legs or self._capture_legs)

    # ---- the hot path ----------------------------------------------------------

    def receive_rtp(self, leg: Leg, data: bytes, addr: tuple[str, int], now: float
                    ) -> tuple[bytes, tuple[str, int]] | None:
        """One datagram from `leg`'s peer; returns (bytes, destination) for the other leg."""
        d = leg.direction
        new_source = addr != leg.rtp_src
        if new_source and leg.strict and not _source_allowed(leg.rtp_src, leg.sdp_rtp, addr):
            self.stats.drops[d]["source"] += 1
            return None
        srtp = leg.srtp
        if srtp is not None:
            try:
                data = srtp.unprotect(data)
            except SrtpError as exc:
                self.stats.drops[d][exc.reason] += 1
                return None
        n = len(data)
        if n >= 12 and data[0] == 0x80:
            start, end = 12, n
        else:
            try:
                start, end = rtp_payload_bounds(data)
            except RtpError as exc:
                self.stats.drops[d][exc.reason] += 1
                return None
        b1 = data[1]
        pt = b1 & 0x7F
        out_pt = leg.pt_map[pt]
        if out_pt == _NO_PT:
            self.stats.drops[d]["payload_type"] += 1
            return None
        if new_source:
            self._latch(leg, addr, rtcp=False)
        leg.last_rx_s = now
        if leg.inspect:
            if pt == leg.audio_pt:
                if leg.capturing:
                    self._capture_legs.append(leg)
                    self._capture_headers.append(data[:start])
                    self._capture_payloads.append(data[start:end])
                    self.stats.relayed_bytes[d] += n
                    return None
                if end - start == 160 and leg.slot >= 0:
                    self._batch_legs.append(leg)
                    self._batch_payloads.append(data[start:end])
                    if leg.is_alaw:
                        self._batch_alaw = True
            else:
                if not self._telephone_event(leg, data, start, end, now):
                    self.stats.drops[d]["telephone_event"] += 1
                    return None
                if leg.capturing:
                    # Issue 4 item 1: the caller's RFC 4733 events never reach the agent.
                    leg.seq_offset += 1
                    self.stats.captured += 1
                    return None
        if out_pt != pt:
            data = b"%c%c" % (data[0], (b1 & 0x80) | out_pt) + data[2:]
        if leg.seq_offset:
            data = _renumber(data, leg.seq_offset)
        peer = leg.peer
        dest = peer.rtp_dest
        if dest is None:
            self.stats.drops[d]["no_destination"] += 1
            return None
        if peer.srtp is not None:
            try:
                data = peer.srtp.protect(data)
            except SrtpError as exc:
                self.stats.drops[d][exc.reason] += 1
                return None
        self.stats.relayed[d] += 1
        self.stats.relayed_bytes[d] += n
        return data, dest

    def receive_rtcp(self, leg: Leg, data: bytes, addr: tuple[str, int], now: float
                     ) -> tuple[bytes, tuple[str, int]] | None:
        """One RTCP datagram from `leg`'s peer, relayed to the other leg's RTCP port."""
        d = leg.direction
        new_source = addr != leg.rtcp_src
        if new_source and leg.strict and not _source_allowed(leg.rtcp_src, leg.sdp_rtcp, addr):
            self.stats.drops[d]["source"] += 1
            return None
        if leg.srtp is not None:
            try:
                data = leg.srtp.unprotect_rtcp(data)
            except SrtpError as exc:
                self.stats.drops[d][exc.reason] += 1
                return None
        try:
            parse_rtcp(data)
        except RtcpError as exc:
            self.stats.drops[d][exc.reason] += 1
            return None
        if new_source:
            self._latch(leg, addr, rtcp=True)
        peer = leg.peer
        dest = peer.rtcp_dest
        if dest is None:
            self.stats.drops[d]["no_destination"] += 1
            return None
        if peer.srtp is not None:
            try:
                data = peer.srtp.protect_rtcp(data)
            except SrtpError as exc:
                self.stats.drops[d][exc.reason] += 1
                return None
        self.stats.rtcp_relayed[d] += 1
        return data, dest

    def flush(self, max_detect_rows: int | None = None) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Run this iteration's caller packets through the detector and masker in one call each.

        Returns the held (capture) packets to send: (leg to send from, bytes, destination).
        `max_detect_rows` bounds the pass-through (already forwarded) rows inspected now; the
        rest stay `pending`, so the edge can read sockets in between (a long detector call
        is latency for every packet that arrives during it). A backlog beyond four times the
        bound goes in one call. Capture rows always go now.
        """
        out: list[tuple[Leg, bytes, tuple[str, int]]] = []
        if not self._batch_legs and not self._capture_legs:
            return out
        legs, payloads, alaw = self._batch_legs, self._batch_payloads, self._batch_alaw
        cap_legs, cap_headers, cap_payloads = self._capture_legs, self._capture_headers, self._capture_payloads
        if max_detect_rows is not None and max_detect_rows < len(legs) <= 4 * max_detect_rows:
            # Past 4x the bound the relay is overloaded: one big call is cheapest per row and
            # keeps the backlog (and its memory) from growing.
            self._batch_legs, self._batch_payloads = legs[max_detect_rows:], payloads[max_detect_rows:]
            legs, payloads = legs[:max_detect_rows], payloads[:max_detect_rows]
        else:
            self._batch_legs, self._batch_payloads, self._batch_alaw = [], [], False
        self._capture_legs, self._capture_headers, self._capture_payloads = [], [], []
        cap_of_row = [-1] * len(legs)
        if cap_legs:
            legs, payloads = list(legs), list(payloads)
            for i, p in enumerate(cap_payloads):
                if len(p) == 160:
                    legs.append(cap_legs[i])
                    payloads.append(p)
                    cap_of_row.append(i)
                    alaw = alaw or cap_legs[i].is_alaw
        masked: dict[int, tuple[np.ndarray, bool]] = {}
        if legs and (self.detector is not None or self.masker is not None):
            codes = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(legs), 160)
            if alaw:
                is_alaw = np.fromiter((leg.is_alaw for leg in legs), dtype=bool, count=len(legs))
                frames = np.where(is_alaw[:, None], ALAW_DECODE[codes], ULAW_DECODE[codes])
            else:
                frames = ULAW_DECODE[codes]
            for rows in _rounds(legs):
                self._inspect(legs, rows, frames, cap_of_row, masked)
        for i, leg in enumerate(cap_legs):
            out.extend(self._release_held(leg, cap_headers[i], cap_payloads[i], masked.get(i)))
        return out

    # ---- internals -------------------------------------------------------------

    def _inspect(self, legs: list[Leg], rows: list[int] | None, frames: np.ndarray, cap_of_row: list[int],
                 masked: dict[int, tuple[np.ndarray, bool]]) -> None:
        """One detector call and one masker call over `rows` (each leg at most once)."""
        if rows is not None:
            legs = [legs[j] for j in rows]
            frames = frames[rows]
            cap_of_row = [cap_of_row[j] for j in rows]
        if self.detector is not None:
            slots = np.fromiter((leg.slot for leg in legs), dtype=np.intp, count=len(legs))
            self.stats.detector_batches += 1
            for ev in self.detector.process(slots, frames):
                self._digit_event(ev)
        if self.masker is not None:
            pos = [j for j, c in enumerate(cap_of_row) if c >= 0]
            if pos:
                mslots = np.fromiter((legs[j].mask_slot for j in pos), dtype=np.intp, count=len(pos))
                out, changed = self.masker.process(mslots, frames[pos])
                for r, j in enumerate(pos):
                    masked[cap_of_row[j]] = (out[r], bool(changed[r]))

    def _masked_body(self, leg: Leg, payload: bytes, masked: tuple[np.ndarray, bool] | None) -> bytes:
        """The held payload as the agent may hear it."""
        codec = leg.media.codec if leg.media is not None else "PCMU"
        if masked is None or len(payload) != 160:
            # Safe state: audio whose masked form is unknown leaves as silence.
            return bytes([SILENCE_CODES[codec]]) * len(payload)
        row, changed = masked
        if not changed:
            return payload
        codes = np.frombuffer(payload, dtype=np.uint8)
        same = DECODE_TABLES[codec][codes] == row
        # Unchanged samples keep their exact code (mu-law decode/encode is not the identity).
        return np.where(same, codes, ENCODE_TABLES[codec][row.view(np.uint16)]).astype(np.uint8).tobytes()

    def _release_held(self, leg: Leg, header: bytes, payload: bytes, masked_prev: tuple[np.ndarray, bool] | None
                      ) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Send the held packet (masked) and hold this one in its place."""
        sends = []
        held = leg.held
        if held is not None:
            sent = self._forward_built(leg, held[0] + self._masked_body(leg, held[1], masked_prev), 0)
            if sent is not None:
                sends.append(sent)
            self.stats.captured += 1
        if not leg.capturing:
            # The call left capture or was removed between receive and flush.
            leg.held = None
            return sends
        # Renumbered now: event packets dropped after this one must not shift it.
        header = bytes([header[0] & ~0x20]) + header[1:]
        leg.held = (_renumber(header, leg.seq_offset) if leg.seq_offset else header, payload)
        return sends

    def _forward_built(self, leg: Leg, data: bytes, seq_offset: int
                       ) -> tuple[Leg, bytes, tuple[str, int]] | None:
        """Remap, renumber and protect a caller packet released from the capture path."""
        pt = data[1] & 0x7F
        out_pt = leg.pt_map[pt]
        peer = leg.peer
        if out_pt == _NO_PT or peer.rtp_dest is None:
            self.stats.drops[leg.direction]["no_destination" if out_pt != _NO_PT else "payload_type"] += 1
            return None
        if out_pt != pt:
            data = b"%c%c" % (data[0], (data[1] & 0x80) | out_pt) + data[2:]
        if seq_offset:
            data = _renumber(data, seq_offset)
        if peer.srtp is not None:
            try:
                data = peer.srtp.protect(data)
            except SrtpError as exc:
                self.stats.drops[leg.direction][exc.reason] += 1
                return None
        self.stats.relayed[leg.direction] += 1
        return peer, data, peer.rtp_dest

    def _drop_pending(self, leg: Leg) -> None:
        leg.held = None
        keep = [i for i, x in enumerate(self._capture_legs) if x is not leg]
        self._capture_legs = [self._capture_legs[i] for i in keep]
        self._capture_headers = [self._capture_headers[i] for i in keep]
        self._capture_payloads = [self._capture_payloads[i] for i in keep]
        keep = [i for i, x in enumerate(self._batch_legs) if x is not leg]
        self._batch_legs = [self._batch_legs[i] for i in keep]
        self._batch_payloads = [self._batch_payloads[i] for i in keep]

    def _latch(self, leg: Leg, addr: tuple[str, int], rtcp: bool) -> None:
        # RFC 4961 / symmetric RTP: send to where the peer's packets come from.
        if rtcp:
            leg.rtcp_src = leg.rtcp_dest = addr
        else:
            leg.rtp_src = leg.rtp_dest = addr
        self._events.append(SourceLatched(leg.call.call_id, leg.name, rtcp, addr))

    def _telephone_event(self, leg: Leg, data: bytes, start: int, end: int, now: float) -> bool:
        """Feed the receiver; False when the payload is malformed (RFC 4733 2.3: 4 octets)."""
        receiver = leg.te_receiver
        if receiver is None:
            receiver = leg.te_receiver = TelephoneEventReceiver()
            self._te_legs.add(leg)
        self.timer_changed = True
        _, b1, _, ts, ssrc = RTP_HEADER.unpack_from(data)
        try:
            events = receiver.receive(ssrc, ts, bool(b1 & 0x80), data[start:end], now)
        except ValueError:
            return False
        self._telephone_events(leg, events)
        return True

    def _telephone_events(self, leg: Leg, events: list[Any]) -> None:
        call_id = leg.call.call_id
        for ev in events:
            if isinstance(ev, TelephoneEventStarted):
                self._events.append(TelephoneEventDetected(call_id, ev.digit, ev.timestamp, ev.volume))
            else:
                self._events.append(TelephoneEventEnded(call_id, ev.digit, ev.timestamp, ev.duration,
                                                        ev.end_seen))

    def get_timer(self) -> float | None:
        """Loop time at which `handle_timer` must run (RFC 4733 events whose end was lost)."""
        times = [t for t in (leg.te_receiver.get_timer() for leg in self._te_legs) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """End telephone-events whose packets stopped without an end packet."""
        for leg in list(self._te_legs):
            self._telephone_events(leg, leg.te_receiver.handle_timer(now))  # type: ignore[union-attr]

    def _digit_event(self, ev: Any) -> None:
        leg = self._slot_legs.get(ev.slot)
        if leg is None:
            return
        decided = getattr(ev, "decided_sample", None)
        if decided is not None:
            self._events.append(InBandDigitDetected(leg.call.call_id, ev.digit, ev.start_sample, decided))
        else:
            self._events.append(InBandDigitEnded(leg.call.call_id, ev.digit, ev.end_sample))


def _apply_media(leg: Leg, media: LegMedia) -> None:
    old = leg.media
    leg.media = media
    leg.audio_pt = media.audio_pt
    leg.te_pt = media.telephone_event_pt if media.telephone_event_pt is not None else -1
    leg.is_alaw = media.codec == "PCMA"
    if old is None or old.srtp != media.srtp:
        leg.srtp = _srtp_leg(media.srtp)
    if old is None or old.remote_rtp != media.remote_rtp:
        # A new SDP address (re-INVITE) restarts latching on that leg.
        leg.sdp_rtp = leg.rtp_dest = media.remote_rtp
        leg.rtp_src = None
    if old is None or old.remote_rtcp != media.remote_rtcp:
        leg.sdp_rtcp = leg.rtcp_dest = media.remote_rtcp
        leg.rtcp_src = None


def _srtp_leg(params: SrtpParams | None) -> SrtpLeg | None:
    return SrtpLeg(params) if params is not None else None


def _source_allowed(latched: tuple[str, int] | None, sdp: tuple[str, int] | None,
                    addr: tuple[str, int]) -> bool:
    """Strict mode: before latching only the SDP host may send; after, only the latched source."""
    if latched is not None:
        return addr == latched
    return sdp is None or addr[0] == sdp[0]


def _rounds(legs: list[Leg]) -> list[list[int] | None]:
    """Row groups with each leg at most once, in arrival order; [None] means all rows."""
    if len(set(legs)) == len(legs):
        return [None]
    seen: dict[Leg, int] = {}
    rounds: list[list[int] | None] = []
    for j, leg in enumerate(legs):
        r = seen.get(leg, 0)
        seen[leg] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(j)  # type: ignore[union-attr]
    return rounds


def _renumber(data: bytes, offset: int) -> bytes:
    seq = (((data[2] << 8) | data[3]) - offset) & 0xFFFF
    return data[:2] + _SEQ.pack(seq) + data[4:]
