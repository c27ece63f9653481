"""The relay core without sockets: routing, PT remap, latching, SRTP, the DTMF hook, capture."""

from __future__ import annotations

import base64
import os
import struct

import numpy as np
import pytest

from dtmf.g711 import ULAW_DECODE, ulaw_encode
from gateway.media.leg import Direction, LegMedia, SrtpParams
from gateway.media.relay import (
    RELATCH_PACKETS,
    CaptureUnavailable,
    InBandDigitDetected,
    Relay,
    SourceLatched,
    TelephoneEventDetected,
)
from gateway.media.rtp import RtpPacket
from gateway.media.srtp import SrtpLeg

CALLER_SDP = ("10.0.0.1", 4000)
AGENT_SDP = ("10.0.0.2", 6000)
NAT_CALLER = ("192.0.2.7", 31000)


def leg(addr, pt=0, te=101, codec="PCMU", srtp=None) -> LegMedia:
    return LegMedia(remote_rtp=addr, remote_rtcp=(addr[0], addr[1] + 1), codec=codec, audio_pt=pt,
                    telephone_event_pt=te, direction=Direction.SENDRECV, srtp=srtp)


def audio(seq: int, pt: int = 0, payload: bytes | None = None, ssrc: int = 0x1111) -> bytes:
    body = payload if payload is not None else bytes((seq * 7 + i) & 0xFF for i in range(160))
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=160 * seq, ssrc=ssrc, payload=body))


def event(seq: int, ts: int, code: int, end: bool = False, pt: int = 101) -> bytes:
    body = struct.pack("!BBH", code, (0x80 if end else 0) | 10, 400)
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=0x1111, payload=body))


def make(detector=None, masker=None, strict=False, caller=None, agent=None):
    relay = Relay(detector=detector, masker=masker, strict=strict)
    call = relay.add_call("c1")
    relay.configure("c1", caller or leg(CALLER_SDP), agent or leg(AGENT_SDP, te=96))
    return relay, call


def test_caller_audio_reaches_agent_bit_exact_and_back_untouched() -> None:
    relay, call = make()
    pkt = audio(1)
    assert relay.receive_rtp(call.caller, pkt, CALLER_SDP, now=1.0) == (pkt, AGENT_SDP)
    back = audio(9, ssrc=0x2222)
    assert relay.receive_rtp(call.agent, back, AGENT_SDP, now=1.0) == (back, CALLER_SDP)
    assert relay.stats.relayed == [1, 1]
    assert call.last_packet_s == 1.0


def test_telephone_event_pt_remapped_both_ways() -> None:
    relay, call = make()
    out, _ = relay.receive_rtp(call.caller, event(5, 800, 3), CALLER_SDP, now=0.0)
    assert out[1] & 0x7F == 96 and out[:1] + out[2:] == event(5, 800, 3)[:1] + event(5, 800, 3)[2:]
    end = event(6, 800, 3, end=True)
    marked = end[:1] + bytes([0x80 | 101]) + end[2:]
    out, _ = relay.receive_rtp(call.caller, marked, CALLER_SDP, now=0.0)
    assert out[1] == 0x80 | 96  # marker kept
    out, _ = relay.receive_rtp(call.agent, event(1, 160, 5, pt=96), AGENT_SDP, now=0.0)
    assert out[1] & 0x7F == 101
    events = list(iter(relay.next_event, None))
    tev = [e for e in events if isinstance(e, TelephoneEventDetected)]
    assert [(e.call_id, e.digit, e.rtp_timestamp) for e in tev] == [("c1", "3", 800)]


def test_audio_pt_remapped_and_unknown_pt_dropped() -> None:
    relay, call = make(caller=leg(CALLER_SDP, pt=8, codec="PCMA"), agent=leg(AGENT_SDP, pt=8, te=None, codec="PCMA"))
    assert relay.receive_rtp(call.caller, audio(1, pt=8), CALLER_SDP, 0.0)[0] == audio(1, pt=8)
    assert relay.receive_rtp(call.caller, audio(2, pt=0), CALLER_SDP, 0.0) is None
    # The agent did not negotiate telephone-event: the caller's events have nowhere to go.
    assert relay.receive_rtp(call.caller, event(3, 1, 1), CALLER_SDP, 0.0) is None
    assert relay.stats.drops[0]["payload_type"] == 2


def test_uninspectable_codec_on_either_leg_is_refused() -> None:
    relay = Relay()
    relay.add_call("c")
    with pytest.raises(ValueError):
        relay.configure("c", leg(CALLER_SDP, pt=9, codec="G722"), leg(AGENT_SDP))
    with pytest.raises(ValueError):
        relay.configure("c", leg(CALLER_SDP), leg(AGENT_SDP, pt=9, codec="G722"))


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (b"", "short"),
        (b"\x80\x00\x00", "short"),
        (b"\x40" + bytes(171), "version"),
        (b"\xa0\x00" + bytes(10) + b"\x00" * 3 + b"\xff", "padding"),
        (b"\x90\x00" + bytes(10) + b"\x00\x00\x00\x10", "extension"),
        (audio(1, pt=33), "payload_type"),
    ],
)
def test_garbage_is_counted_and_audio_continues(garbage: bytes, reason: str) -> None:
    relay, call = make()
    assert relay.receive_rtp(call.caller, audio(1), CALLER_SDP, 0.0) is not None
    assert relay.receive_rtp(call.caller, garbage, CALLER_SDP, 0.0) is None
    assert relay.receive_rtp(call.caller, audio(2), CALLER_SDP, 0.0) == (audio(2), AGENT_SDP)
    assert relay.stats.drops[0][reason] == 1
    assert relay.stats.packets_total()[("caller_to_agent", "dropped")] == 1


