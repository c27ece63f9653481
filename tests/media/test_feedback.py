"""Caller feedback tones: spliced into the agent->caller packets, bit-exact before and after."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import numpy as np
import pytest

from dtmf.g711 import ALAW_DECODE, ULAW_DECODE
from dtmf.tones import FEEDBACK_TONES, feedback_tone
from gateway.extensions import MaskingBridge
from gateway.media.leg import Direction, LegMedia, SrtpParams
from gateway.media.relay import MAX_FEEDBACK_SAMPLES, FeedbackUnavailable, Relay
from gateway.media.rtp import RtpPacket
from gateway.media.srtp import SrtpLeg
from gateway.transport.rtp import RtpMediaController

CALLER = ("10.0.0.1", 4000)
AGENT = ("10.0.0.2", 6000)
SUITE = "AES_CM_128_HMAC_SHA1_80"
RATE_HZ = 8000


def leg(addr, codec="PCMU", pt=0, te=101, srtp=None) -> LegMedia:
    return LegMedia(remote_rtp=addr, remote_rtcp=(addr[0], addr[1] + 1), codec=codec, audio_pt=pt,
                    telephone_event_pt=te, direction=Direction.SENDRECV, srtp=srtp)


def agent_packet(seq: int, pt: int = 0, size: int = 160, ssrc: int = 0x2222, marker: bool = False,
                 padding: int = 0) -> bytes:
    """Agent speech stand-in: a payload that differs in every packet (any change shows)."""
    body = bytes((seq * 31 + i * 7) & 0xFF for i in range(size))
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=size * seq, ssrc=ssrc,
                           marker=int(marker), payload=body, padding_size=padding))


def make(codec: str = "PCMU", pt: int = 0) -> tuple[Relay, object]:
    relay = Relay()
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER, codec, pt), leg(AGENT, codec, pt))
    return relay, call


def relay_agent(relay: Relay, call, pkts: list[bytes]) -> list[bytes]:
    out = []
    for p in pkts:
        sent = relay.receive_rtp(call.agent, p, AGENT, now=1.0)
        assert sent is not None and sent[1] == CALLER
        out.append(sent[0])
    return out


def tone_power(samples: np.ndarray, freq_hz: float) -> float:
    """Share of a 20 ms window's power within 50 Hz of `freq_hz`."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    bins = np.fft.rfftfreq(x.size, 1 / RATE_HZ)
    total = spectrum.sum()
    return float(spectrum[np.abs(bins - freq_hz) <= 50].sum() / total) if total else 0.0


def on_off(kind: str, packet_samples: int = 160) -> list[bool]:
    """Whether each packet of a tone is sounding, from the FEEDBACK_TONES table (not the generator)."""
    states: list[bool] = []
    for _, on_ms, off_ms in FEEDBACK_TONES[kind]:
        states += [True] * int(on_ms * RATE_HZ / 1000) + [False] * int(off_ms * RATE_HZ / 1000)
    return [states[i] for i in range(0, len(states), packet_samples)]


def test_caller_hears_accepted_pattern_with_agent_stream_bit_exact_around_it() -> None:
    relay, call = make()
    before = [agent_packet(s) for s in range(100, 110)]
    assert relay_agent(relay, call, before) == before
    relay.play_feedback("c1", "accepted")
    pattern = on_off("accepted")  # 120 ms on, 60 off, 120 on: 15 packets
    during_in = [agent_packet(s) for s in range(110, 110 + len(pattern))]
    during = relay_agent(relay, call, during_in)
    after = [agent_packet(s) for s in range(110 + len(pattern), 130 + len(pattern))]
    assert relay_agent(relay, call, after) == after
    for sent, orig, sounding in zip(during, during_in, pattern):
        assert sent[:12] == orig[:12]  # RFC 3550: SSRC, sequence number, timestamp, marker kept
        assert len(sent) == len(orig)
        samples = ULAW_DECODE[np.frombuffer(sent[12:], np.uint8)]
        if sounding:
            assert tone_power(samples, 1800.0) > 0.95
            assert 20 * np.log10(np.sqrt(np.mean(samples.astype(float) ** 2)) / 32768) > -25
        else:
            assert np.abs(samples).max() <= 8  # the tone's gap is silence, not the agent's audio
    assert relay.stats.feedback_packets == len(pattern)
    assert relay.stats.relayed[1] == 10 + len(pattern) + 20


