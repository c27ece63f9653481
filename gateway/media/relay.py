"""The per-call media relay core: routing, latching, PT remap, SRTP, the DTMF hook, stream metrics.

Sans-IO. The edge (`gateway.transport.rtp`) owns one socket per leg port and feeds
each datagram to `Relay.receive_rtp` / `receive_rtcp` with the leg it arrived on,
sending whatever comes back. When the core sets `wake`, the edge runs
`process_pending(now)` once at the end of that loop iteration; it arms one timer
from `get_timer()` and calls `handle_timer(now)` when it fires.

Caller->agent packets outside a capture are forwarded at once, bit-exact (PT byte
remapped only; SSRC, sequence and timestamp kept) and a copy of the payload joins a
FIFO for the DTMF detector. Since no packet waits for detection, the FIFO is run
through the detector bank in one call when it holds `detect_batch_rows` rows or its
oldest row is `detect_window_s` old (the timer): digit decisions come at most that
much later, and the detector's fixed cost per call is shared by many rows. Every
caller packet goes through that one FIFO in arrival order, so each stream reaches the
detector in order whatever its masking mode (a slot appears once per detector call;
repeats go in later "rounds" of the same batch).

Masked legs go through the masker bank once per loop iteration (`process_pending`), or,
with `mask_window_s` > 0, once the oldest waiting row is that old or `mask_batch_rows` wait
(every masked packet then leaves up to the window later, for fewer masker calls):
during a capture the caller's audio is held for one packet (the masker's look-ahead)
and the held packet leaves, masked, when the next one arrives, or at its release deadline
(one packet time after it arrived, plus `HOLD_SLACK_S`; `handle_timer`), whichever comes
first: DESIGN.md allows one packet of look-ahead, no more, so a late successor or a loop-lag
spike never stretches the hold. A packet released by its deadline is masked with the look-ahead
known (`MaskerBank.flush`), and its last block (the 5 ms a tone onset could hide in with its
confirming blocks still unseen) leaves as silence unless it is too quiet to carry a tone; the
late successor is then simply the next held packet (packets stay 1:1, no sample lost or
repeated). Under `mask =
"always"` outside a capture each packet leaves masked in the iteration it arrived
(no look-ahead). The caller's RFC 4733 packets are not forwarded on a masked leg, nor,
once masking ends, the rest of an event that began while it was on (a key held past the
capture: its updates, end packets and later segments), and the agent leg's sequence numbers
are renumbered so the dropped packets leave no gap (per SSRC: events sent under an SSRC of
their own move no other stream's numbers). RTCP follows the renumbering (`translate_rtcp`):
the caller's sender reports leave out the withheld packets and octets, the agent's reports
about the caller's stream get them back.
Agent->caller packets are relayed untouched, except while a caller feedback tone plays
(`play_feedback`): then each agent audio packet's payload is replaced by the tone's next
samples, G.711-encoded for the leg's codec, under the agent's own RTP header (SSRC,
sequence number and timestamp kept, so the caller's stream has no discontinuity). The
tone rides on the agent's packets; while the agent sends no audio (silence suppression,
VAD, mute: nothing from it for `FEEDBACK_IDLE_S`) the relay sends the tone in packets of
its own, from `handle_timer` at the caller leg's packet time, under an SSRC of its own
(RFC 3550 8.2: a new source, so no sequence number of the agent's is taken), and stops
when the tone ends or the agent's packets come back to carry the rest. The safe state
of a masked leg is "hold and mask": a packet whose masked form is unknown leaves as
silence, never as the caller's audio.

Legs that negotiated different G.711 laws (a peer answered the law it was not offered)
have their audio payloads converted code for code by a 256-byte table (`bytes.translate`)
in both directions; the detector and the masker read the caller's law, masked audio is
encoded in the agent's law and feedback tones in the caller's; RFC 4733 payloads are
never converted. Legs on one law pass bit-exact, as before.

Per received stream the core keeps RFC 3550 A.1/A.3 loss and A.8 interarrival jitter at a
few integer operations a packet: a packet with the next sequence number of its stream (the
common case) costs one compare and one store; anything else (gap, late, duplicate, jump,
new SSRC) takes the long way. Jitter is measured on one pair of consecutive packets in
`jitter_every` (`JITTER_EVERY`); `handle_timer` samples both once a second.

Latching (symmetric RTP, RFC 4961): each leg sends to the source its peer's RTP comes from,
so a NATed peer is reached whatever its SDP says. A source is never trusted on one packet
(one forged datagram would hijack the call: audio injected into the payment call, and the
other side's audio sent to the forger, "RTP bleed"):
- before the first latch, a valid packet from the SDP host (any port: a NAT may rewrite it)
  latches at once (after another fork's answer: only from its exact SDP address, so that an
  early fork on the same host cannot keep the latch); so does one from any host when the SDP
  names no usable address. Another
  host must prove itself like a re-latch below (a NAT that rewrote the host too: its first
  `RELATCH_PACKETS` - 1 packets are lost, and the SDP host, should it appear, wins at once);
- once latched, a packet from another source is dropped (`unexpected_source`) until that
  source has sent `RELATCH_PACKETS` consecutive valid packets (no packet from the latched
  source in between), spread over `RELATCH_SPAN_PTIMES` packet times at least (a burst that
  fits between two of the latched source's packets proves nothing), of one SSRC with
  contiguous sequence numbers: the latched stream's SSRC,
  continuing its numbering (a NAT rebinding), or a new SSRC only after the latched source
  has been silent `RELATCH_SILENCE_S` (a restarted client). The last proving packet
  re-latches (`SourceLatched`) and is relayed; the other side's audio never goes to an
  unproven source;
- RTCP follows its RTP leg: it latches only from the RTP source's host (before RTP latched:
  the SDP host), and moves only after RTP has moved;
- strict mode (`media.strict_source`): only the SDP host before the first latch, then only
  the latched source, never re-latched.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import chain, repeat
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dtmf.g711 import ALAW_DECODE, DECODE_TABLES, ENCODE_TABLES, SILENCE_CODES, TRANSCODE_TABLES, ULAW_DECODE
from dtmf.rfc4733 import TelephoneEventReceiver, TelephoneEventStarted
from dtmf.tones import FEEDBACK_TONES, dbm0_to_amplitude, feedback_tone
from gateway.media.leg import Direction, LegMedia, SrtpParams
from gateway.media.rtp import RTP_HEADER, RtcpError, RtpError, parse_rtcp, rtp_payload_bounds, translate_rtcp
from gateway.media.srtp import SrtpError, SrtpLeg
from gateway.stats import LATENCY_BOUNDS_S, Histogram, LabelledCounter

CALLER_TO_AGENT = 0
AGENT_TO_CALLER = 1
DIRECTION_NAMES = ("caller_to_agent", "agent_to_caller")
PROCESSING_BOUNDS_S: tuple[float, ...] = (1e-6, 2e-6, 5e-6) + LATENCY_BOUNDS_S
"""Per-packet processing buckets, resolving the few microseconds a relayed packet costs."""
JITTER_BOUNDS_S: tuple[float, ...] = (
    0.25e-3, 0.5e-3, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 30e-3, 50e-3, 100e-3, 200e-3,
)
"""Interarrival jitter buckets (RFC 3550 A.8), from a LAN's fraction of a ms to a bad path's 200 ms."""
LOOKAHEAD_BOUNDS_S: tuple[float, ...] = (
    1e-3, 5e-3, 10e-3, 15e-3, 19e-3, 20e-3, 20.5e-3, 21e-3, 22e-3, 25e-3, 30e-3, 40e-3, 60e-3, 100e-3,
)
"""Hold-time buckets of released capture packets: one packet time (20 ms) plus what the relay adds."""
LATER_VALUES = 4096
"""Hold times a lazily binned histogram keeps before it bins them (bounded memory)."""
DETECT_WINDOW_S = 0.010
"""Oldest pass-through row's wait before the detector runs: the bound on extra decision delay."""
DETECT_BATCH_ROWS = 256
"""Rows that run the detector at once: bounds one call (and the socket reads it delays) to ~0.4 ms."""
MASK_WINDOW_S = 0.0
"""Oldest masked row's wait before the masker runs (0: every loop iteration). Every masked packet
waits this much longer than its look-ahead; a window shares the masker's fixed cost per call."""
MASK_BATCH_ROWS = 256
"""Masked rows that run the masker at once, whatever the window."""
HOLD_SLACK_S = 0.0005
"""A held packet's release deadline is one packet time after it arrived plus this: room for the
successor's own jitter and the loop timer's millisecond steps, within issue 4's 21 ms."""
RELEASE_BATCH_MIN = 2
"""Held packets due together from this many on are released by `Relay._release_many`."""
TAIL_SAMPLES = 40
"""A deadline-released packet's last block (5 ms): a tone starting there is confirmed only by
blocks of the successor that has not arrived, so it leaves as silence unless quiet."""
TAIL_QUIET_POWER = dbm0_to_amplitude(-50.0) ** 2 / 2.0
"""Mean power (linear^2) under which a tail block passes: 5 dB under the masker's flag floor
(-45 dBm0), no tone onset worth a guess fits in it."""
JITTER_SAMPLE_INTERVAL_S = 1.0
JITTER_EVERY = 16
"""RFC 3550 A.8's D is taken on one pair of consecutive packets (sequence numbers 16k, 16k+1) in
this many: the same D, so the same mean; periodic patterns (every other packet late) still show.
1 in 16, not 8: the pair's float work and the leg's float objects it reads are most of the
RFC 3550 cost a packet at 1,000 calls (loadtests/README-metrics.md)."""
JITTER_PAIR_GAIN = 1.0 / 8
"""Smoothing per sampled pair: A.8's 1/16 per packet remembers ~16 packets (0.3 s); 1/8 per pair
in 16 remembers ~128 (2.6 s) and averages ~15 pairs, so each once-a-second value is as close to
exact A.8 as with 1 in 8 (1/4 per pair would average ~7 and stray ~40 % further)."""
MAX_DROPOUT = 3000
"""RFC 3550 A.1: a forward jump below this is a gap (loss), not a restart."""
MAX_MISORDER = 100
"""RFC 3550 A.1: a backward step below this is a late packet."""
RELATCH_PACKETS = 5
"""Consecutive valid packets (one SSRC, contiguous sequence numbers) that latch a new source."""
RELATCH_SPAN_PTIMES = 2.0
"""...and that span at least this many packet times from the first: longer than the latched
source's gap between packets, so a burst squeezed between two of them cannot prove itself."""
RELATCH_SILENCE_S = 1.5
"""A new source with a new SSRC may take over once the latched source was silent this long."""
UNUSABLE_HOSTS = frozenset({"", "0.0.0.0", "::"})
"""SDP connection addresses that name no peer (RFC 3264 8.4 hold, or no address yet)."""
MAX_QUEUED_EVENTS = 100_000
"""Undrained events beyond this are discarded oldest-first (memory bound)."""
WITHHELD_EVENT_IDS = 32
"""Withheld telephone-event identities remembered per leg: the receiver's recent keys (16), twice."""
WITHHELD_STREAMS = 8
"""SSRCs per leg whose withheld counts are kept (a phone uses one or two)."""
MAX_FEEDBACK_SAMPLES = 16_000
"""Feedback tone samples queued per call at most (2 s at 8 kHz); a request beyond it is dropped."""
FEEDBACK_IDLE_S = 0.06
"""No agent audio for three packet times: the agent is silent (VAD, silence suppression, mute),
and a pending feedback tone leaves in packets of the relay's own."""
DETECT_DEFER = 4
"""A due detector batch waits while datagrams are waiting, up to this many times its rows or window."""
MAX_GAP_ROWS = 5
"""Silence given back to the detector at a talkspurt's start: at most 100 ms (enough to part two
digits; a longer pause changes nothing more)."""
_SILENCE_PAYLOADS = {False: bytes([SILENCE_CODES["PCMU"]]) * 160, True: bytes([SILENCE_CODES["PCMA"]]) * 160}
"""160 codes of silence for the detector, by `Leg.is_alaw`."""
_SEQ = struct.Struct("!H")
_TS_SSRC = struct.Struct("!II")
_NO_PT = 255
_BOTH_DECODE = np.concatenate([ULAW_DECODE, ALAW_DECODE])
"""mu-law codes at 0-255, A-law at 256-511: one lookup decodes a batch of mixed codecs."""
_TAIL_SQUARES = ([int(v) ** 2 for v in ULAW_DECODE], [int(v) ** 2 for v in ALAW_DECODE])
"""Per G.711 code (mu-law, A-law), its decoded sample squared: a tail's power as exact integers."""
_TAIL_SILENCE = (bytes([SILENCE_CODES["PCMU"]]) * TAIL_SAMPLES, bytes([SILENCE_CODES["PCMA"]]) * TAIL_SAMPLES)
"""A deadline-released packet's last block as silence, per law (mu-law, A-law)."""
_ULAW_PAIRS = np.stack([np.tile(ULAW_DECODE, 256), np.repeat(ULAW_DECODE, 256)], axis=1).view(np.int32).ravel()
"""Two mu-law codes read as one little-endian uint16 -> both samples (int16, int16) as one int32:
one lookup per two samples, about half the cost of one per sample."""