def test_padded_and_extended_packets_pass() -> None:
    relay, call = make()
    pkt = bytes(RtpPacket(payload_type=0, sequence_number=1, payload=bytes(160), csrc=[5],
                          extension_profile=0xBEDE, extension_data=bytes(4), padding_size=3))
    assert relay.receive_rtp(call.caller, pkt, CALLER_SDP, 0.0) == (pkt, AGENT_SDP)


def test_latching_follows_the_real_source() -> None:
    relay, call = make()
    # A host other than the SDP's (a NAT that rewrote it) proves itself over RELATCH_PACKETS packets.
    for seq in range(1, RELATCH_PACKETS):
        assert relay.receive_rtp(call.caller, audio(seq), NAT_CALLER, seq * 0.02) is None
        assert relay.receive_rtp(call.agent, audio(seq), AGENT_SDP, seq * 0.02)[1] == CALLER_SDP
    # Before the agent's first packet, the caller's audio goes to the agent's SDP address.
    assert relay.receive_rtp(call.caller, audio(RELATCH_PACKETS), NAT_CALLER, 0.1)[1] == AGENT_SDP
    # The agent's reply goes to where the caller's packets really came from.
    assert relay.receive_rtp(call.agent, audio(9), AGENT_SDP, 0.1)[1] == NAT_CALLER
    latched = [e for e in iter(relay.next_event, None) if isinstance(e, SourceLatched)]
    assert SourceLatched("c1", "caller", False, NAT_CALLER) in latched
    assert relay.stats.drops[0]["unexpected_source"] == RELATCH_PACKETS - 1
    # Non-strict: a NAT rebinding (same stream, new port) moves the latch once proven.
    moved = ("192.0.2.7", 31002)
    for seq in range(RELATCH_PACKETS + 1, 2 * RELATCH_PACKETS):
        assert relay.receive_rtp(call.caller, audio(seq), moved, seq * 0.02) is None
    assert relay.receive_rtp(call.caller, audio(2 * RELATCH_PACKETS), moved, 0.2) is not None
    assert relay.receive_rtp(call.agent, audio(10), AGENT_SDP, 0.2)[1] == moved


def test_sdp_host_latches_at_once_from_any_port() -> None:
    relay, call = make()
    src = (CALLER_SDP[0], 4100)
    assert relay.receive_rtp(call.caller, audio(1), src, 0.0) == (audio(1), AGENT_SDP)
    assert relay.receive_rtp(call.agent, audio(1), AGENT_SDP, 0.0)[1] == src


def test_garbage_does_not_latch() -> None:
    relay, call = make()
    assert relay.receive_rtp(call.caller, b"junk", ("203.0.113.9", 9), 0.0) is None
    assert relay.receive_rtp(call.agent, audio(1), AGENT_SDP, 0.0)[1] == CALLER_SDP


def test_strict_mode_drops_unexpected_sources() -> None:
    relay, call = make(strict=True)
    assert relay.receive_rtp(call.caller, audio(1), ("203.0.113.9", 4000), 0.0) is None
    assert relay.stats.drops[0]["source"] == 1
    # The SDP host may latch from another port (NAT), then only that exact source counts.
    src = (CALLER_SDP[0], 4100)
    assert relay.receive_rtp(call.caller, audio(2), src, 0.0) is not None
    assert relay.receive_rtp(call.caller, audio(3), CALLER_SDP, 0.0) is None
    assert relay.stats.drops[0]["source"] == 2
    assert relay.receive_rtp(call.agent, audio(1), AGENT_SDP, 0.0)[1] == src


def test_reinvite_with_new_address_restarts_latching() -> None:
    relay, call = make()
    relay.receive_rtp(call.agent, audio(1), ("10.9.9.9", 1), 0.0)
    relay.configure("c1", leg(CALLER_SDP), leg(("10.0.0.3", 7000), te=96))
    assert relay.receive_rtp(call.caller, audio(1), CALLER_SDP, 0.0)[1] == ("10.0.0.3", 7000)


def test_another_forks_answer_takes_the_latch_from_the_early_fork_on_the_same_host() -> None:
    """Forked early media: fork A (one port of the PBX host) plays early media and latches; fork B
    (another port) sends its 183, A keeps playing, then B answers 200 with the SDP of its 183.
    The caller's audio goes to B from the 200 on (it went to A, which never answered: RFC 3261
    13.2.2.4, the 2xx's answer sets the media), and A's stray packets do not latch at once."""
    fork_a, fork_b = ("10.0.0.2", 31000), ("10.0.0.2", 31002)

    def answer(addr, tag, early):
        return LegMedia(addr, (addr[0], addr[1] + 1), "PCMU", 0, 96, fork_tag=tag, early=early)

    relay, call = make(agent=answer(fork_a, "a", True))
    assert relay.receive_rtp(call.agent, audio(1, ssrc=0xA), fork_a, 0.0)[1] == CALLER_SDP
    assert relay.receive_rtp(call.caller, audio(1), CALLER_SDP, 0.0)[1] == fork_a
    relay.configure("c1", leg(CALLER_SDP), answer(fork_b, "b", True))
    assert relay.receive_rtp(call.agent, audio(2, ssrc=0xA), fork_a, 0.02) is None  # must prove itself
    for seq in range(3, 3 + RELATCH_PACKETS):  # A keeps playing: it proves itself (early media)
        relay.receive_rtp(call.agent, audio(seq, ssrc=0xA), fork_a, seq * 0.02)
    assert call.agent.rtp_src == fork_a
    relay.configure("c1", leg(CALLER_SDP), answer(fork_b, "b", False))  # B's 200, the SDP of its 183
    assert relay.receive_rtp(call.caller, audio(2), CALLER_SDP, 0.2)[1] == fork_b
    assert relay.receive_rtp(call.agent, audio(9, ssrc=0xA), fork_a, 0.2) is None  # a stray from A
    assert relay.receive_rtp(call.caller, audio(3), CALLER_SDP, 0.22)[1] == fork_b
    assert relay.receive_rtp(call.agent, audio(1, ssrc=0xB), fork_b, 0.23) is not None  # B latches at once
    # In-dialog answers (no fork tag) restart nothing at the same address.
    relay.configure("c1", leg(CALLER_SDP), LegMedia(fork_b, (fork_b[0], fork_b[1] + 1), "PCMU", 0, 96))
    assert call.agent.rtp_src == fork_b