def test_spliced_samples_follow_the_tone_generator() -> None:
    relay, call = make(codec="PCMA", pt=8)
    relay.play_feedback("c1", "complete")
    tone = feedback_tone("complete")
    n = -(-tone.size // 160)
    sent = relay_agent(relay, call, [agent_packet(s, pt=8) for s in range(n)])
    got = np.concatenate([ALAW_DECODE[np.frombuffer(p[12:], np.uint8)] for p in sent])[:tone.size]
    # A-law quantisation: error below 1/16 of the sample's magnitude (plus the zero step).
    assert np.all(np.abs(got.astype(int) - tone) <= np.abs(tone) / 16 + 16)


def test_caller_to_agent_and_telephone_events_untouched_while_tone_plays() -> None:
    relay, call = make()
    relay.play_feedback("c1", "error")
    up = agent_packet(5, ssrc=0x1111)
    assert relay.receive_rtp(call.caller, up, CALLER, 1.0) == (up, AGENT)
    event = bytes(RtpPacket(payload_type=101, sequence_number=1, timestamp=0, ssrc=0x2222,
                            payload=b"\x05\x0a\x01\x90"))
    assert relay.receive_rtp(call.agent, event, AGENT, 1.0) == (event, CALLER)
    assert relay.stats.feedback_packets == 0
    assert relay.receive_rtp(call.agent, agent_packet(2), AGENT, 1.0)[0] != agent_packet(2)


def test_tone_ending_inside_a_packet_keeps_the_agent_audio_after_it() -> None:
    relay, call = make()
    tone_codes = 3200  # 'error': 400 ms
    pkts = [agent_packet(s, size=240) for s in range(14)]  # 30 ms packets: the tone ends 80 codes into the 14th
    relay.play_feedback("c1", "error")
    sent = relay_agent(relay, call, pkts)
    last = sent[13]
    cut = tone_codes - 13 * 240
    assert last[12 + cut:] == pkts[13][12 + cut:]
    assert last[12:12 + cut] != pkts[13][12:12 + cut]
    assert relay.receive_rtp(call.agent, agent_packet(14, size=240), AGENT, 1.0)[0] == agent_packet(14, size=240)


def test_padding_and_marker_of_the_agent_packet_are_kept() -> None:
    relay, call = make()
    relay.play_feedback("c1", "accepted")
    pkt = agent_packet(1, marker=True, padding=4)
    out = relay_agent(relay, call, [pkt])[0]
    assert out[:12] == pkt[:12] and out[-4:] == pkt[-4:] and len(out) == len(pkt)
    assert out[12:172] != pkt[12:172]


def test_tones_queue_back_to_back_and_a_flood_is_bounded() -> None:
    relay, call = make()
    relay.play_feedback("c1", "accepted")
    relay.play_feedback("c1", "accepted")
    n = 2 * feedback_tone("accepted").size // 160
    sent = relay_agent(relay, call, [agent_packet(s) for s in range(n + 1)])
    sounding = [tone_power(ULAW_DECODE[np.frombuffer(p[12:], np.uint8)], 1800.0) > 0.95 for p in sent]
    assert sounding == on_off("accepted") * 2 + [False]
    assert sent[-1] == agent_packet(n)
    for _ in range(20):
        relay.play_feedback("c1", "error")
    queued = MAX_FEEDBACK_SAMPLES // feedback_tone("error").size
    assert relay.stats.feedback_dropped == 20 - queued
    assert len(call.agent.feedback) <= MAX_FEEDBACK_SAMPLES


def test_feedback_refused_for_unknown_kind_call_or_unnegotiated_media() -> None:
    relay, _ = make()
    with pytest.raises(FeedbackUnavailable, match="unknown feedback tone"):
        relay.play_feedback("c1", "fanfare")
    with pytest.raises(FeedbackUnavailable, match="call has no media"):
        relay.play_feedback("nope", "accepted")
    relay.add_call("c2")
    with pytest.raises(FeedbackUnavailable, match="call has no media"):
        relay.play_feedback("c2", "accepted")


def test_codec_change_drops_a_pending_tone_and_call_end_forgets_it() -> None:
    relay, call = make()
    relay.play_feedback("c1", "error")
    relay.configure("c1", leg(CALLER), leg(AGENT))  # same codec: the tone stays
    assert call.agent.feedback is not None
    relay.configure("c1", leg(CALLER, "PCMA", 8), leg(AGENT, "PCMA", 8))
    assert call.agent.feedback is None
    pkt = agent_packet(1, pt=8)
    assert relay_agent(relay, call, [pkt]) == [pkt]


def test_srtp_legs_reprotect_the_spliced_packet() -> None:
    keys = [base64.b64encode(os.urandom(30)).decode() for _ in range(4)]
    # Gateway side of each leg, and the peer's matching end.
    gw_caller = SrtpParams(SUITE, keys[0], keys[1])
    gw_agent = SrtpParams(SUITE, keys[2], keys[3])
    caller_end = SrtpLeg(SrtpParams(SUITE, keys[1], keys[0]))
    agent_end = SrtpLeg(SrtpParams(SUITE, keys[3], keys[2]))
    relay = Relay()
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER, srtp=gw_caller), leg(AGENT, srtp=gw_agent))
    relay.play_feedback("c1", "accepted")
    plain = [agent_packet(s) for s in range(16)]
    wire = relay_agent(relay, call, [agent_end.protect(p) for p in plain])
    got = [caller_end.unprotect(w) for w in wire]
    assert got[15] == plain[15]
    assert all(g[:12] == p[:12] for g, p in zip(got, plain))
    assert tone_power(ULAW_DECODE[np.frombuffer(got[0][12:], np.uint8)], 1800.0) > 0.95
    assert relay.stats.feedback_packets == 15