class CaptureUnavailable(ValueError):
    """A capture cannot be guaranteed on this call (fail closed)."""


class FeedbackUnavailable(ValueError):
    """A feedback tone cannot be played on this call."""


class DetectorLike(Protocol):
    def add_stream(self) -> int: ...
    def remove_stream(self, slot: int) -> None: ...
    def process(self, slots: np.ndarray, frames: np.ndarray) -> list[Any]: ...


class MaskerLike(Protocol):
    def add_stream(self, mask_always: bool = False) -> int: ...
    def remove_stream(self, slot: int) -> None: ...
    def set_capture(self, slot: int, on: bool) -> Any: ...
    def set_mask_always(self, slot: int, on: bool) -> None: ...
    def process(self, slots: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def flush(self, slot: int) -> tuple[np.ndarray, bool] | None: ...


@dataclass(frozen=True)
class InBandDigitDetected:
    """The detector decided an in-band DTMF digit in the caller's audio."""

    call_id: str
    digit: str = field(repr=False)  # a key may be card data: never in a repr or traceback
    start_sample: int
    """Stream sample index (8 kHz) where the tone began."""
    decided_sample: int
    """Stream sample index at which the detector decided."""


@dataclass(frozen=True)
class InBandDigitEnded:
    """An in-band digit in the caller's audio ended."""

    call_id: str
    digit: str = field(repr=False)  # a key may be card data: never in a repr or traceback
    end_sample: int


@dataclass(frozen=True)
class TelephoneEventDetected:
    """The caller began an RFC 4733 DTMF event (reported once, however often it is sent)."""

    call_id: str
    digit: str = field(repr=False)  # a key may be card data: never in a repr or traceback
    rtp_timestamp: int
    """RTP timestamp identifying the event (RFC 4733 2.5.1.1)."""
    volume: int
    """Power level in -dBm0 (RFC 4733 2.3.4)."""


@dataclass(frozen=True)
class TelephoneEventEnded:
    """The caller's RFC 4733 event ended: end packet seen, superseded, or timed out."""

    call_id: str
    digit: str = field(repr=False)  # a key may be card data: never in a repr or traceback
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


class CountHistogram:
    """Fixed buckets as plain ints: a numpy element update costs more than a hot-path observation."""

    __slots__ = ("bounds_s", "counts", "sum_s", "_later", "_later_n")

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = bounds_s
        self.counts = [0] * (len(bounds_s) + 1)
        self.sum_s = 0.0
        self._later: list[tuple[float, list[float]]] = []
        self._later_n = 0

    def observe(self, value_s: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds_s, value_s)] += n
        self.sum_s += value_s * n

    def observe_since(self, now: float, since: list[float]) -> None:
        """One observation of `now - t` per t: a batch's hold times in one numpy pass."""
        if len(since) < 16:
            for t in since:
                self.observe(now - t)
            return
        values = now - np.array(since)
        counts = np.bincount(np.searchsorted(self.bounds_s, values, side="left"), minlength=len(self.counts))
        for i, c in enumerate(counts.tolist()):
            self.counts[i] += c
        self.sum_s += float(values.sum())

    def observe_since_later(self, now: float, since: list[float]) -> None:
        """`observe_since`, binned at the next `histogram()` or once `LATER_VALUES` wait: one
        numpy pass for many batches (the capture path's few rows per loop iteration)."""
        self._later.append((now, since))
        self._later_n += len(since)
        if self._later_n >= LATER_VALUES:
            self._fold_later()

    def _fold_later(self) -> None:
        later, self._later, self._later_n = self._later, [], 0
        if not later:
            return
        nows = np.repeat(np.array([t for t, _ in later]), [len(s) for _, s in later])
        values = nows - np.fromiter(chain.from_iterable(s for _, s in later), dtype=np.float64, count=len(nows))
        counts = np.bincount(np.searchsorted(self.bounds_s, values, side="left"), minlength=len(self.counts))
        for i, c in enumerate(counts.tolist()):
            self.counts[i] += c
        self.sum_s += float(values.sum())

    def histogram(self) -> Histogram:
        """The exporter's view, built at scrape time."""
        self._fold_later()
        hist = Histogram(self.bounds_s)
        hist.counts[:] = self.counts
        hist.sum_s = self.sum_s
        return hist


class RelayStats:
    """Plain counters read by the metrics exporter at scrape time."""

    __slots__ = ("relayed", "relayed_bytes", "rtcp_relayed", "drops", "processing_hist", "captured",
                 "detector_batches", "detector_rows", "masker_batches", "hook_s", "packets_lost",
                 "jitter", "lookahead", "feedback_packets", "feedback_dropped", "released_at_deadline")

    def __init__(self) -> None:
        self.relayed = [0, 0]
        """RTP packets relayed, by direction index."""
        self.relayed_bytes = [0, 0]
        """Bytes received of relayed RTP packets, by direction index."""
        self.rtcp_relayed = [0, 0]
        self.drops = (LabelledCounter(), LabelledCounter())
        """Dropped packets by reason, per direction index."""
        self.processing_hist = CountHistogram(PROCESSING_BOUNDS_S)
        """Per-packet processing time (receipt to send)."""
        self.captured = 0
        """Caller packets that left masked (or were withheld) on a masked leg."""
        self.detector_batches = 0
        self.detector_rows = 0
        self.masker_batches = 0
        self.hook_s = 0.0
        """Seconds spent in batched detection and masking (measured by the edge)."""
        self.packets_lost = [0, 0]
        """RFC 3550 A.3 expected minus received, by direction index; folded in so it never decreases."""
        self.jitter = Histogram(JITTER_BOUNDS_S)
        """RFC 3550 A.8 interarrival jitter per stream, sampled once a second and at stream end."""
        self.lookahead = CountHistogram(LOOKAHEAD_BOUNDS_S)
        """Receive-to-release time of each packet held for the masker's look-ahead."""
        self.feedback_packets = 0
        """Packets to the caller that carried a feedback tone: agent packets spliced, and the relay's own."""
        self.feedback_dropped = 0
        """Feedback tone requests dropped because the call's queue was full."""
        self.released_at_deadline = 0
        """Held capture packets that left at their deadline (successor late or lost): masked with
        the look-ahead known so far, their last block silenced when loud."""

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

    def packets_lost_total(self) -> dict[tuple[str], int]:
        """{(direction,): count} for tonewall_rtp_packets_lost_total."""
        return {(name,): self.packets_lost[d] for d, name in enumerate(DIRECTION_NAMES)}

    def record_processing(self, elapsed_s: float, packets: int) -> None:
        """Record a batch's processing time as `packets` observations of its mean."""
        if packets:
            self.processing_hist.observe(elapsed_s / packets, packets)

    @property
    def processing(self) -> Histogram:
        """tonewall_packet_processing_seconds, built at scrape time."""
        return self.processing_hist.histogram()

    @property
    def lookahead_seconds(self) -> Histogram:
        """tonewall_masking_lookahead_seconds, built at scrape time."""
        return self.lookahead.histogram()