@pytest.mark.parametrize("strict", [False, True])
def test_after_a_fork_switch_the_early_forks_stray_rtp_and_rtcp_take_nothing(strict: bool) -> None:
    """Strict mode checked the host only (a stray from fork A latched, and strict never re-latches:
    fork B was dropped for good); A's RTCP (its BYE when cancelled) latched RTCP to A."""
    fork_a, fork_b = ("10.0.0.2", 31000), ("10.0.0.2", 31002)

    def answer(addr, tag, early):
        return LegMedia(addr, (addr[0], addr[1] + 1), "PCMU", 0, 96, fork_tag=tag, early=early)

    relay, call = make(agent=answer(fork_a, "a", True), strict=strict)
    assert relay.receive_rtp(call.agent, audio(1, ssrc=0xA), fork_a, 0.0) is not None
    relay.configure("c1", leg(CALLER_SDP), answer(fork_b, "b", True))
    relay.configure("c1", leg(CALLER_SDP), answer(fork_b, "b", False))
    assert relay.receive_rtp(call.agent, audio(2, ssrc=0xA), fork_a, 0.02) is None
    assert relay.receive_rtcp(call.agent, receiver_report(0xA, []), (fork_a[0], fork_a[1] + 1), 0.02) is None
    assert relay.receive_rtp(call.agent, audio(1, ssrc=0xB), fork_b, 0.03) is not None
    assert call.agent.rtp_src == fork_b
    assert relay.receive_rtcp(call.agent, receiver_report(0xB, []), (fork_b[0], fork_b[1] + 1), 0.04) is not None
    assert call.agent.rtcp_src == (fork_b[0], fork_b[1] + 1)


def test_one_fork_early_then_final_keeps_its_latch() -> None:
    """No forking: a 183 and the 2xx of the same dialog restart nothing (the latch holds)."""
    nat = ("10.0.0.2", 6100)  # the SDP host, another port: latches at once when only one fork answered
    early = LegMedia(AGENT_SDP, (AGENT_SDP[0], AGENT_SDP[1] + 1), "PCMU", 0, 96, fork_tag="x", early=True)
    relay, call = make(agent=early)
    assert relay.receive_rtp(call.agent, audio(1), nat, 0.0) is not None
    relay.configure("c1", leg(CALLER_SDP), LegMedia(AGENT_SDP, (AGENT_SDP[0], AGENT_SDP[1] + 1), "PCMU", 0, 96,
                                                    fork_tag="x"))
    assert call.agent.rtp_src == nat
    assert relay.receive_rtp(call.caller, audio(1), CALLER_SDP, 0.02)[1] == nat


def test_rtcp_relayed_between_rtcp_ports() -> None:
    relay, call = make()
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1111)
    assert relay.receive_rtcp(call.caller, rr, (CALLER_SDP[0], 4001), 0.0) == (rr, (AGENT_SDP[0], 6001))
    assert relay.receive_rtcp(call.agent, b"\x80\xc9", (AGENT_SDP[0], 6001), 0.0) is None
    assert relay.stats.rtcp_relayed == [1, 0] and relay.stats.drops[1]["rtcp"] == 1
    # A call on hold with a=inactive sends RTCP only: it is live media for the media timeout.
    relay.receive_rtcp(call.caller, rr, (CALLER_SDP[0], 4001), 75.0)
    assert call.last_packet_s == 75.0


def key() -> str:
    return base64.b64encode(os.urandom(30)).decode()


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
@pytest.mark.parametrize("srtp_caller, srtp_agent", [(True, False), (False, True), (True, True)])
def test_srtp_on_either_leg(suite: str, srtp_caller: bool, srtp_agent: bool) -> None:
    ends = {}
    params = {}
    for side, on in (("caller", srtp_caller), ("agent", srtp_agent)):
        if on:
            gw_key, peer_key = key(), key()
            params[side] = SrtpParams(suite, gw_key, peer_key)
            ends[side] = SrtpLeg(SrtpParams(suite, peer_key, gw_key))  # the peer's view
    relay, call = make(caller=leg(CALLER_SDP, srtp=params.get("caller")),
                       agent=leg(AGENT_SDP, te=96, srtp=params.get("agent")))

    def send(side, pkt):
        return ends[side].protect(pkt) if side in ends else pkt

    def recv(side, wire):
        return ends[side].unprotect(wire) if side in ends else wire

    for seq in range(3):
        out, _ = relay.receive_rtp(call.caller, send("caller", audio(seq)), CALLER_SDP, 0.0)
        assert recv("agent", out) == audio(seq)
        out, _ = relay.receive_rtp(call.agent, send("agent", audio(seq, ssrc=2)), AGENT_SDP, 0.0)
        assert recv("caller", out) == audio(seq, ssrc=2)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1111)
    out, _ = relay.receive_rtcp(call.caller, ends["caller"].protect_rtcp(rr) if "caller" in ends else rr,
                                CALLER_SDP, 0.0)
    assert (ends["agent"].unprotect_rtcp(out) if "agent" in ends else out) == rr
    # A forged packet on an SRTP leg is dropped and counted; audio continues.
    side = "caller" if srtp_caller else "agent"
    src_leg, src = (call.caller, CALLER_SDP) if side == "caller" else (call.agent, AGENT_SDP)
    forged = bytearray(send(side, audio(50)))
    forged[-1] ^= 0xFF
    assert relay.receive_rtp(src_leg, bytes(forged), src, 0.0) is None
    assert relay.stats.drops[src_leg.direction]["srtp_auth"] == 1
    assert relay.receive_rtp(src_leg, send(side, audio(51)), src, 0.0) is not None