class _FakeGateway:
    def __init__(self, media) -> None:
        self.media = media


def test_masking_bridge_plays_through_the_media_and_skips_ended_calls() -> None:
    played = []

    class Media:
        calls = {"live": object()}

        def play_feedback(self, call_id: str, kind: str) -> None:
            played.append((call_id, kind))

    bridge = MaskingBridge(_FakeGateway(Media()))
    bridge.play_feedback("live", "accepted")
    bridge.play_feedback("gone", "error")
    assert played == [("live", "accepted")]


async def test_loopback_caller_receives_tone_over_agent_packets() -> None:
    def sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    loop = asyncio.get_running_loop()
    ctl = RtpMediaController("127.0.0.1", 31200, 31299, relay=Relay())
    caller, agent = sock(), sock()
    try:
        media = ctl.open_call("call-1")
        cp, ap = caller.getsockname(), agent.getsockname()
        media.configure(leg(cp), leg(ap))
        received = []
        for seq in range(17):
            agent.sendto(agent_packet(seq), ("127.0.0.1", media.agent_port))
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(caller, 2048), 2.0)
            received.append(data)
            if seq == 0:
                # The agent is sending (an agent silent for FEEDBACK_IDLE_S gets the relay's own packets).
                ctl.play_feedback("call-1", "accepted")
        assert [r[:12] for r in received] == [agent_packet(s)[:12] for s in range(17)]
        assert received[0] == agent_packet(0)
        assert tone_power(ULAW_DECODE[np.frombuffer(received[1][12:], np.uint8)], 1800.0) > 0.95
        assert received[16] == agent_packet(16)
        with pytest.raises(FeedbackUnavailable):
            media.play_feedback("fanfare")
    finally:
        ctl.close()
        caller.close()
        agent.close()


# The agent silent (VAD, silence suppression, mute): the relay sends the tone itself.

def run_timer(relay: Relay, until: float) -> list[tuple[float, bytes, tuple[str, int]]]:
    """Fire the relay's timer whenever it is due up to `until`, as the edge does: (time, bytes, dest)."""
    out = []
    while True:
        when = relay.get_timer()
        if when is None or when > until:
            return out
        for leg, data, dest in relay.handle_timer(when):
            assert leg.name == "caller"  # sent from the caller leg's socket, to the caller
            out.append((when, data, dest))