class Leg:
    """One side of a call: the peer's addresses, payload types, SRTP, latch and stream state."""

    # What `receive_rtp` touches for every packet comes first: slots are laid out in this order,
    # so a packet reads two or three cache lines of its leg, not seven (it shows from ~1,000 calls).
    __slots__ = (
        "direction", "rtp_src", "srtp", "pt_map", "last_rx_s", "rx_next", "audio_pt", "inspect",
        "slot", "masking", "is_alaw", "xlate", "seq_offset", "peer", "rtp_dest", "feedback", "endpoint",
        "rx_ssrc", "rx_pair_seq", "rx_transit", "rx_jitter", "clock_hz", "rx_pairs",
        "call_id", "name", "media", "strict", "te_pt", "capturing", "always",
        "rtcp_dest", "rtcp_src", "sdp_rtp", "sdp_rtcp", "held", "mask_slot",
        "te_receiver", "feedback_pos", "rx_lost", "rx_bad_seq", "rx_lost_reported", "rx_sampled_s",
        "candidate", "rtcp_may_move", "te_withheld_ids", "te_withheld_ssrcs", "withheld", "last_masked_s",
        "fb_next_s", "fb_last_s", "fb_ssrc", "fb_seq", "fb_ts", "last_rtcp_s", "exact_latch", "forks",
    )

    def __init__(self, call_id: str, name: str, direction: int, strict: bool) -> None:
        self.call_id = call_id
        """Its call's id (not the RelayCall: no reference cycle through the call object)."""
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
        self.clock_hz = 8000
        """RTP clock of the audio codec (G.711: 8000)."""
        self.inspect = direction == CALLER_TO_AGENT
        self.capturing = False
        self.always = False
        """Policy mask = "always" on this (caller) leg."""
        self.masking = False
        """capturing or always: audio goes through the masker, telephone-events are withheld."""
        self.rtp_dest: tuple[str, int] | None = None
        """Where RTP to this leg's peer goes: the SDP address until latched."""
        self.rtcp_dest: tuple[str, int] | None = None
        self.rtp_src: tuple[str, int] | None = None
        """Latched source of the peer's RTP (None until its first valid packet)."""
        self.rtcp_src: tuple[str, int] | None = None
        self.sdp_rtp: tuple[str, int] | None = None
        self.sdp_rtcp: tuple[str, int] | None = None
        self.candidate: tuple[tuple[str, int], int, int, int, float | None, float] | None = None
        """A source proving itself before it latches: (address, SSRC, sequence number expected
        next, valid packets so far, `last_rx_s` when it began (the latched source's last packet),
        arrival time of its first packet)."""
        self.rtcp_may_move = False
        """RTP re-latched since RTCP last latched: RTCP may latch anew from the RTP source's host."""
        self.exact_latch = False
        """Another fork answered: until it latches, only its exact SDP address latches at once (the
        early fork on the same host, another port, must prove itself like a re-latch)."""
        self.forks: frozenset[str] | None = None
        """Remote tags of the dialogs (forks) whose answers set this leg's media."""
        self.last_rx_s: float | None = None
        self.last_rtcp_s: float | None = None
        """Arrival of the peer's last valid RTCP: a call on hold (a=inactive) sends only RTCP (RFC 3264
        5.1, RFC 3550 6), and it is not dead media."""
        self.seq_offset = 0
        """Packets of the current stream (`rx_ssrc`) withheld from the peer so far, modulo 2^16;
        subtracted from its outgoing sequence numbers."""
        self.withheld: dict[int, list[int]] = {}
        """SSRC -> [packets, payload octets] withheld from the peer: each stream's renumbering
        offset, and what `translate_rtcp` takes out of its sender reports."""
        self.held: tuple[Leg, bytes, int, float] | None = None
        """Capture look-ahead: the masker row of the packet the masker holds, (this leg, packet as
        it would leave unmasked, payload offset, receive time); its deadline is `_hold_deadline`."""
        self.slot = -1
        self.mask_slot = -1
        self.is_alaw = False
        self.xlate: bytes | None = None
        """Translate table from this leg's G.711 law to the peer leg's; None when the laws are equal."""
        self.te_receiver: TelephoneEventReceiver | None = None
        """RFC 4733 de-duplication for the caller's events (created on the first one)."""
        self.te_withheld_ids: deque[tuple[int, int]] = deque(maxlen=WITHHELD_EVENT_IDS)
        """(SSRC, timestamp) of telephone-events withheld while masking: the rest of each is
        withheld too, whenever it comes (RFC 4733 2.5.1.1: SSRC + timestamp name an event)."""
        self.te_withheld_ssrcs: set[int] = set()
        """SSRCs whose latest event began while masking: its new segments (RFC 4733 2.5.1.3) and
        moved-timestamp end packets, which start no event, are withheld until another event starts."""
        self.last_masked_s: float | None = None
        """Arrival time (the relay's clock) of the last packet the masker changed: see Relay.seconds_since_masked."""
        self.endpoint: Any = None
        """Opaque handle for the edge (its socket pair); the core never touches it."""
        self.feedback: bytes | None = None
        """Agent leg: G.711 codes of the feedback tone still to play to the caller (None: none)."""
        self.feedback_pos = 0
        """Codes of `feedback` already sent."""
        self.fb_next_s: float | None = None
        """Agent leg with a feedback tone pending: when the relay looks at sending its next packet
        itself (the agent silent); None: no tone pending."""
        self.fb_last_s: float | None = None
        """When the relay last sent a feedback packet of its own (its timestamps follow the clock)."""
        start = os.urandom(10)
        self.fb_ssrc = int.from_bytes(start[:4], "big")
        """SSRC, sequence number and timestamp of the relay's own feedback stream (RFC 3550 5.1:
        random starts)."""
        self.fb_seq = int.from_bytes(start[4:6], "big")
        self.fb_ts = int.from_bytes(start[6:], "big")
        # RFC 3550 A.1/A.3/A.8 state of the stream received on this leg (-1: none yet).
        self.rx_ssrc = -1
        self.rx_next = -1
        """Sequence number expected next: the highest received plus one, mod 2^16."""
        self.rx_lost = 0
        """A.3 cumulative lost of the current stream: expected minus received, kept as a running
        count (a gap adds its size, a late or duplicate packet takes one off)."""
        self.rx_bad_seq = -1
        self.rx_transit = 0.0
        """Arrival minus RTP timestamp, in clock units, of the first packet of the current jitter pair."""
        self.rx_pair_seq = -1
        """Sequence number that completes the jitter pair (-1: none open)."""
        self.rx_jitter = 0.0
        """A.8 interarrival jitter in clock units."""
        self.rx_pairs = 0
        """Jitter pairs taken in the current stream, counted up to the warm-up's end only."""
        self.rx_lost_reported = 0
        self.rx_sampled_s: float | None = None
        """`last_rx_s` when the jitter was last sampled (unchanged since: the stream is idle)."""

    def __repr__(self) -> str:
        return f"Leg({self.call_id!r}, {self.name!r}, dest={self.rtp_dest!r})"

    @property
    def jitter_s(self) -> float:
        """RFC 3550 A.8 interarrival jitter of the received stream, in seconds."""
        return self.rx_jitter / self.clock_hz

    @property
    def packets_lost(self) -> int:
        """RFC 3550 A.3 cumulative lost of the current stream (expected - received; may be negative)."""
        return self.rx_lost


class RelayCall:
    """Two legs of one call."""

    __slots__ = ("call_id", "caller", "agent")

    def __init__(self, call_id: str, strict: bool) -> None:
        self.call_id = call_id
        self.caller = Leg(call_id, "caller", CALLER_TO_AGENT, strict)
        self.agent = Leg(call_id, "agent", AGENT_TO_CALLER, strict)
        self.caller.peer = self.agent
        self.agent.peer = self.caller

    @property
    def last_packet_s(self) -> float | None:
        """Loop time of the last valid RTP or RTCP packet from either peer (media timeout)."""
        times = [t for leg in (self.caller, self.agent) for t in (leg.last_rx_s, leg.last_rtcp_s) if t is not None]
        return max(times) if times else None