class FakeDetector:
    """Stands in for dtmf.detector.DetectorBank: reports a digit when a frame is loud."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.next_slot = 0

    def add_stream(self) -> int:
        self.next_slot += 1
        return self.next_slot - 1

    def remove_stream(self, slot: int) -> None:
        pass

    def process(self, slots, frames):
        self.calls.append((slots.copy(), frames.copy()))
        return [type("DigitDetected", (), {"slot": int(s), "digit": "5", "start_sample": 0, "decided_sample": 320})()
                for s, f in zip(slots, frames) if np.abs(f.astype(np.int32)).max() > 20000]


def test_dtmf_hook_batches_one_iteration_into_one_call() -> None:
    det = FakeDetector()
    relay = Relay(detector=det)
    calls = [relay.add_call(f"c{i}") for i in range(3)]
    for i in range(3):
        relay.configure(f"c{i}", leg(("10.0.1.1", 4000 + 2 * i)), leg(("10.0.2.1", 6000 + 2 * i)))
    loud = ulaw_encode(np.full(160, 30000, dtype=np.int16)).tobytes()
    payloads = [b"\xff" * 160, loud, bytes(0xF0 + i % 15 for i in range(160))]
    for i, call in enumerate(calls):
        # Forwarded at once, before the batch runs.
        assert relay.receive_rtp(call.caller, audio(1, payload=payloads[i]), ("10.0.1.1", 4000 + 2 * i), 0.0)
        relay.receive_rtp(call.agent, audio(1), ("10.0.2.1", 6000 + 2 * i), 0.0)  # not inspected
    assert relay.pending
    assert relay.flush() == []
    assert not relay.pending
    assert len(det.calls) == 1
    slots, frames = det.calls[0]
    assert slots.tolist() == [c.caller.slot for c in calls]
    assert np.array_equal(frames, ULAW_DECODE[np.frombuffer(b"".join(payloads), np.uint8).reshape(3, 160)])
    digits = [e for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert digits == [InBandDigitDetected("c1", "5", 0, 320)]


class FakeMasker:
    """Stands in for dtmf.masker.MaskerBank: one packet look-ahead, masks by negating samples."""

    def __init__(self) -> None:
        self.prev: dict[int, np.ndarray] = {}
        self.capture: dict[int, bool] = {}

    def add_stream(self) -> int:
        return 7

    def remove_stream(self, slot: int) -> None:
        pass

    def set_capture(self, slot: int, on: bool):
        was = self.capture.get(slot, False)
        self.capture[slot] = on
        if was and not on:
            prev = self.prev.pop(slot)
            return (np.full(160, 1000, np.int16), True) if prev[0] != 0 else (prev, False)
        if on:
            self.prev.pop(slot, None)
        return None

    def flush(self, slot: int):
        prev = self.prev.pop(slot, None)
        if prev is None:
            return None
        return (np.full(160, 1000, np.int16), True) if prev[0] != 0 else (prev, False)

    def process(self, slots, frames):
        out = np.zeros_like(frames)
        for r, s in enumerate(slots):
            prev = self.prev.get(int(s), np.zeros(160, np.int16))
            out[r] = np.full(160, 1000, np.int16) if prev[0] != 0 else prev
            self.prev[int(s)] = frames[r].copy()
        return out, out[:, 0] == 1000


def caller_feed(relay, call):
    """What the agent receives, and a function that feeds the relay one caller packet and flushes it."""
    sent: list[bytes] = []

    def feed(pkt: bytes) -> None:
        out = relay.receive_rtp(call.caller, pkt, CALLER_SDP, 0.0)
        if out:
            sent.append(out[0])
        sent.extend(d for _, d, _ in relay.flush())

    return sent, feed


def test_capture_holds_one_packet_masks_drops_events_and_renumbers() -> None:
    relay, call = make(detector=FakeDetector(), masker=FakeMasker())
    sent, feed = caller_feed(relay, call)

    tone = ulaw_encode(np.full(160, 5000, np.int16)).tobytes()
    quiet = bytes([0xFF]) * 160  # mu-law zero: the fake masker passes it unchanged
    feed(audio(1, payload=quiet))
    relay.set_capture("c1", True)
    feed(audio(2, payload=quiet))  # held
    assert len(sent) == 1
    feed(audio(3, payload=tone))  # releases 2 (unchanged, bit-exact), holds 3
    feed(event(4, 480, 5))  # not forwarded
    feed(event(5, 480, 5, end=True))  # not forwarded
    feed(audio(6, payload=quiet))  # releases 3 masked, holds 6
    sent.extend(d for _, d, _ in relay.set_capture("c1", False))  # releases 6
    feed(audio(7, payload=quiet))
    feed(audio(8, payload=quiet))
    pkts = [RtpPacket.parse(p) for p in sent]
    assert [p.sequence_number for p in pkts] == [1, 2, 3, 4, 5, 6]
    assert [p.timestamp for p in pkts] == [160 * s for s in (1, 2, 3, 6, 7, 8)]
    assert pkts[1].payload == quiet
    assert pkts[2].payload == ulaw_encode(np.full(160, 1000, np.int16)).tobytes()
    assert all(p.payload_type == 0 for p in pkts)
    tev = [e for e in iter(relay.next_event, None) if isinstance(e, TelephoneEventDetected)]
    assert [e.digit for e in tev] == ["5"]  # the app still learns of the event


def test_events_under_an_ssrc_of_their_own_shift_no_other_streams_numbers() -> None:
    """A phone (or SIPp's RFC 4733 pcaps) may send its events under another SSRC than its audio:
    withholding them must not move the audio's numbers back (the agent would take the next
    packets for duplicates and drop them)."""
    relay, call = make(detector=FakeDetector(), masker=FakeMasker())
    sent, feed = caller_feed(relay, call)

    quiet = bytes([0xFF]) * 160
    for seq in (1, 2, 3):
        feed(audio(seq, payload=quiet))
    relay.set_capture("c1", True)
    feed(audio(4, payload=quiet))
    for i in range(6):
        feed(bytes(RtpPacket(payload_type=101, sequence_number=7000 + i, timestamp=5000, ssrc=0x9999,
                             payload=struct.pack("!BBH", 5, (0x80 if i >= 3 else 0) | 10, 400))))
    for seq in (5, 6, 7):
        feed(audio(seq, payload=quiet))
    sent.extend(d for _, d, _ in relay.set_capture("c1", False))
    pkts = [RtpPacket.parse(p) for p in sent]
    assert [(p.ssrc, p.sequence_number) for p in pkts] == [(0x1111, s) for s in range(1, 8)]
    assert call.caller.withheld == {0x9999: [6, 24]}


def sender_report(ssrc: int, packets: int, octets: int, blocks: list[tuple[int, int]] = ()) -> bytes:
    """An SR with report blocks (SSRC, extended highest sequence number)."""
    body = struct.pack("!IQIII", ssrc, 0x0123456789ABCDEF, 777, packets, octets)
    body += b"".join(struct.pack("!IIIIII", s, 0, ext, 5, 0, 0) for s, ext in blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def receiver_report(ssrc: int, blocks: list[tuple[int, int]]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(struct.pack("!IIIIII", s, 0, ext, 5, 0, 0) for s, ext in blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def test_rtcp_counts_leave_out_the_withheld_events_both_ways() -> None:
    """RFC 3550 7.1: the agent's view of the renumbered stream holds in the caller's SRs (their
    packet and octet counts would otherwise show when and how long a key was pressed), and the
    caller's view of its own stream holds in the agent's reports."""
    relay, call = make(detector=FakeDetector(), masker=FakeMasker())
    quiet = bytes([0xFF]) * 160
    relay.receive_rtp(call.caller, audio(1, payload=quiet), CALLER_SDP, 0.0)
    relay.set_capture("c1", True)
    for i in range(3):
        assert relay.receive_rtp(call.caller, event(2 + i, 320, 7, end=i == 2), CALLER_SDP, 0.0) is None
    relay.receive_rtp(call.caller, audio(5, payload=quiet), CALLER_SDP, 0.0)
    relay.flush()
    sdes = struct.pack("!BBHI4s", 0x81, 202, 2, 0x1111, b"\x01\x01a\x00")
    sr = sender_report(0x1111, 5, 2 * 160 + 3 * 4, [(0x2222, 70000)])
    out, _ = relay.receive_rtcp(call.caller, sr + sdes, (CALLER_SDP[0], 4001), 0.0)
    assert out == sender_report(0x1111, 2, 2 * 160, [(0x2222, 70000)]) + sdes
    # The agent received 1 and 2 (5, renumbered): its reports about 0x1111 get the 3 back.
    rr = receiver_report(0x2222, [(0x1111, 0x10002), (0x3333, 9)])
    out, _ = relay.receive_rtcp(call.agent, rr, (AGENT_SDP[0], 6001), 0.0)
    assert out == receiver_report(0x2222, [(0x1111, 0x10005), (0x3333, 9)])
    out, _ = relay.receive_rtcp(call.agent, sender_report(0x2222, 9, 9, [(0x1111, 2)]), (AGENT_SDP[0], 6001), 0.0)
    assert out == sender_report(0x2222, 9, 9, [(0x1111, 5)])
    # Other streams' reports pass untouched; counts wrap as the fields do.
    other = sender_report(0x4444, 1, 1)
    assert relay.receive_rtcp(call.caller, other, (CALLER_SDP[0], 4001), 0.0)[0] == other
    out, _ = relay.receive_rtcp(call.caller, sender_report(0x1111, 1, 0), (CALLER_SDP[0], 4001), 0.0)
    assert out == sender_report(0x1111, 2**32 - 2, 2**32 - 12)


@pytest.mark.parametrize("network", ["in order", "tail after its successor", "tail twice"])
def test_a_tone_tail_arriving_late_or_twice_during_a_capture_never_reaches_the_agent(network: str) -> None:
    """The masker follows a stream in arrival order: a tone's last milliseconds arriving after the
    packet behind them (or again) used to pass as fresh audio, bit-exact, and a classifier named the
    key from them (outside probe: 81 % against 6 % chance). Late and repeated audio is dropped while
    masking."""
    from dtmf.masker import MaskerBank, MaskMode
    from dtmf.tones import dtmf_tone, to_int16

    relay, call = make(masker=MaskerBank(MaskMode.FLAT))
    relay.set_capture("c1", True, now=0.0)
    signal = np.zeros(160 * 12, dtype=np.float64)
    tone = dtmf_tone("7", 70.0, -8.0)  # 560 samples from 928: ends 6 ms into packet 9
    signal[928:928 + tone.size] = tone
    codes = ulaw_encode(to_int16(signal)).tobytes()
    packets = [audio(seq, payload=codes[160 * seq:160 * seq + 160]) for seq in range(12)]
    order = list(range(12))
    if network == "tail after its successor":
        order[9], order[10] = 10, 9
    elif network == "tail twice":
        order.insert(10, 9)
    sent = []
    for i, seq in enumerate(order):
        out = relay.receive_rtp(call.caller, packets[seq], CALLER_SDP, now=0.02 * i)
        if out:
            sent.append(out[0])
        sent.extend(d for _, d, _ in relay.flush(now=0.02 * i))
    sent.extend(d for _, d, _ in relay.set_capture("c1", False, now=1.0))
    tail = codes[160 * 9:160 * 9 + 48]
    assert all(p[12:60] != tail for p in sent)
    assert relay.stats.drops[0]["late"] == (0 if network == "in order" else 1)


def test_capture_refused_without_masker_or_for_unknown_call() -> None:
    relay, _ = make()
    with pytest.raises(CaptureUnavailable):
        relay.set_capture("c1", True)
    with pytest.raises(CaptureUnavailable):
        relay.set_capture("nope", True)


def test_remove_call_discards_pending_and_held_packets() -> None:
    relay, call = make(detector=FakeDetector(), masker=FakeMasker())
    relay.set_capture("c1", True)
    relay.receive_rtp(call.caller, audio(1), CALLER_SDP, 0.0)
    relay.remove_call("c1")
    assert relay.flush() == [] and "c1" not in relay.calls


def test_same_caller_twice_in_one_iteration_goes_through_in_order() -> None:
    det = FakeDetector()
    relay, call = make(detector=det)
    loud = ulaw_encode(np.full(160, 30000, dtype=np.int16)).tobytes()
    relay.receive_rtp(call.caller, audio(1, payload=b"\xff" * 160), CALLER_SDP, 0.0)
    relay.receive_rtp(call.caller, audio(2, payload=loud), CALLER_SDP, 0.0)
    relay.flush()
    assert [s.tolist() for s, _ in det.calls] == [[0], [0]]
    assert det.calls[0][1].max() == 0 and det.calls[1][1].min() > 20000


def test_real_detector_reports_in_band_digits_from_pcmu() -> None:
    detector_mod = pytest.importorskip("dtmf.detector")
    from dtmf.tones import dtmf_sequence, to_int16

    relay, call = make(detector=detector_mod.DetectorBank(capacity=4))
    signal, _ = dtmf_sequence("159#", tail_ms=200.0)
    codes = ulaw_encode(to_int16(signal)).tobytes()
    for seq in range(len(codes) // 160):
        out = relay.receive_rtp(call.caller, audio(seq, payload=codes[160 * seq:160 * seq + 160]), CALLER_SDP, 0.0)
        assert out is not None and out[0][12:] == codes[160 * seq:160 * seq + 160]
        relay.flush()
    digits = [e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert "".join(digits) == "159#"


def test_capture_with_real_masker_keeps_sequence_continuous_and_hides_the_tone() -> None:
    masker_mod = pytest.importorskip("dtmf.masker")
    detector_mod = pytest.importorskip("dtmf.detector")
    from dtmf.tones import dtmf_sequence, to_int16

    relay, call = make(detector=detector_mod.DetectorBank(capacity=4),
                       masker=masker_mod.MaskerBank(masker_mod.MaskMode.SILENCE, capacity=4))
    signal, _ = dtmf_sequence("7", lead_ms=200.0, tail_ms=200.0)
    codes = ulaw_encode(to_int16(signal)).tobytes()
    relay.set_capture("c1", True)
    sent = []
    for seq in range(len(codes) // 160):
        out = relay.receive_rtp(call.caller, audio(seq, payload=codes[160 * seq:160 * seq + 160]), CALLER_SDP, 0.0)
        assert out is None  # held for the look-ahead
        sent.extend(d for _, d, _ in relay.flush())
    sent.extend(d for _, d, _ in relay.set_capture("c1", False))
    pkts = [RtpPacket.parse(p) for p in sent]
    assert [p.sequence_number for p in pkts] == list(range(len(codes) // 160))
    agent_audio = np.concatenate([ULAW_DECODE[np.frombuffer(p.payload, np.uint8)] for p in pkts])
    assert np.abs(agent_audio.astype(np.int32)).max() < 100  # the tone never reached the agent
    digits = [e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert digits == ["7"]  # still detected for the capture


def test_media_cores_do_no_io() -> None:
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "gateway" / "media"
    for name in ("rtp.py", "srtp.py", "relay.py"):
        tree = ast.parse((root / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"asyncio", "socket", "ssl", "time", "prometheus_client"}, name


def test_telephone_events_reported_once_and_lost_end_times_out() -> None:
    from gateway.media.relay import TelephoneEventEnded

    relay, call = make()
    for seq, end in ((1, False), (2, False), (3, True), (4, True), (5, True)):  # RFC 4733 end retransmits
        assert relay.receive_rtp(call.caller, event(seq, 800, 9, end=end), CALLER_SDP, 1.0) is not None
    assert relay.receive_rtp(call.caller, event(6, 1600, 11), CALLER_SDP, 2.0) is not None  # '#', end lost
    assert relay.timer_changed
    when = relay.get_timer()
    assert when is not None and when >= 2.0
    while when is not None and when < 3.0:  # the clock advances only to the timers the core asks for
        relay.handle_timer(when)
        when = relay.get_timer()
    events = [e for e in iter(relay.next_event, None) if not isinstance(e, SourceLatched)]
    assert events == [
        TelephoneEventDetected("c1", "9", 800, 10),
        TelephoneEventEnded("c1", "9", 800, 400, True),
        TelephoneEventDetected("c1", "#", 1600, 10),
        TelephoneEventEnded("c1", "#", 1600, 400, False),
    ]
    assert relay.get_timer() >= 3.0  # only the once-a-second metrics sample is left


def test_malformed_telephone_event_is_dropped() -> None:
    relay, call = make()
    bad = bytes(RtpPacket(payload_type=101, sequence_number=1, timestamp=5, payload=b"\x01\x02"))
    assert relay.receive_rtp(call.caller, bad, CALLER_SDP, 0.0) is None
    assert relay.stats.drops[0]["telephone_event"] == 1


def many_calls(n: int, detector=None, masker=None, **kw):
    relay = Relay(detector=detector, masker=masker, **kw)
    calls = [relay.add_call(f"c{i}") for i in range(n)]
    for i in range(n):
        relay.configure(f"c{i}", leg(("10.0.1.1", 4000 + 2 * i)), leg(("10.0.2.1", 6000 + 2 * i)))
    return relay, calls


def test_detection_waits_for_its_window_then_runs_once_from_the_timer() -> None:
    det = FakeDetector()
    relay, calls = many_calls(3, detector=det, detect_window_s=0.010, detect_batch_rows=100)
    for i, call in enumerate(calls):
        # Forwarded at once, whatever the detector's schedule.
        assert relay.receive_rtp(call.caller, audio(1), ("10.0.1.1", 4000 + 2 * i), now=5.0 + i * 0.001)
    assert relay.wake and relay.timer_changed
    assert relay.process_pending(5.004) == [] and det.calls == []  # inside the window: nothing yet
    assert relay.get_timer() == pytest.approx(5.010)
    relay.handle_timer(5.010)
    assert len(det.calls) == 1 and det.calls[0][0].tolist() == [c.caller.slot for c in calls]
    assert not relay.pending


def test_detection_runs_at_once_when_the_batch_is_full() -> None:
    det = FakeDetector()
    relay, calls = many_calls(4, detector=det, detect_batch_rows=3)
    for i, call in enumerate(calls[:3]):
        relay.wake = False
        relay.receive_rtp(call.caller, audio(1), ("10.0.1.1", 4000 + 2 * i), now=1.0)
    assert relay.wake  # the third row filled the batch
    relay.process_pending(1.0)
    assert [s.tolist() for s, _ in det.calls] == [[0, 1, 2]]
    relay.receive_rtp(calls[3].caller, audio(1), ("10.0.1.1", 4006), now=1.001)
    relay.process_pending(1.002)
    assert len(det.calls) == 1 and relay.pending


def test_a_due_batch_waits_while_datagrams_wait_up_to_its_bound() -> None:
    """Outside a capture the detector yields to forwarding: with datagrams waiting (`busy`) a full
    batch waits, until DETECT_DEFER times its rows or its window; when the sockets are quiet it runs."""
    from gateway.media.relay import DETECT_DEFER

    det = FakeDetector()
    relay, calls = many_calls(2, detector=det, detect_batch_rows=3, detect_window_s=0.010)
    rows = 0

    def arrive(now: float) -> None:
        nonlocal rows
        call = calls[rows % 2]
        relay.receive_rtp(call.caller, audio(1 + rows // 2), ("10.0.1.1", 4000 + 2 * (rows % 2)), now=now)
        rows += 1

    for _ in range(3):
        arrive(1.0)
    relay.process_pending(1.0, busy=True)
    assert relay.detect_rows_pending == 3 and det.calls == []  # full, but packets are waiting
    relay.process_pending(1.0, busy=False)
    assert relay.detect_rows_pending == 0 and det.calls  # a quiet moment: it runs
    for _ in range(DETECT_DEFER * 3 - 1):
        arrive(2.0)
        relay.process_pending(2.0, busy=True)
    assert relay.detect_rows_pending == DETECT_DEFER * 3 - 1
    arrive(2.0)
    relay.process_pending(2.0, busy=True)
    # The row bound: a batch a call (each call no longer than one batch's), still busy, until
    # less than a batch is left; that rest waits as any batch does.
    assert relay.detect_rows_pending == DETECT_DEFER * 3 - 3 and relay.wake
    for left in range(DETECT_DEFER * 3 - 6, -1, -3):
        relay.process_pending(2.0, busy=True)
        assert relay.detect_rows_pending == left
    # An overloaded loop (a FIFO far past its bound) never keeps more than DETECT_DEFER - 1
    # batches after a call: it cannot fall further behind than it did with one call for all.
    for _ in range(10 * 3):
        arrive(2.5)
    relay.process_pending(2.5, busy=True)
    assert relay.detect_rows_pending == (DETECT_DEFER - 1) * 3
    for _ in range(DETECT_DEFER):
        relay.process_pending(2.5, busy=False)  # a quiet moment: the rest goes, a batch a call
    assert relay.detect_rows_pending == 0
    arrive(3.0)
    relay.process_pending(3.0 + DETECT_DEFER * 0.010 - 0.001, busy=True)
    assert relay.detect_rows_pending == 1
    relay.process_pending(3.0 + DETECT_DEFER * 0.010, busy=True)
    assert relay.detect_rows_pending == 0  # the age bound


def test_detector_sees_each_stream_in_order_across_batches_and_rounds() -> None:
    det = FakeDetector()
    relay, calls = many_calls(2, detector=det, detect_batch_rows=5)
    sent_first_samples: dict[int, list[int]] = {0: [], 1: []}
    seqs = [0, 0]
    now = 0.0
    # Bursty arrival: stream 0 sometimes sends 3 packets in one batch.
    for burst in [(0, 0, 0, 1), (1, 0), (0, 1, 1, 1, 0, 0), (1,), (0, 1, 0)]:
        for i in burst:
            code = 0x80 + (seqs[i] % 100) + 100 * i
            seqs[i] += 1
            sent_first_samples[i].append(int(ULAW_DECODE[code]))
            relay.receive_rtp(calls[i].caller, audio(seqs[i], payload=bytes([code]) * 160),
                              ("10.0.1.1", 4000 + 2 * i), now)
        now += 0.004
        relay.process_pending(now)
    relay.flush()
    seen: dict[int, list[int]] = {0: [], 1: []}
    for slots, frames in det.calls:
        assert len(set(slots.tolist())) == len(slots)  # a slot at most once per call
        for s, f in zip(slots, frames):
            seen[int(s)].append(int(f[0]))
    assert seen == sent_first_samples


def test_mixed_codecs_decode_in_one_batch() -> None:
    det = FakeDetector()
    relay = Relay(detector=det)
    a, b = relay.add_call("a"), relay.add_call("b")
    relay.configure("a", leg(CALLER_SDP), leg(AGENT_SDP))
    relay.configure("b", leg(("10.0.0.5", 4000), pt=8, codec="PCMA"), leg(("10.0.0.6", 4000), pt=8, codec="PCMA"))
    body = bytes(range(80, 240))
    relay.receive_rtp(a.caller, audio(1, payload=body), CALLER_SDP, 0.0)
    relay.receive_rtp(b.caller, audio(1, pt=8, payload=body), ("10.0.0.5", 4000), 0.0)
    relay.flush()
    (slots, frames), = det.calls
    from dtmf.g711 import ALAW_DECODE
    codes = np.frombuffer(body, np.uint8)
    assert np.array_equal(frames, np.stack([ULAW_DECODE[codes], ALAW_DECODE[codes]]))


def test_remove_call_drops_its_pending_detection_rows() -> None:
    det = FakeDetector()
    relay, calls = many_calls(2, detector=det)
    for i, call in enumerate(calls):
        relay.receive_rtp(call.caller, audio(1), ("10.0.1.1", 4000 + 2 * i), 0.0)
    relay.remove_call("c0")
    relay.flush()
    assert [s.tolist() for s, _ in det.calls] == [[calls[1].caller.slot]]


@pytest.mark.parametrize("marked", [True, False])
def test_a_key_pressed_twice_with_the_pause_suppressed_stays_two_digits(marked: bool) -> None:
    """A caller phone with silence suppression (PJSIP's default VAD) sends no packets in the pause
    between two presses of "1"; its next talkspurt carries the RTP marker (RFC 3551 4.1) and the
    detector gets the pause back as silence. Without the marker nothing says a pause was there."""
    detector_mod = pytest.importorskip("dtmf.detector")
    from dtmf.tones import dtmf_tone, to_int16

    relay, call = make(detector=detector_mod.DetectorBank(capacity=4))
    tone = ulaw_encode(to_int16(dtmf_tone("1", 100.0, level_dbm0=-10.0))).tobytes()  # 5 packets
    quiet = ulaw_encode(np.zeros(160, dtype=np.int16)).tobytes()
    packets = [quiet] * 5 + [tone[160 * i:160 * i + 160] for i in range(5)]  # the whole pause suppressed
    first_after_gap = len(packets)
    packets += [tone[160 * i:160 * i + 160] for i in range(5)] + [quiet] * 10
    now = 0.0
    for seq, payload in enumerate(packets):
        now += 0.02
        if seq == first_after_gap:
            now += 0.08  # the pause's four packets were never sent
        data = bytearray(audio(seq, payload=payload))
        struct.pack_into("!I", data, 4, 160 * seq + (640 if seq >= first_after_gap else 0))  # the RTP clock ran on
        if seq == first_after_gap and marked:
            data[1] |= 0x80
        assert relay.receive_rtp(call.caller, bytes(data), CALLER_SDP, now) is not None
        relay.flush(now)
    digits = "".join(e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected))
    assert digits == ("11" if marked else "1")


def test_a_removed_call_is_freed_by_reference_counting_alone():
    """No reference cycle keeps a removed call's legs (and, at the edge, their sockets) alive until
    a full pass of the cyclic collector, which would walk every such call while the audio loop waits."""
    import gc

    from dtmf.masker import MaskerBank, MaskMode
    from gateway.media.relay import Leg

    gc.collect()
    gc.disable()
    try:
        relay = Relay(masker=MaskerBank(MaskMode.SILENCE))
        for i in range(3):
            call_id = f"freed-by-refcount-{i}"  # other tests' live legs may be around: ours are these
            relay.add_call(call_id)
            relay.configure(call_id, leg(CALLER_SDP), leg(AGENT_SDP, te=96))
            relay.set_capture(call_id, True, now=0.0)
            call = relay.calls[call_id]
            for seq in range(3):
                relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, 0.02 * seq)
                relay.receive_rtp(call.agent, audio(seq), AGENT_SDP, 0.02 * seq)
                relay.process_pending(0.02 * seq + 0.001)
            assert call.caller.held is not None
        del call
        for i in range(3):
            relay.remove_call(f"freed-by-refcount-{i}")
        relay.handle_timer(1.0)  # stale deadline entries dropped
        assert [o for o in gc.get_objects() if type(o) is Leg and o.call_id.startswith("freed-by-refcount-")] == []
    finally:
        gc.enable()