def test_a_silent_agent_gets_the_tone_sent_in_the_relays_own_packets() -> None:
    relay, call = make()
    relay.play_feedback("c1", "accepted", now=10.0)
    sent = run_timer(relay, 11.0)
    tone = feedback_tone("accepted")
    n = -(-tone.size // 160)
    assert len(sent) == n
    assert [t for t, _, _ in sent] == pytest.approx([10.0 + 0.02 * i for i in range(n)])
    pkts = [RtpPacket.parse(d) for _, d, _ in sent]
    assert {d for _, _, d in sent} == {CALLER}
    assert len({p.ssrc for p in pkts}) == 1 and pkts[0].ssrc != 0x2222
    assert [(p.sequence_number - pkts[0].sequence_number) & 0xFFFF for p in pkts] == list(range(n))
    assert [(p.timestamp - pkts[0].timestamp) & 0xFFFFFFFF for p in pkts] == [160 * i for i in range(n)]
    assert [p.marker for p in pkts] == [1] + [0] * (n - 1)
    assert {p.payload_type for p in pkts} == {0}
    heard = ULAW_DECODE[np.frombuffer(b"".join(p.payload for p in pkts), dtype=np.uint8)]
    assert np.array_equal(heard[:tone.size], ULAW_DECODE[np.frombuffer(
        relay_encode_ulaw(tone), dtype=np.uint8)])
    assert not heard[tone.size:].any()  # the last packet is padded with silence
    assert relay.stats.feedback_packets == n
    assert relay.get_timer() is None  # nothing left to send


def relay_encode_ulaw(samples: np.ndarray) -> bytes:
    from dtmf.g711 import ENCODE_TABLES
    return ENCODE_TABLES["PCMU"][samples.view(np.uint16)].tobytes()


def test_a_talking_agent_carries_the_tone_and_the_relay_takes_over_when_it_stops() -> None:
    relay, call = make()
    t = 20.0
    for s in range(5):
        t += 0.02
        relay.receive_rtp(call.agent, agent_packet(100 + s), AGENT, now=t)
    relay.play_feedback("c1", "error", now=t + 0.001)
    assert run_timer(relay, t + 0.05) == []  # the agent's packets carry it while they come
    spliced = 0
    for s in range(3):
        t += 0.02
        out = relay.receive_rtp(call.agent, agent_packet(105 + s), AGENT, now=t)
        spliced += out[0][12:] != agent_packet(105 + s)[12:]
        assert run_timer(relay, t + 0.019) == []
    assert spliced == 3
    # The agent goes quiet: after FEEDBACK_IDLE_S the relay sends the rest itself.
    sent = run_timer(relay, t + 2.0)
    assert sent and sent[0][0] == pytest.approx(t + 0.06)
    total = -(-feedback_tone("error").size // 160)
    assert len(sent) == total - 3
    assert relay.stats.feedback_packets == total


def test_relay_feedback_goes_through_the_callers_srtp_and_not_to_a_caller_on_hold() -> None:
    keys = [base64.b64encode(os.urandom(30)).decode() for _ in range(2)]
    relay = Relay()
    relay.add_call("c1")
    caller_srtp = SrtpParams(SUITE, keys[0], keys[1])
    relay.configure("c1", leg(CALLER, srtp=caller_srtp), leg(AGENT))
    relay.play_feedback("c1", "accepted", now=5.0)
    sent = run_timer(relay, 5.05)
    assert len(sent) == 3
    # The caller's end of the SDES exchange: its remote key is our local one.
    caller_end = SrtpLeg(SrtpParams(SUITE, keys[1], keys[0]))
    for _, data, _ in sent:
        assert len(data) == 12 + 160 + 10
        assert len(RtpPacket.parse(caller_end.unprotect(data)).payload) == 160
    relay.configure("c1", LegMedia(CALLER, None, "PCMU", 0, 101, direction=Direction.SENDONLY), leg(AGENT))
    assert run_timer(relay, 6.0) == []  # a caller that only sends hears nothing: the tone runs out
    assert relay.get_timer() is None


def test_call_end_forgets_a_tone_the_relay_was_sending() -> None:
    relay, call = make()
    relay.play_feedback("c1", "complete", now=1.0)
    assert len(run_timer(relay, 1.01)) == 1
    relay.remove_call("c1")
    assert relay.get_timer() is None
    assert relay.handle_timer(3.0) == []


class _Calls:
    """The B2BUA's call lookup: every call's agent is agent-1."""

    def call(self, call_id: str):
        return type("Call", (), {"agent": "agent-1"})()


@pytest.mark.parametrize("ctype", ["application/dtmf-relay", "application/x-dtmf-relay", "application/x-dtmf",
                                   "application/vnd.nortelnetworks.digits", "multipart/mixed", "application/foo",
                                   None])
def test_every_caller_info_with_a_body_is_withheld_while_masking(ctype) -> None:
    """Keypad digits come in many INFO forms; one the gateway does not know must not reach the agent."""
    gateway = _FakeGateway(None)
    gateway.b2bua = _Calls()
    gateway.mask_policy = lambda agent: "capture"
    bridge = MaskingBridge(gateway)
    assert bridge.withholds_info("c", ctype, b"x", capturing=True)
    assert not bridge.withholds_info("c", ctype, b"x", capturing=False)
    assert not bridge.withholds_info("c", ctype, b"", capturing=True)  # a keep-alive INFO carries nothing
    gateway.mask_policy = lambda agent: "always"
    assert bridge.withholds_info("c", ctype, b"x", capturing=False)


def test_picture_fast_update_info_is_relayed_while_masking() -> None:
    gateway = _FakeGateway(None)
    gateway.b2bua = _Calls()
    gateway.mask_policy = lambda agent: "always"
    assert not MaskingBridge(gateway).withholds_info("c", "application/media_control+xml", b"<x/>", capturing=True)