class Relay:
    """All calls' media routing in one object; the edge feeds it datagrams and runs its timer."""

    def __init__(self, detector: DetectorLike | None = None, masker: MaskerLike | None = None,
                 strict: bool = False, detect_window_s: float = DETECT_WINDOW_S,
                 detect_batch_rows: int = DETECT_BATCH_ROWS, mask_window_s: float = MASK_WINDOW_S,
                 mask_batch_rows: int = MASK_BATCH_ROWS, jitter_every: int = JITTER_EVERY) -> None:
        self.detector = detector
        self.masker = masker
        self.strict = strict
        self.detect_window_s = detect_window_s
        self.detect_batch_rows = max(1, detect_batch_rows)
        self.mask_window_s = max(0.0, mask_window_s)
        self.mask_batch_rows = max(1, mask_batch_rows)
        self.stats = RelayStats()
        if jitter_every < 1 or jitter_every & (jitter_every - 1):
            raise ValueError("jitter_every must be a power of two")
        self._jitter_mask = jitter_every - 1
        self._jitter_gain = 1.0 / 16 if jitter_every <= 2 else JITTER_PAIR_GAIN
        """jitter_every 1 or 2: every packet completes a pair, exactly A.8."""
        self._jitter_warmup = 0 if jitter_every <= 2 else round(1.0 / JITTER_PAIR_GAIN)
        """Sampled pairs: the first ones are averaged (gain 1/n), so a new stream's estimate does not
        ramp up from 0 over its first seconds (A.8's own ramp is 16 packets, 0.3 s)."""
        self.calls: dict[str, RelayCall] = {}
        self._events: deque[Any] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._slot_legs: dict[int, Leg] = {}
        self._te_legs: set[Leg] = set()
        self._fb_legs: set[Leg] = set()
        """Agent legs with a feedback tone pending (`Leg.fb_next_s` set)."""
        self.wake = False
        """Set when the edge should run `process_pending` this iteration (and re-check the timer)."""
        self.timer_changed = False
        """Set when `get_timer()` may have moved; the edge clears it."""
        # Detection FIFO: slot and payload (or the whole 172-byte packet, payload at 12) of every
        # inspected caller packet, in arrival order.
        self._det_slots: list[int] = []
        self._det_payloads: list[bytes] = []
        self._det_alaw = False
        self._det_since: float | None = None
        """Receive time of the oldest row in the FIFO."""
        self._det_catchup = False
        """A batch-limited detector call left a full batch: the next ones run even while busy."""
        # Masker rows of this iteration, one tuple each: (leg, packet (renumbered, no padding),
        # payload offset, receive time); the payload is the packet from its offset on.
        self._mask_rows: list[tuple[Leg, bytes, int, float]] = []
        self._mask_plain = True
        """Every waiting row is a 172-byte mu-law packet with its 160-byte payload at 12, received
        no earlier than the masked row before it: the masker's codes are one reshape of the joined
        packets, and the rows' release deadlines follow their order (see `_deadline_fifo`)."""
        self._mask_last_rx = float("-inf")
        """Receive time of the last masked row."""
        self._release_unchanged: Callable[[list, list, list], tuple[int, int, list[Leg] | None]] | None = None
        """The C relay path's per-row step for a masker batch that changed nothing (`accelerate`)."""
        self._mask_since: float | None = None
        """Receive time of the oldest masked row waiting for the masker."""
        self._next_sample_s: float | None = None
        self._holding: dict[Leg, None] = {}
        """Capturing legs with a held packet (each has a release deadline)."""
        self._deadline_fifo: deque[tuple[int, list[tuple[Leg, bytes, int, float]]]] = deque()
        """Release deadlines of held packets from plain masker batches: (tie-break of the first,
        the batch's captured rows), one entry per batch. Their deadlines (arrival + 20 ms) follow
        arrival, so the FIFO is sorted; `_fifo_pos` is the next row of the front batch. An entry
        whose leg holds no packet or one with another deadline is stale and dropped when met."""
        self._fifo_pos = 0
        self._deadlines: list[tuple[float, int, Leg]] = []
        """Heap of (release deadline, tie-break, leg) of the other held packets (odd sizes, A-law,
        padding, out-of-order clock readings), stale entries likewise."""
        self._deadline_n = 0
        """Tie-break: held packets in arrival order, across the FIFO and the heap."""

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
        """Forget a call: its streams' last metrics are taken, its slots freed, pending rows dropped."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        jitters = []
        for leg in (call.caller, call.agent):
            if leg.rx_ssrc >= 0 and leg.last_rx_s != leg.rx_sampled_s:
                jitters.append(leg.jitter_s)
            self._fold_loss(leg)
        if jitters:
            self.stats.jitter.observe_many(np.array(jitters))
        leg = call.caller
        self._drop_pending(leg)
        if leg.slot >= 0 and self.detector is not None:
            self.detector.remove_stream(leg.slot)
            self._slot_legs.pop(leg.slot, None)
        if leg.mask_slot >= 0 and self.masker is not None:
            self.masker.remove_stream(leg.mask_slot)
        leg.slot = leg.mask_slot = -1
        leg.capturing = leg.always = leg.masking = False
        self._te_legs.discard(leg)
        self._fb_legs.discard(call.agent)
        call.agent.feedback, call.agent.fb_next_s = None, None
        # The legs point at each other: unlinked, a removed call is freed by reference counting
        # at once instead of waiting, sockets and all, for a full pass of the cyclic collector
        # (which then walks every such call while the audio loop waits).
        call.caller.peer = call.agent.peer = None  # type: ignore[assignment]

    def configure(self, call_id: str, caller: LegMedia, agent: LegMedia) -> None:
        """Apply an offer/answer outcome (first negotiation or any re-INVITE)."""
        call = self.calls[call_id]
        if caller.codec not in DECODE_TABLES or agent.codec not in DECODE_TABLES:
            raise ValueError("codec cannot be inspected")
        if call.caller.media is not None and call.caller.media.codec != caller.codec:
            call.agent.feedback = None  # encoded for the caller's old codec
        for leg, media in ((call.caller, caller), (call.agent, agent)):
            _apply_media(leg, media)
        # Legs on different G.711 laws: audio payloads are converted by table on the way through.
        call.caller.xlate = TRANSCODE_TABLES.get((caller.codec, agent.codec))
        call.agent.xlate = TRANSCODE_TABLES.get((agent.codec, caller.codec))
        for leg in (call.caller, call.agent):
            table = bytearray([_NO_PT]) * 128
            table[leg.audio_pt] = leg.peer.audio_pt
            if leg.te_pt >= 0 and leg.peer.te_pt >= 0:
                # Issue 3 item 2: the caller may use 101 and the agent 96 for telephone-event.
                table[leg.te_pt] = leg.peer.te_pt
            leg.pt_map = bytes(table)

    def seconds_since_masked(self, call_id: str, now: float) -> float | None:
        """How long ago the masker last changed the caller's audio on this call (None: never, or no media).

        The capture service keeps masking on until this too is older than its quiet time:
        the masker hears tones the strict detector does not accept (weak, twisted, broken),
        so a key the detector saw come up may still be sounding.
        """
        call = self.calls.get(call_id)
        if call is None or call.caller.last_masked_s is None:
            return None
        return now - call.caller.last_masked_s

    def set_capture(self, call_id: str, on: bool, now: float | None = None
                    ) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Switch the caller leg to masking with look-ahead (on) or back to its policy (off).

        Masker rows of this iteration go first, under the mode they arrived in. Turning
        capture off returns the held packet, masked, for the edge to send.
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
            sends = self._run_masker(now)
            if leg.mask_slot < 0:
                leg.mask_slot = self.masker.add_stream()
            self.masker.set_capture(leg.mask_slot, True)
            leg.capturing = leg.masking = True
            return sends
        if not leg.capturing:
            return []
        sends = self._run_masker(now)
        last = self.masker.set_capture(leg.mask_slot, False)  # type: ignore[union-attr]
        leg.capturing = False
        leg.masking = leg.always
        held, leg.held = leg.held, None
        self._holding.pop(leg, None)
        if held is not None:
            _, pkt, start, rx = held
            sent = self._forward_built(leg, pkt[:start] + self._masked_body(leg, pkt[start:], last))
            if sent is not None:
                sends.append(sent)
                if now is not None:
                    self.stats.lookahead.observe(now - rx)
            self.stats.captured += 1
        return sends

    def set_mask_always(self, call_id: str, on: bool, now: float | None = None
                        ) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Policy mask = "always": the caller leg is masked outside captures too, without look-ahead.

        May be set before the call's media is negotiated; raises CaptureUnavailable when
        masking cannot be guaranteed (fail closed: the caller should hang up the call).
        """
        call = self.calls.get(call_id)
        if call is None:
            raise CaptureUnavailable("call has no media")
        leg = call.caller
        if on:
            if self.masker is None:
                raise CaptureUnavailable("no masker is available")
            if leg.media is not None and (leg.media.codec not in DECODE_TABLES or leg.media.ptime_ms != 20):
                raise CaptureUnavailable("caller codec cannot be masked")
        if on == leg.always:
            return []
        sends = self._run_masker(now)
        if leg.mask_slot < 0:
            leg.mask_slot = self.masker.add_stream(mask_always=on)  # type: ignore[union-attr]
        else:
            self.masker.set_mask_always(leg.mask_slot, on)  # type: ignore[union-attr]
        leg.always = on
        leg.masking = on or leg.capturing
        return sends

    def play_feedback(self, call_id: str, kind: str, now: float | None = None) -> None:
        """Queue a feedback tone (`dtmf.tones.FEEDBACK_TONES`) for the caller, after any still playing.

        It replaces the payload of the agent's next audio packets to the caller, or, with `now`
        and the agent silent, leaves in the relay's own packets from `handle_timer`; see the
        module docstring. Raises FeedbackUnavailable for an unknown call, kind or codec.
        """
        if kind not in FEEDBACK_TONES:
            raise FeedbackUnavailable("unknown feedback tone")
        call = self.calls.get(call_id)
        if call is None or call.agent.media is None:
            raise FeedbackUnavailable("call has no media")
        leg = call.agent
        # The tone replaces payloads already converted to the caller's law.
        table = ENCODE_TABLES.get(call.caller.media.codec) if call.caller.media is not None else None
        if table is None:
            raise FeedbackUnavailable("codec cannot carry feedback")
        codes = table[feedback_tone(kind).view(np.uint16)].tobytes()
        left = leg.feedback[leg.feedback_pos:] if leg.feedback is not None else b""
        if len(left) + len(codes) > MAX_FEEDBACK_SAMPLES:
            self.stats.feedback_dropped += 1
            return
        leg.feedback, leg.feedback_pos = left + codes, 0
        if now is not None and leg.fb_next_s is None:
            last = leg.last_rx_s
            leg.fb_next_s = now if last is None else max(now, last + FEEDBACK_IDLE_S)
            self._fb_legs.add(leg)
            self.timer_changed = True

    def next_event(self) -> Any | None:
        """Next relay event (digits, telephone-events, latching), or None."""
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def pending(self) -> bool:
        """True while rows wait for the detector or the masker."""
        return bool(self._det_slots or self._mask_rows)

    @property
    def mask_rows_pending(self) -> int:
        return len(self._mask_rows)

    @property
    def holding(self) -> bool:
        """Some capture packet is held for its look-ahead (its deadline may come due)."""
        return bool(self._holding)

    def deadline_due(self, now: float) -> bool:
        """A held packet's release deadline has passed (`handle_timer(now)` would release it).

        The edge asks at the end of a loop iteration: under load the loop wakes every few tens
        of microseconds, far sooner than its millisecond timer, which fired 0.3 ms late at the
        median and 1 ms at p99 at 500 captured streams."""
        deadline = self._next_deadline()
        return deadline is not None and deadline <= now

    @property
    def detect_rows_pending(self) -> int:
        return len(self._det_slots)

    # ---- the hot path ----------------------------------------------------------

    @property
    def jitter_sampling(self) -> tuple[int, int, float]:
        """(number mask, warm-up pairs, gain) of the sampled RFC 3550 A.8 pairs: the C relay path
        (`gateway.media._fastrelay`) takes the same pairs with the same arithmetic."""
        return self._jitter_mask, self._jitter_warmup, self._jitter_gain

    def accelerate(self, release_unchanged: Callable[[list, list, list], tuple[int, int, list[Leg] | None]]) -> None:
        """Take `_run_masker`'s common row step from the C relay path (`FastRelay.release_unchanged`):
        the same rows held, the same packets out, in the same order; it hands back every row it
        does not take."""
        self._release_unchanged = release_unchanged

    def fifos(self) -> tuple[list[int], list[bytes], list[tuple[Leg, bytes, int, float]]]:
        """The detector FIFO (slots, packets) and the masker rows, for the C relay path to append to.

        `gateway.media._fastrelay` appends exactly what `receive_rtp` would for the packets it
        takes (see `rows_appended`); the lists are replaced whenever a batch runs, so ask each time.
        """
        return self._det_slots, self._det_payloads, self._mask_rows

    def rows_appended(self, now: float, det_before: int, det_alaw: bool, mask_before: int, masked: int) -> None:
        """What `receive_rtp` does when it queues rows, for rows the C path appended at `now`.

        `det_before`/`mask_before`: the FIFOs' lengths before; `masked`: masker rows appended.
        """
        det = self._det_slots
        if len(det) > det_before:
            if not det_before:
                self._det_since = now
                self.timer_changed = self.wake = True
            if len(det) >= self.detect_batch_rows:
                self.wake = True
            if det_alaw:
                self._det_alaw = True
        if masked:
            if not mask_before:
                self._mask_since = now
                if self.mask_window_s:
                    self.timer_changed = True
            if now < self._mask_last_rx:
                self._mask_plain = False
            self._mask_last_rx = now
            self.wake = True

    def receive_rtp(self, leg: Leg, data: bytes, addr: tuple[str, int], now: float
                    ) -> tuple[bytes, tuple[str, int]] | None:
        """One datagram from `leg`'s peer; returns (bytes, destination) for the other leg."""
        d = leg.direction
        new_source = addr != leg.rtp_src
        if new_source and leg.strict and not _source_allowed(leg.rtp_src, leg.sdp_rtp, addr, leg.exact_latch):
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
            if not (leg.strict or self._source_proven(leg, data, addr, now)):
                self.stats.drops[d]["unexpected_source"] += 1
                return None
            self._latch(leg, addr, rtcp=False, now=now)
        prev_rx = leg.last_rx_s
        leg.last_rx_s = now
        # RFC 3550 A.1: the next number of the stream is one compare and one store (expected and
        # received both grow by one: lost is unchanged); the rest goes the long way. A new SSRC
        # whose first number is exactly the one expected is taken as the same stream (1 in 65,536).
        seq = (data[2] << 8) | data[3]
        if seq == leg.rx_next:
            leg.rx_next = (seq + 1) & 0xFFFF
        elif self._sequence_changed(leg, data, seq) and leg.masking and pt == leg.audio_pt:
            # Late, repeated or unconfirmed audio while masking: the masker follows a stream in
            # arrival order, and a tone's tail arriving after the packet behind it would pass as
            # fresh audio.
            self.stats.drops[d]["late"] += 1
            return None
        if (seq & self._jitter_mask) < 2 and pt == leg.audio_pt:
            self._jitter_pair(leg, data, seq, now)
        if leg.inspect:
            if pt == leg.audio_pt:
                if end - start == 160 and leg.slot >= 0:
                    det = self._det_slots
                    if not det:
                        self._det_since = now
                        self.timer_changed = self.wake = True
                    if b1 & 0x80 and prev_rx is not None:
                        self._talkspurt_gap(leg, now - prev_rx)
                    det.append(leg.slot)
                    # The packet itself when it is a bare 12-byte header and 160 bytes of payload
                    # (the common case: no copy per packet); `_run_detector` tells them apart by size.
                    self._det_payloads.append(data if n == 172 else data[start:end])
                    if leg.is_alaw:
                        self._det_alaw = True
                    if len(det) >= self.detect_batch_rows:
                        self.wake = True
                if leg.masking:
                    if data[0] & 0x20 or leg.seq_offset:
                        # The payload leaves without its padding; renumbered now, so event packets
                        # withheld later in this iteration cannot shift it.
                        data = bytes([data[0] & ~0x20]) + _renumber(data[:start], leg.seq_offset)[1:] + data[start:end]
                    rows = self._mask_rows
                    if not rows:
                        self._mask_since = now
                        if self.mask_window_s:
                            self.timer_changed = True
                    rows.append((leg, data, start, now))
                    if start != 12 or end - start != 160 or leg.is_alaw or now < self._mask_last_rx:
                        self._mask_plain = False
                    self._mask_last_rx = now
                    self.wake = True
                    self.stats.relayed_bytes[d] += n
                    return None
                if leg.xlate is not None:
                    data = data[:start] + data[start:end].translate(leg.xlate) + data[end:]
            else:
                started = self._telephone_event(leg, data, start, end, now)
                if started is None:
                    self.stats.drops[d]["telephone_event"] += 1
                    return None
                if leg.masking or leg.te_withheld_ids and self._withheld_event(leg, data, started):
                    # Issue 4 item 1: the caller's RFC 4733 events never reach the agent, nor
                    # does the rest of one that began while masking (a key held past the capture).
                    self._withhold_event(leg, data, started, end - start)
                    self.stats.captured += 1
                    return None
        elif pt == leg.audio_pt:
            if leg.xlate is not None:
                data = data[:start] + data[start:end].translate(leg.xlate) + data[end:]
            if leg.feedback is not None:
                data = self._splice_feedback(leg, data, start, end)
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
        stats = self.stats
        stats.relayed[d] += 1
        stats.relayed_bytes[d] += n
        return data, dest

    def receive_rtcp(self, leg: Leg, data: bytes, addr: tuple[str, int], now: float
                     ) -> tuple[bytes, tuple[str, int]] | None:
        """One RTCP datagram from `leg`'s peer, relayed to the other leg's RTCP port."""
        d = leg.direction
        new_source = addr != leg.rtcp_src
        if new_source:
            if leg.strict:
                if not _source_allowed(leg.rtcp_src, leg.sdp_rtcp, addr, leg.exact_latch):
                    self.stats.drops[d]["source"] += 1
                    return None
            elif not _rtcp_source_allowed(leg, addr):
                self.stats.drops[d]["unexpected_source"] += 1
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
            self._latch(leg, addr, rtcp=True, now=now)
        leg.last_rtcp_s = now
        peer = leg.peer
        if leg.withheld or peer.withheld:
            data = translate_rtcp(data, leg.withheld, peer.withheld)
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

    def process_pending(self, now: float, busy: bool = False, detect: bool = True
                        ) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """The edge's once-per-iteration call: masker rows now, the detector when its batch is due.

        `busy`: datagrams are already waiting. Outside a capture no packet waits for the detector,
        so a due batch then waits for a quiet moment (up to `DETECT_DEFER` times its rows or its
        window): forwarding first keeps the detector's call out of the packets' latency.
        `detect=False` leaves the detector to `process_detector`, which the edge calls once it
        has sent what this returns (the masked packets need not wait for the detector's call).
        Returns the masked packets to send: (leg to send from, bytes, destination).
        """
        rows = self._mask_rows
        if rows and (not self.mask_window_s or len(rows) >= self.mask_batch_rows
                     or now >= self._mask_since + self.mask_window_s):  # type: ignore[operator]
            sends = self._run_masker(now)
        else:
            sends = []
        if detect:
            self.process_detector(now, busy)
        return sends

    def process_detector(self, now: float, busy: bool = False) -> None:
        """Run the detector batch if it is due (its rows, or its oldest row's window; see
        `process_pending` for `busy`)."""
        det = self._det_slots
        if det and (len(det) >= self.detect_batch_rows or now >= self._det_since + self.detect_window_s):  # type: ignore[operator]
            if (not busy or self._det_catchup or len(det) >= DETECT_DEFER * self.detect_batch_rows
                    or now >= self._det_since + DETECT_DEFER * self.detect_window_s):  # type: ignore[operator]
                self._run_detector(self.detect_batch_rows)

    def flush(self, now: float | None = None) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Run everything pending through the masker and the detector now (tests, shutdown)."""
        sends = self._run_masker(now)
        self._run_detector()
        return sends

    def get_timer(self) -> float | None:
        """Loop time at which `handle_timer` must run: detector batch due, metrics sample, RFC 4733 ends."""
        times = [t for t in (leg.te_receiver.get_timer() for leg in self._te_legs) if t is not None]  # type: ignore[union-attr]
        if self._det_since is not None:
            times.append(self._det_since + self.detect_window_s)
        if self._mask_since is not None and self.mask_window_s:
            times.append(self._mask_since + self.mask_window_s)
        if self._next_sample_s is not None:
            times.append(self._next_sample_s)
        times += [leg.fb_next_s for leg in self._fb_legs if leg.fb_next_s is not None]
        deadline = self._next_deadline()
        if deadline is not None:
            times.append(deadline)
        return min(times) if times else None

    def handle_timer(self, now: float, detect: bool = True) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """Release held packets whose deadline passed, run the detector batch when due, sample
        stream metrics, end lost telephone-events. Returns the released packets to send.
        `detect=False`: the edge runs `process_detector` after sending them."""
        sends: list[tuple[Leg, bytes, tuple[str, int]]] = []
        deadline = self._next_deadline()
        if deadline is not None and deadline <= now:
            due: dict[Leg, None] = {}  # ordered, and a membership test that does not scan (a list's was
            # quadratic in the legs due at once: most of the loop when a saturated relay falls behind)
            for leg in self._pop_deadlines(now):
                if leg.held is not None and _hold_deadline(leg.held) <= now and leg not in due:
                    due[leg] = None
            if due:
                if self._mask_rows:
                    # A successor already here (in a masker window) releases its packet with look-ahead.
                    sends = self._run_masker(now)
                ready = [leg for leg in due if leg.held is not None and _hold_deadline(leg.held) <= now]
                if len(ready) >= RELEASE_BATCH_MIN and self.masker is not None:
                    sends += self._release_many(ready, now)
                else:
                    for leg in ready:
                        sent = self._release_held(leg, now)
                        if sent is not None:
                            sends.append(sent)
        if detect and self._det_since is not None and now >= self._det_since + self.detect_window_s:
            self._run_detector(self.detect_batch_rows)
        if self._next_sample_s is not None and now >= self._next_sample_s:
            self._sample_streams()
            self._next_sample_s = now + JITTER_SAMPLE_INTERVAL_S if self.calls else None
        for leg in list(self._te_legs):
            receiver = leg.te_receiver
            self._telephone_events(leg, receiver.handle_timer(now))  # type: ignore[union-attr]
            if receiver.get_timer() is None:  # type: ignore[union-attr]
                self._te_legs.discard(leg)  # back on its next event
        for leg in list(self._fb_legs):
            if leg.fb_next_s is not None and leg.fb_next_s <= now:
                sent = self._feedback_due(leg, now)
                if sent is not None:
                    sends.append(sent)
            if leg.fb_next_s is None:
                self._fb_legs.discard(leg)
        return sends

    def _feedback_due(self, leg: Leg, now: float) -> tuple[Leg, bytes, tuple[str, int]] | None:
        """The agent leg's pending feedback at `leg.fb_next_s`: the relay's own next packet when the
        agent is silent, else a look again when the agent's packets would have stopped."""
        if leg.feedback is None:
            leg.fb_next_s = None
            return None
        last = leg.last_rx_s
        if last is not None and now < last + FEEDBACK_IDLE_S:  # the very sum it was scheduled at
            leg.fb_next_s = last + FEEDBACK_IDLE_S  # the agent's packets carry the tone meanwhile
            return None
        caller = leg.peer
        media = caller.media
        codec = media.codec if media is not None else "PCMU"
        ptime_s = (media.ptime_ms if media is not None else 20) / 1000
        n = int(round(ptime_s * caller.clock_hz))
        tone, pos = leg.feedback, leg.feedback_pos
        chunk = tone[pos:pos + n]
        pos += n
        if pos >= len(tone):
            leg.feedback, pos = None, 0
            chunk += bytes([SILENCE_CODES[codec]]) * (n - len(chunk))
        leg.feedback_pos = pos
        # A burst starts with the marker bit (RFC 3551 4.1) and the timestamp advanced by the
        # time since the last one, so that the stream's timestamps follow the clock.
        first = leg.fb_last_s is None or now - leg.fb_last_s > 1.5 * ptime_s
        if leg.fb_last_s is not None and first:
            leg.fb_ts += int((now - leg.fb_last_s) * caller.clock_hz) - n
        leg.fb_seq = (leg.fb_seq + 1) & 0xFFFF
        leg.fb_ts = (leg.fb_ts + n) & 0xFFFFFFFF
        leg.fb_last_s = now
        next_s = leg.fb_next_s + ptime_s  # type: ignore[operator]
        leg.fb_next_s = None if leg.feedback is None else (next_s if next_s > now - ptime_s else now + ptime_s)
        dest = caller.rtp_dest
        if dest is None or (media is not None and media.direction in (Direction.SENDONLY, Direction.INACTIVE)):
            return None  # the caller receives nothing now (no address, or on hold): the tone runs out unheard
        data = self._protected(caller, struct.pack("!BBHII", 0x80, (0x80 if first else 0) | caller.audio_pt,
                                                   leg.fb_seq, leg.fb_ts, leg.fb_ssrc) + chunk, leg.direction)
        if data is None:
            return None
        self.stats.feedback_packets += 1
        return caller, data, dest

    # ---- internals -------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        """Earliest release deadline of a held packet; stale entries are dropped on the way.

        The FIFO and the heap are read as one queue in (deadline, tie-break) order, the order
        a single heap of every entry would give.
        """
        holding, heap = self._holding, self._deadlines
        fifo = self._deadline_fifo
        if not heap:
            # FIFO alone (the common case): skip the entries of legs that hold nothing or a later
            # 160-byte packet, without computing deadlines: one packet time after arrivals a
            # microsecond or more apart (float64 keeps them apart on a clock under 10^8 s).
            while fifo:
                rows = fifo[0][1]
                i, n = self._fifo_pos, len(rows)
                while i < n:
                    row = rows[i]
                    leg = row[0]
                    held = leg.held
                    if held is row and leg in holding:  # the entry of the packet its leg holds: live
                        self._fifo_pos = i
                        return _hold_deadline(row)
                    if held is not None and not (held[3] - row[3] >= 1e-6 and row[3] < 1e8
                                                 and len(held[1]) - held[2] == 160):
                        break
                    i += 1
                self._fifo_pos = i
                if i < n:
                    break
                fifo.popleft()
                self._fifo_pos = 0
        while True:
            entry = self._fifo_peek()
            if entry is None or (heap and heap[0][:2] < entry[:2]):
                if not heap:
                    return None
                entry, from_fifo = heap[0], False
            else:
                from_fifo = True
            deadline, _, leg = entry
            held = leg.held
            if held is not None and _hold_deadline(held) == deadline and leg in holding:
                return deadline
            if from_fifo:
                self._fifo_pos += 1
            else:
                heappop(heap)

    def _fifo_peek(self) -> tuple[float, int, Leg] | None:
        """(deadline, tie-break, leg) of the FIFO's first entry, live or stale, left in place."""
        fifo = self._deadline_fifo
        while fifo:
            tie, rows = fifo[0]
            i = self._fifo_pos
            if i < len(rows):
                row = rows[i]
                return _hold_deadline(row), tie + i, row[0]
            fifo.popleft()
            self._fifo_pos = 0
        return None

    def _pop_deadlines(self, now: float) -> list[Leg]:
        """Legs of the entries due by `now`, in (deadline, arrival) order, taken off the FIFO and heap."""
        heap = self._deadlines
        legs = []
        while True:
            f = self._fifo_peek()
            if f is not None and f[0] <= now and not (heap and heap[0][:2] < f[:2]):
                legs.append(f[2])
                self._fifo_pos += 1
            elif heap and heap[0][0] <= now:
                legs.append(heappop(heap)[2])
            else:
                return legs

    def _run_detector(self, limit: int | None = None) -> None:
        """One detector call over the FIFO (more only when a stream has several rows in it).

        `limit`: a FIFO longer than 1.5 times that (it grew while the loop was busy) gives up
        that many rows, the oldest (more when it is past DETECT_DEFER batches: what is left never
        exceeds DETECT_DEFER - 1); the rest stay due (their window is the batch's) and the relay
        wakes for them, so such a FIFO is taken a batch per loop iteration, each packet's
        forwarding waiting for one batch's call at most, not for all of them in one call (at
        1,000 streams that was 1-5 ms). Up to 1.5 times goes in one call, as it always did (a
        small rest called on its own would only add calls)."""
        slots, payloads = self._det_slots, self._det_payloads
        alaw = self._det_alaw
        if limit is not None and 2 * len(slots) > 3 * limit:
            # A batch, or more when the FIFO is past its bound: what is left is never more than
            # DETECT_DEFER - 1 batches, so an overloaded loop cannot fall further behind than it did.
            take = max(limit, len(slots) - (DETECT_DEFER - 1) * limit)
            self._det_slots, self._det_payloads = slots[take:], payloads[take:]
            slots, payloads = slots[:take], payloads[:take]
            self.wake = True  # the A-law flag and the window stay as they were: the rest is as old
            # A full batch left: the next iterations take it even while datagrams wait (it is
            # past its bound already), a batch each, until less than a batch is left.
            self._det_catchup = len(self._det_slots) >= limit
        else:
            self._det_slots, self._det_payloads, self._det_alaw, self._det_since = [], [], False, None
            self._det_catchup = False
        if not slots or self.detector is None:
            return
        k = len(slots)
        # Rows are whole 172-byte packets (payload at 12) or 160-byte payloads (receive_rtp): the
        # joined length says whether they are all one or the other.
        joined = b"".join(payloads)
        if len(joined) == 172 * k:
            codes = np.frombuffer(joined, dtype=np.uint8).reshape(k, 172)[:, 12:]
        else:
            if len(joined) != 160 * k:
                joined = b"".join([p if len(p) == 160 else p[12:] for p in payloads])
            codes = np.frombuffer(joined, dtype=np.uint8).reshape(k, 160)
        frames = _decode_rows(codes, [self._slot_legs[s].is_alaw for s in slots] if alaw else None)
        slot_arr = np.array(slots, dtype=np.intp)
        self.stats.detector_rows += k
        for rows in _rounds(slots):
            self.stats.detector_batches += 1
            if rows is None:
                events = self.detector.process(slot_arr, frames)
            else:
                events = self.detector.process(slot_arr[rows], frames[rows])
            for ev in events:
                self._digit_event(ev)

    def _run_masker(self, now: float | None) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """This iteration's masked-leg rows through the masker; returns what leaves now.

        Per row only a few Python steps: unchanged rows (all but DTMF) leave as the very
        bytes that arrived, and only changed rows are re-encoded. The masker gets the same
        rows, in the same order, in the same calls as it always did (its products' last bits
        depend on the batch), whatever shortcut the relay takes around it.
        """
        rows = self._mask_rows
        if not rows:
            return []
        plain = self._mask_plain
        self._mask_rows, self._mask_plain, self._mask_since = [], True, None
        k = len(rows)
        # Per row: index of its masked samples in `out` when changed, -1 unchanged, None unknown.
        state: Any = repeat(-1)
        out: np.ndarray | None = None
        masker = self.masker
        if masker is not None:
            if plain:
                # 172-byte mu-law packets: the payloads are columns 12.. of the joined packets,
                # decoded two codes at a time straight from it (no copy of the payloads first).
                picked = rows
                pairs = np.frombuffer(b"".join([r[1] for r in rows]), dtype="<u2").reshape(k, 86)
                frames = _ULAW_PAIRS.take(pairs).view(np.int16)[:, 12:]
            else:
                picked = [r for r in rows if len(r[1]) - r[2] == 160]
                if picked:
                    alaw = [r[0].is_alaw for r in picked]
                    codes = np.frombuffer(b"".join([r[1][r[2]:] for r in picked]),
                                          dtype=np.uint8).reshape(len(picked), 160)
                    frames = _decode_rows(codes, alaw if any(alaw) else None)
            if picked:
                n = len(picked)
                mslots = [r[0].mask_slot for r in picked]
                slot_arr = np.array(mslots, dtype=np.intp)
                one_round = True
                for sub in _rounds(mslots):
                    self.stats.masker_batches += 1
                    if sub is None:
                        out, changed = masker.process(slot_arr, frames)
                    else:
                        one_round = False
                        if out is None:
                            out, changed = np.empty((n, 160), dtype=np.int16), np.zeros(n, dtype=bool)
                        out[sub], changed[sub] = masker.process(slot_arr[sub], frames[sub])
                hit = changed.nonzero()[0]
                if plain and len(hit) and one_round and all(
                        rows[j][0].held is None and rows[j][0].capturing for j in hit.tolist()):
                    # Only look-aheads that restart (after a deadline release): their filler rows
                    # answer for no packet (none was held), so the batch is still the common case.
                    hit = hit[:0]
                if plain and not len(hit):
                    pass  # every row unchanged: the common case, no per-row marks
                else:
                    marks = [-1] * n
                    for j in hit.tolist():
                        marks[j] = j
                    if plain:
                        state = marks
                    else:
                        it = iter(marks)
                        state = [next(it) if len(r[1]) - r[2] == 160 else None for r in rows]
            elif not plain:
                state = [None] * k
        else:
            state = [None] * k
        sends: list[tuple[Leg, bytes, tuple[str, int]]] = []
        held_since: list[float] = []
        tie = self._deadline_n
        captured = relayed = n_held = 0
        todo = rows
        if plain and type(state) is repeat and self._release_unchanged is not None:  # state: all rows -1
            # No row changed (the common case): the leading rows that take the common step do so in C.
            done, relayed, new_holders = self._release_unchanged(rows, sends, held_since)
            captured, n_held = relayed, done
            if new_holders:
                for leg in new_holders:
                    self._holding[leg] = None
                self.timer_changed = True
            todo = rows[done:]
        for row, st in zip(todo, state):
            leg = row[0]
            if leg.capturing:
                # The row's masker output is the held packet's, masked with this one as look-ahead.
                held = leg.held
                leg.held = row
                n_held += 1
                if not plain:
                    # Its own deadline entry (a plain batch gets one FIFO entry below).
                    tie += 1
                    heappush(self._deadlines, (_hold_deadline(row), tie, leg))
                if held is None:
                    # A new deadline, earlier than none the edge's timer knows of.
                    self._holding[leg] = None
                    self.timer_changed = True
                    continue
                _, pkt, start, rx = held
                if st != -1:
                    pkt = self._masked_packet(leg, pkt, start, None if st is None else out[st])  # type: ignore[index]
                    if st is not None:
                        leg.last_masked_s = rx
                elif leg.xlate is not None:
                    pkt = pkt[:start] + pkt[start:].translate(leg.xlate)
                held_since.append(rx)
            elif leg.always:
                # mask = "always" outside a capture: this packet itself, masked without look-ahead.
                _, pkt, start, _ = row
                if st != -1:
                    pkt = self._masked_packet(leg, pkt, start, None if st is None else out[st])  # type: ignore[index]
                elif leg.xlate is not None:
                    pkt = pkt[:start] + pkt[start:].translate(leg.xlate)
            else:
                continue
            captured += 1
            # `_forward_built` inline for the common case: same PT, plain RTP, destination known.
            peer = leg.peer
            dest = peer.rtp_dest
            pt = pkt[1] & 0x7F
            if dest is not None and peer.srtp is None and leg.pt_map[pt] == pt:
                relayed += 1
                sends.append((peer, pkt, dest))
            else:
                sent = self._forward_built(leg, pkt)
                if sent is not None:
                    sends.append(sent)
        if plain and n_held:
            held_rows = rows if n_held == k else [r for r in rows if r[0].capturing]
            self._deadline_fifo.append((tie + 1, held_rows))
            tie += n_held
        self._deadline_n = tie
        stats = self.stats
        stats.captured += captured
        stats.relayed[CALLER_TO_AGENT] += relayed
        if now is not None and held_since:
            stats.lookahead.observe_since_later(now, held_since)
        return sends

    def _release_held(self, leg: Leg, now: float) -> tuple[Leg, bytes, tuple[str, int]] | None:
        """The held packet at its deadline, masked with the look-ahead known (its successor is late).

        The masker decides the blocks it can (`flush`: windows confirmed so far, loose flags
        with their pre-guard); the last block, whose confirming blocks are in the missing
        successor, leaves as silence unless too quiet to carry a tone (DESIGN.md: no onset
        may leak). The masker starts a fresh look-ahead with the next packet, which the relay
        holds in turn: packets stay 1:1.
        """
        held, leg.held = leg.held, None
        self._holding.pop(leg, None)
        _, pkt, start, rx = held  # type: ignore[misc]
        last = None
        if len(pkt) - start == 160 and self.masker is not None and leg.mask_slot >= 0:
            last = self.masker.flush(leg.mask_slot)
        out = self._deadline_packet(leg, pkt, start, rx, last)
        self.stats.captured += 1
        self.stats.released_at_deadline += 1
        self.stats.lookahead.observe(now - rx)
        return self._forward_built(leg, out)

    def _deadline_packet(self, leg: Leg, pkt: bytes, start: int, rx: float,
                         last: tuple[np.ndarray, bool] | None) -> bytes:
        """A held packet as it leaves at its deadline: masked as the masker's flush says (`last`:
        its row and changed flag; None: unknown, so silence), its last block silenced when loud."""
        loud = False
        if last is not None:
            # The tail's power as exact integer squares per code (the float64 sum is the same).
            loud = (sum(map(_TAIL_SQUARES[leg.is_alaw].__getitem__, pkt[-TAIL_SAMPLES:]))
                    >= TAIL_QUIET_POWER * TAIL_SAMPLES)
            if not last[1] and leg.xlate is None:
                # The common case: the very bytes that arrived, or with the last block silenced.
                return pkt[:-TAIL_SAMPLES] + _TAIL_SILENCE[leg.is_alaw] if loud else pkt
            if last[1]:
                leg.last_masked_s = rx
        body = self._masked_body(leg, pkt[start:], last)
        if last is not None and loud and len(body) >= TAIL_SAMPLES:
            codec = leg.media.codec if leg.media is not None else "PCMU"
            out_codec = leg.peer.media.codec if leg.peer.media is not None else codec
            body = body[:-TAIL_SAMPLES] + bytes([SILENCE_CODES[out_codec]]) * TAIL_SAMPLES
        return pkt[:start] + body

    def _release_many(self, legs: list[Leg], now: float) -> list[tuple[Leg, bytes, tuple[str, int]]]:
        """`_release_held` for several legs due at once, in their order, with the masker's flush
        done for all of them together (a burst of late successors, after a stall upstream, used
        to release ~30 us a packet, one by one, the last ones late)."""
        masker = self.masker
        assert masker is not None
        # Off the common case (no masker slot, another packet size): `_release_held`, in turn.
        common = [leg.mask_slot >= 0 and len(leg.held[1]) - leg.held[2] == 160 for leg in legs]  # type: ignore[index]
        batch = [leg for leg, ok in zip(legs, common) if ok]
        if not batch:
            return [sent for sent in (self._release_held(leg, now) for leg in legs) if sent is not None]
        k = len(batch)
        rows, changed = masker.flush_many([leg.mask_slot for leg in batch])
        sends: list[tuple[Leg, bytes, tuple[str, int]]] = []
        since: list[float] = []
        holding = self._holding
        j = -1
        for leg, ok in zip(legs, common):
            if not ok:
                sent = self._release_held(leg, now)
                if sent is not None:
                    sends.append(sent)
                continue
            j += 1
            held, leg.held = leg.held, None
            holding.pop(leg, None)
            _, pkt, start, rx = held  # type: ignore[misc]
            since.append(rx)
            ch = changed[j]
            out = self._deadline_packet(leg, pkt, start, rx, None if ch is None else (rows[j], ch))
            peer = leg.peer
            dest = peer.rtp_dest
            pt = out[1] & 0x7F
            if dest is not None and peer.srtp is None and leg.pt_map[pt] == pt:
                self.stats.relayed[leg.direction] += 1
                sends.append((peer, out, dest))
            else:
                sent = self._forward_built(leg, out)
                if sent is not None:
                    sends.append(sent)
        stats = self.stats
        stats.captured += k
        stats.released_at_deadline += k
        stats.lookahead.observe_since_later(now, since)
        return sends

    def _masked_packet(self, leg: Leg, pkt: bytes, start: int, row: np.ndarray | None) -> bytes:
        """Header and the payload as the agent may hear it (`row`: the masker's samples, None: unknown)."""
        return pkt[:start] + self._masked_body(leg, pkt[start:], None if row is None else (row, True))

    def _masked_body(self, leg: Leg, payload: bytes, masked: tuple[np.ndarray, bool] | None) -> bytes:
        """The payload as the agent may hear it, in the agent leg's law (`payload` is in the caller's)."""
        codec = leg.media.codec if leg.media is not None else "PCMU"
        out_codec = leg.peer.media.codec if leg.peer.media is not None else codec
        if masked is None or len(payload) != 160:
            # Safe state: audio whose masked form is unknown leaves as silence.
            return bytes([SILENCE_CODES[out_codec]]) * len(payload)
        row, changed = masked
        xlate = leg.xlate
        if not changed:
            return payload if xlate is None else payload.translate(xlate)
        codes = np.frombuffer(payload, dtype=np.uint8)
        same = DECODE_TABLES[codec].take(codes) == row
        # Unchanged samples keep their exact code (mu-law decode/encode is not the identity),
        # converted code for code when the agent's law differs.
        kept = codes if xlate is None else np.frombuffer(payload.translate(xlate), dtype=np.uint8)
        return np.where(same, kept, ENCODE_TABLES[out_codec].take(row.view(np.uint16))).tobytes()  # uint8

    def _forward_built(self, leg: Leg, data: bytes) -> tuple[Leg, bytes, tuple[str, int]] | None:
        """Remap and protect a caller packet released from the masker (already renumbered)."""
        pt = data[1] & 0x7F
        out_pt = leg.pt_map[pt]
        peer = leg.peer
        if out_pt == _NO_PT or peer.rtp_dest is None:
            self.stats.drops[leg.direction]["no_destination" if out_pt != _NO_PT else "payload_type"] += 1
            return None
        if out_pt != pt:
            data = b"%c%c" % (data[0], (data[1] & 0x80) | out_pt) + data[2:]
        protected = self._protected(peer, data, leg.direction)
        if protected is None:
            return None
        self.stats.relayed[leg.direction] += 1
        return peer, protected, peer.rtp_dest

    def _protected(self, to: Leg, data: bytes, direction: int) -> bytes | None:
        """A packet the relay built, in SRTP when `to` (the leg it leaves on) uses it; a failure is a
        drop counted for `direction` (None). The per-packet path keeps its own inline copy."""
        if to.srtp is None:
            return data
        try:
            return to.srtp.protect(data)
        except SrtpError as exc:
            self.stats.drops[direction][exc.reason] += 1
            return None

    def _talkspurt_gap(self, leg: Leg, gap_s: float) -> None:
        """A talkspurt starts (RTP marker, RFC 3551 4.1) after silence the caller's phone did not
        send (VAD, silence suppression): the detector gets that silence back, as 20 ms rows of
        silence in the caller's law (up to `MAX_GAP_ROWS`), so that two presses of one key with
        the pause between them suppressed stay two digits instead of one long tone."""
        missing = min(MAX_GAP_ROWS, int(gap_s / 0.020 - 0.5))
        if missing > 0:
            silence = _SILENCE_PAYLOADS[leg.is_alaw]
            self._det_slots.extend([leg.slot] * missing)
            self._det_payloads.extend([silence] * missing)

    def _splice_feedback(self, leg: Leg, data: bytes, start: int, end: int) -> bytes:
        """The agent's packet with its payload replaced by the feedback tone's next codes.

        RFC 3550 5.1: header (SSRC, sequence number, timestamp, marker) and padding are the
        agent's, so the caller's stream continues. A packet the tone ends in keeps the
        agent's audio after the tone.
        """
        tone, pos = leg.feedback, leg.feedback_pos
        n = end - start
        chunk = tone[pos:pos + n]  # type: ignore[index]
        pos += n
        if pos >= len(tone):  # type: ignore[arg-type]
            leg.feedback, pos = None, 0
            if len(chunk) < n:
                chunk += data[start + len(chunk):end]
        leg.feedback_pos = pos
        self.stats.feedback_packets += 1
        return data[:start] + chunk + data[end:]

    def _drop_pending(self, leg: Leg) -> None:
        leg.held = None
        self._holding.pop(leg, None)
        if any(r[0] is leg for r in self._mask_rows):
            self._mask_rows = [r for r in self._mask_rows if r[0] is not leg]
            self._mask_since = min(r[3] for r in self._mask_rows) if self._mask_rows else None
        if leg.slot >= 0 and leg.slot in self._det_slots:
            keep = [i for i, s in enumerate(self._det_slots) if s != leg.slot]
            self._det_slots = [self._det_slots[i] for i in keep]
            self._det_payloads = [self._det_payloads[i] for i in keep]
            if not self._det_slots:
                self._det_since = None
                self._det_catchup = False

    def _sequence_changed(self, leg: Leg, data: bytes, seq: int) -> bool:
        """RFC 3550 A.1 update_seq for a packet that is not the next one: A.3's lost follows.

        Returns whether the packet does not follow the stream: late, a duplicate (behind the highest
        number received), or the first of a very large jump, not confirmed yet."""
        ssrc = _TS_SSRC.unpack_from(data, 4)[1]
        if ssrc != leg.rx_ssrc:
            self._stream_started(leg, seq, ssrc)
            return False
        udelta = (seq - leg.rx_next + 1) & 0xFFFF  # from the highest number received
        if udelta < MAX_DROPOUT:
            # A gap of udelta - 1 (the sequence number may wrap), or 0: a duplicate of the highest.
            leg.rx_lost += udelta - 1
            if udelta:
                leg.rx_next = (seq + 1) & 0xFFFF
            return not udelta
        if udelta <= 0x10000 - MAX_MISORDER:
            return not self._sequence_jump(leg, seq)
        leg.rx_lost -= 1  # late or duplicate: received, nothing more expected
        return True

    def _stream_started(self, leg: Leg, seq: int, ssrc: int) -> None:
        """A new SSRC on this leg (or its first packet): RFC 3550 A.1 init_seq, fresh jitter.

        Its sequence numbers are renumbered by what was withheld of it (events sent under an SSRC
        of their own shift nobody else's numbers)."""
        self._fold_loss(leg)
        leg.rx_ssrc = ssrc
        counts = leg.withheld.get(ssrc)
        leg.seq_offset = counts[0] & 0xFFFF if counts is not None else 0
        leg.rx_next = (seq + 1) & 0xFFFF
        leg.rx_lost = 0
        leg.rx_bad_seq = -1
        leg.rx_pair_seq = -1
        leg.rx_jitter = 0.0
        leg.rx_pairs = 0
        leg.rx_lost_reported = 0

    def _sequence_jump(self, leg: Leg, seq: int) -> bool:
        """RFC 3550 A.1: a very large jump restarts the count only when the next packet follows it
        (returns whether it did)."""
        if seq == leg.rx_bad_seq:
            self._fold_loss(leg)
            leg.rx_next = (seq + 1) & 0xFFFF
            leg.rx_lost = 0
            leg.rx_bad_seq = -1
            leg.rx_lost_reported = 0
            return True
        leg.rx_bad_seq = (seq + 1) & 0xFFFF  # not counted until confirmed
        return False

    def _jitter_pair(self, leg: Leg, data: bytes, seq: int, now: float) -> None:
        """RFC 3550 A.8 on a sampled pair: J += (|D(i-1,i)| - J) * gain, D on (arrival - timestamp).

        The pair's first packet opens it; the packet numbered next closes it. Audio packets
        only (RFC 4733 events repeat their timestamp).
        """
        ts, ssrc = _TS_SSRC.unpack_from(data, 4)
        if ssrc != leg.rx_ssrc:
            return
        transit = now * leg.clock_hz - ts
        if seq == leg.rx_pair_seq:
            # Timestamps wrap at 2^32: D is the difference mod 2^32, taken around zero.
            d = (transit - leg.rx_transit + 2147483648.0) % 4294967296.0 - 2147483648.0
            if leg.rx_pairs < self._jitter_warmup:
                leg.rx_pairs += 1
                leg.rx_jitter += (abs(d) - leg.rx_jitter) / leg.rx_pairs
            else:
                leg.rx_jitter += (abs(d) - leg.rx_jitter) * self._jitter_gain
        leg.rx_transit = transit
        leg.rx_pair_seq = (seq + 1) & 0xFFFF

    def _fold_loss(self, leg: Leg) -> None:
        """Add what this stream lost since last time to the direction's total (never decreases)."""
        lost = leg.packets_lost
        if lost > leg.rx_lost_reported:
            self.stats.packets_lost[leg.direction] += lost - leg.rx_lost_reported
            leg.rx_lost_reported = lost

    def _sample_streams(self) -> None:
        """Once a second: each stream that received since the last sample adds its jitter."""
        jitters = []
        for call in self.calls.values():
            for leg in (call.caller, call.agent):
                if leg.rx_ssrc >= 0 and leg.last_rx_s != leg.rx_sampled_s:
                    leg.rx_sampled_s = leg.last_rx_s
                    jitters.append(leg.jitter_s)
                    self._fold_loss(leg)
        if jitters:
            self.stats.jitter.observe_many(np.array(jitters))

    def _source_proven(self, leg: Leg, data: bytes, addr: tuple[str, int], now: float) -> bool:
        """Whether a valid RTP packet from a source other than the latched one latches it now.

        See the module docstring (Latching): one forged packet must never move the latch.
        """
        latched = leg.rtp_src
        sdp = leg.sdp_rtp
        if latched is None and (sdp is None or addr == sdp or sdp[0] in UNUSABLE_HOSTS
                                or (addr[0] == sdp[0] and not leg.exact_latch)):
            leg.candidate = None
            return True
        seq = (data[2] << 8) | data[3]
        ssrc = _TS_SSRC.unpack_from(data, 4)[1]
        cand = leg.candidate
        if (cand is not None and cand[0] == addr and cand[1] == ssrc and cand[2] == seq
                and cand[4] == leg.last_rx_s):
            count, since = cand[3] + 1, cand[5]
        elif latched is None or self._may_take_over(leg, ssrc, seq, now):
            count, since = 1, now
        else:
            return False
        # A run must also last a while: a burst that fits between two of the latched source's
        # packets (one packet time apart) is not interrupted by them, a real stream is.
        ptime_s = (leg.media.ptime_ms if leg.media is not None else 20) / 1000
        if count >= RELATCH_PACKETS and now - since >= RELATCH_SPAN_PTIMES * ptime_s:
            leg.candidate = None
            return True
        leg.candidate = (addr, ssrc, (seq + 1) & 0xFFFF, count, leg.last_rx_s, since)
        return False

    @staticmethod
    def _may_take_over(leg: Leg, ssrc: int, seq: int, now: float) -> bool:
        """Whether a packet from an unlatched source may start proving itself."""
        if ssrc == leg.rx_ssrc:
            # A NAT rebinding: the same stream continues (RFC 3550 A.1: ahead, within MAX_DROPOUT).
            return 0 < ((seq - leg.rx_next + 1) & 0xFFFF) < MAX_DROPOUT
        # RFC 3550 8.2: a new SSRC is a new stream; only once the latched one has gone quiet.
        return leg.last_rx_s is None or now - leg.last_rx_s >= RELATCH_SILENCE_S

    def _latch(self, leg: Leg, addr: tuple[str, int], rtcp: bool, now: float) -> None:
        # RFC 4961 / symmetric RTP: send to where the peer's packets come from.
        if rtcp:
            leg.rtcp_src = leg.rtcp_dest = addr
            leg.rtcp_may_move = False
        else:
            leg.rtcp_may_move = leg.rtp_src is not None  # a re-latch: RTCP may follow
            leg.rtp_src = leg.rtp_dest = addr
        self._events.append(SourceLatched(leg.call_id, leg.name, rtcp, addr))
        self.wake = True
        if self._next_sample_s is None:
            self._next_sample_s = now + JITTER_SAMPLE_INTERVAL_S
            self.timer_changed = True

    def _telephone_event(self, leg: Leg, data: bytes, start: int, end: int, now: float) -> bool | None:
        """Feed the receiver: whether the packet started a new DTMF event; None when the payload
        is malformed (RFC 4733 2.3: 4 octets)."""
        receiver = leg.te_receiver
        if receiver is None:
            receiver = leg.te_receiver = TelephoneEventReceiver()
        self._te_legs.add(leg)
        self.timer_changed = self.wake = True
        _, b1, _, ts, ssrc = RTP_HEADER.unpack_from(data)
        try:
            events = receiver.receive(ssrc, ts, bool(b1 & 0x80), data[start:end], now)
        except ValueError:
            return None
        self._telephone_events(leg, events)
        started = any(isinstance(ev, TelephoneEventStarted) for ev in events)
        if started:
            # RFC 4733 2.5.1.1: a new event (new timestamp) ends what the SSRC sent before.
            leg.te_withheld_ssrcs.discard(ssrc)
        return started

    @staticmethod
    def _withheld_event(leg: Leg, data: bytes, started: bool) -> bool:
        """Whether an event packet outside masking belongs to an event withheld while masking.

        RFC 4733 2.5.1.1: its identity (SSRC + timestamp) was withheld: updates, end packets and
        their retransmissions (2.5.1.4) of a key still held when the capture ended. A packet that
        starts no event under a new timestamp continues the SSRC's latest event (a 2.5.1.3
        segment, or end packets whose timestamp moved): withheld when that event was.
        """
        ts, ssrc = _TS_SSRC.unpack_from(data, 4)
        if (ssrc, ts) in leg.te_withheld_ids:
            return True
        return not started and ssrc in leg.te_withheld_ssrcs

    @staticmethod
    def _count_withheld(leg: Leg, ssrc: int, octets: int) -> None:
        """One more packet of its stream withheld: the stream's renumbering and RTCP counts follow."""
        counts = leg.withheld.get(ssrc)
        if counts is None:
            if len(leg.withheld) >= WITHHELD_STREAMS:
                # The stream with the fewest withheld goes (a short-lived event stream, not the
                # call's audio), never the one playing now: their numbering holds.
                del leg.withheld[min((k for k in leg.withheld if k != leg.rx_ssrc), key=lambda k: leg.withheld[k][0])]
            counts = leg.withheld[ssrc] = [0, 0]
        counts[0] += 1
        counts[1] += octets
        if ssrc == leg.rx_ssrc:
            leg.seq_offset = counts[0] & 0xFFFF

    def _withhold_event(self, leg: Leg, data: bytes, started: bool, octets: int) -> None:
        """Remember a withheld event packet's identity, so the rest of its event is withheld too,
        and count it against its stream (`octets`: its payload)."""
        ts, ssrc = _TS_SSRC.unpack_from(data, 4)
        if (ssrc, ts) not in leg.te_withheld_ids:
            leg.te_withheld_ids.append((ssrc, ts))
        if started or leg.masking:
            leg.te_withheld_ssrcs.add(ssrc)
        self._count_withheld(leg, ssrc, octets)

    def _telephone_events(self, leg: Leg, events: list[Any]) -> None:
        call_id = leg.call_id
        for ev in events:
            if isinstance(ev, TelephoneEventStarted):
                self._events.append(TelephoneEventDetected(call_id, ev.digit, ev.timestamp, ev.volume))
            else:
                self._events.append(TelephoneEventEnded(call_id, ev.digit, ev.timestamp, ev.duration,
                                                        ev.end_seen))

    def _digit_event(self, ev: Any) -> None:
        leg = self._slot_legs.get(ev.slot)
        if leg is None:
            return
        decided = getattr(ev, "decided_sample", None)
        if decided is not None:
            self._events.append(InBandDigitDetected(leg.call_id, ev.digit, ev.start_sample, decided))
        else:
            self._events.append(InBandDigitEnded(leg.call_id, ev.digit, ev.end_sample))


