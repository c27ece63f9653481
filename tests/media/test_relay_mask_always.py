"""Policy mask = "always": the caller leg is masked outside captures (no look-ahead) and inside them (look-ahead)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.g711 import ULAW_DECODE, ulaw_encode
from dtmf.masker import MaskerBank, MaskMode
from dtmf.tones import dtmf_sequence, to_int16
from gateway.media.relay import CaptureUnavailable, InBandDigitDetected, Relay, TelephoneEventDetected
from gateway.media.rtp import RtpPacket
from tests.media.test_relay import AGENT_SDP, CALLER_SDP, event, leg


def make(masker=True, mask_always_first=True):
    from dtmf.detector import DetectorBank

    relay = Relay(detector=DetectorBank(capacity=4),
                  masker=MaskerBank(MaskMode.SILENCE, capacity=4) if masker else None)
    call = relay.add_call("c1")
    if mask_always_first:  # the app sets the policy when the call starts, before any SDP answer
        relay.set_mask_always("c1", True)
    relay.configure("c1", leg(CALLER_SDP), leg(AGENT_SDP, te=96))
    return relay, call


def speech(n: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced speech stand-in: a gliding 100-220 Hz harmonic series under a syllable envelope, ~-20 dBm0."""
    t = np.arange(n) / 8000
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    x = sum(np.sin(k * phase + rng.uniform(0, 6.28)) / k for k in range(1, 16))
    env = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2.5 * t))
    return 2500 * env * x


def send_audio(relay, call, codes: bytes, t0: float = 0.0, seq0: int = 0):
    """Feed 20 ms packets, one per loop iteration; returns what left towards the agent, in order."""
    out = []
    for i in range(len(codes) // 160):
        now = t0 + 0.02 * i
        pkt = bytes(RtpPacket(payload_type=0, sequence_number=seq0 + i, timestamp=160 * (seq0 + i), ssrc=0x1111,
                              payload=codes[160 * i:160 * i + 160]))
        direct = relay.receive_rtp(call.caller, pkt, CALLER_SDP, now)
        if direct is not None:
            out.append(direct[0])
        out.extend(d for _, d, _ in relay.process_pending(now + 0.0002))
    out.extend(d for _, d, _ in relay.flush(t0 + 0.02 * (len(codes) // 160)))
    return [RtpPacket.parse(p) for p in out]


def decode(pkts) -> np.ndarray:
    return np.concatenate([ULAW_DECODE[np.frombuffer(p.payload, np.uint8)] for p in pkts])


def digits_in(audio: np.ndarray) -> str:
    det = DtmfDetector()
    events = det.process(audio) + det.flush()
    return "".join(e.digit for e in events if isinstance(e, DigitDetected))


def test_in_band_digit_outside_a_capture_never_reaches_the_agent_but_speech_does() -> None:
    rng = np.random.default_rng(5)
    relay, call = make()
    talk = speech(8000, rng)
    keys, _ = dtmf_sequence("5", tone_ms=100.0, lead_ms=0.0, tail_ms=0.0)
    signal = np.concatenate([talk, keys, np.zeros(1600), talk])
    x = to_int16(signal)
    codes = ulaw_encode(x).tobytes()
    assert digits_in(ULAW_DECODE[np.frombuffer(codes, np.uint8)]) == "5"  # control: the caller did key it
    pkts = send_audio(relay, call, codes)
    n = len(codes) // 160
    # No look-ahead: every packet left in the iteration it arrived, numbered as sent.
    assert [p.sequence_number for p in pkts] == list(range(n))
    agent = decode(pkts)
    assert digits_in(agent) == ""
    sent = ULAW_DECODE[np.frombuffer(codes, np.uint8)]
    talk_part = slice(0, 8000)
    assert np.mean(agent[talk_part] == sent[talk_part]) > 0.6  # speech passes (mostly bit-exact)
    digits = [e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert digits == ["5"]  # the detector still hears the caller


def test_telephone_events_withheld_without_a_capture_and_sequence_stays_continuous() -> None:
    relay, call = make()
    quiet = bytes([0xFF]) * 160
    sent = []
    for seq, pkt in enumerate([None, "ev", "ev-end", None]):
        if pkt is None:
            data = bytes(RtpPacket(payload_type=0, sequence_number=seq, timestamp=160 * seq, ssrc=0x1111,
                                   payload=quiet))
        else:
            data = event(seq, 160, 5, end=pkt == "ev-end")
        out = relay.receive_rtp(call.caller, data, CALLER_SDP, 0.02 * seq)
        assert out is None  # audio waits for the masker; events are withheld
        sent.extend(RtpPacket.parse(d) for _, d, _ in relay.process_pending(0.02 * seq))
    assert [p.sequence_number for p in sent] == [0, 1]
    assert [p.timestamp for p in sent] == [0, 480]
    assert [e.digit for e in iter(relay.next_event, None) if isinstance(e, TelephoneEventDetected)] == ["5"]


def test_a_capture_on_an_always_leg_adds_look_ahead_and_its_end_does_not_unmask() -> None:
    relay, call = make()
    keys, _ = dtmf_sequence("8", tone_ms=100.0, lead_ms=100.0, tail_ms=100.0)
    codes = ulaw_encode(to_int16(keys)).tobytes()
    before = send_audio(relay, call, codes)
    relay.set_capture("c1", True, now=10.0)
    during = send_audio(relay, call, codes, t0=10.0, seq0=100)
    tail = relay.set_capture("c1", False, now=20.0)
    after = send_audio(relay, call, codes, t0=20.0, seq0=200)
    n = len(codes) // 160
    assert len(during) == n - 1 and len(tail) == 1  # one held packet at a time
    for part in (before, during + [RtpPacket.parse(d) for _, d, _ in tail], after):
        assert digits_in(decode(part)) == ""
    assert [p.sequence_number for p in after] == list(range(200, 200 + n))


def test_always_can_be_turned_off_and_then_audio_is_bit_exact() -> None:
    relay, call = make()
    relay.set_mask_always("c1", False)
    keys, _ = dtmf_sequence("3")
    codes = ulaw_encode(to_int16(keys)).tobytes()
    pkts = send_audio(relay, call, codes)
    assert b"".join(p.payload for p in pkts) == codes


def test_always_refused_without_a_masker_or_for_an_unmaskable_codec() -> None:
    relay, _ = make(masker=False, mask_always_first=False)
    with pytest.raises(CaptureUnavailable):
        relay.set_mask_always("c1", True)
    relay = Relay(masker=MaskerBank())
    relay.add_call("c2")
    relay.configure("c2", dataclasses.replace(leg(CALLER_SDP), ptime_ms=30), leg(AGENT_SDP))
    with pytest.raises(CaptureUnavailable):
        relay.set_mask_always("c2", True)
    with pytest.raises(CaptureUnavailable):
        relay.set_mask_always("nope", True)