def _hold_deadline(held: tuple[Leg, bytes, int, float]) -> float:
    """A held row's release deadline: one packet time (G.711: a byte per sample) after it arrived,
    plus `HOLD_SLACK_S`; then it leaves whether its successor came or not."""
    leg, pkt, start, rx = held
    return rx + (len(pkt) - start) / leg.clock_hz + HOLD_SLACK_S


def _apply_media(leg: Leg, media: LegMedia) -> None:
    old = leg.media
    leg.media = media
    leg.audio_pt = media.audio_pt
    leg.te_pt = media.telephone_event_pt if media.telephone_event_pt is not None else -1
    leg.is_alaw = media.codec == "PCMA"
    if old is None or old.srtp != media.srtp:
        leg.srtp = _srtp_leg(media.srtp)
    fork = False
    if media.fork_tag is not None:
        # Forked early media: with more than one fork answering, a switch of fork and the final
        # answer restart latching, so that the latch on an early fork's source (which may have
        # proven itself while another fork's SDP was current) does not outlive its dialog.
        leg.forks = (leg.forks or frozenset()) | {media.fork_tag}
        fork = len(leg.forks) > 1 and old is not None and old.fork_tag is not None and (
            old.fork_tag != media.fork_tag or (old.early and not media.early))
    if old is None or old.remote_rtp != media.remote_rtp or fork:
        # A new SDP address (re-INVITE) restarts latching on that leg.
        leg.sdp_rtp = leg.rtp_dest = media.remote_rtp
        leg.rtp_src = leg.candidate = None
        leg.exact_latch = fork or (leg.exact_latch and media.fork_tag is not None)
    if old is None or old.remote_rtcp != media.remote_rtcp or fork:
        leg.sdp_rtcp = leg.rtcp_dest = media.remote_rtcp
        leg.rtcp_src = None


def _srtp_leg(params: SrtpParams | None) -> SrtpLeg | None:
    return SrtpLeg(params) if params is not None else None


def _source_allowed(latched: tuple[str, int] | None, sdp: tuple[str, int] | None,
                    addr: tuple[str, int], exact: bool = False) -> bool:
    """Strict mode: before latching only the SDP host may send (after another fork answered: only
    its exact SDP address); after, only the latched source."""
    if latched is not None:
        return addr == latched
    return sdp is None or (addr == sdp if exact else addr[0] == sdp[0])


def _rtcp_source_allowed(leg: Leg, addr: tuple[str, int]) -> bool:
    """RTCP from a new source: from the RTP source's host, and only once RTP re-latched since RTCP did
    (or RTCP still comes from another host than RTP's)."""
    rtp = leg.rtp_src
    rtcp = leg.rtcp_src
    if leg.exact_latch:
        # Another fork answered: the early fork on the same host must not take RTCP either (its
        # RTCP BYE when cancelled would have latched it); only the answer's RTCP address, or the
        # port above the RTP source it latched to.
        return rtcp is None and (addr == leg.sdp_rtcp or (rtp is not None and addr == (rtp[0], rtp[1] + 1)))
    if rtp is None:
        sdp = leg.sdp_rtcp or leg.sdp_rtp
        return rtcp is None and (sdp is None or sdp[0] in UNUSABLE_HOSTS or addr[0] == sdp[0])
    return addr[0] == rtp[0] and (rtcp is None or leg.rtcp_may_move or rtcp[0] != rtp[0])


def _rounds(slots: list[int]) -> list[list[int] | None]:
    """Row groups with each slot at most once, in arrival order; [None] means all rows."""
    if len(set(slots)) == len(slots):
        return [None]
    seen: dict[int, int] = {}
    rounds: list[list[int] | None] = []
    for j, slot in enumerate(slots):
        r = seen.get(slot, 0)
        seen[slot] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(j)  # type: ignore[union-attr]
    return rounds


def _decode_rows(codes: np.ndarray, alaw_rows: list[bool] | None) -> np.ndarray:
    """(k, 160) G.711 codes -> int16 samples; `alaw_rows` flags the A-law rows of a mixed batch (None: all mu-law)."""
    if alaw_rows is None:
        return _ulaw_decode(codes)
    offset = np.fromiter((256 * a for a in alaw_rows), dtype=np.intp, count=len(alaw_rows))
    return np.take(_BOTH_DECODE, codes + offset[:, None])


def _ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """(k, 160) uint8 mu-law codes (rows may be a strided view) -> (k, 160) int16 samples."""
    pairs = np.ascontiguousarray(codes).view("<u2")
    return np.take(_ULAW_PAIRS, pairs).view(np.int16)


def _renumber(data: bytes, offset: int) -> bytes:
    seq = (((data[2] << 8) | data[3]) - offset) & 0xFFFF
    return data[:2] + _SEQ.pack(seq) + data[4:]
