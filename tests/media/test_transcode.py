"""Legs on different G.711 laws: the relay converts audio by table, inspects in the caller's law."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dtmf.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ALAW_TO_ULAW,
    ULAW_DECODE,
    ULAW_ENCODE,
    ULAW_TO_ALAW,
    alaw_encode,
    ulaw_encode,
)
from dtmf.tones import dtmf_sequence, feedback_tone, to_int16
from gateway.media.leg import Direction, LegMedia
from gateway.media.relay import InBandDigitDetected, Relay
from gateway.media.rtp import RtpPacket

CALLER = ("10.0.0.1", 4000)
AGENT = ("10.0.0.2", 6000)
ENCODE = {"PCMU": ulaw_encode, "PCMA": alaw_encode}
DECODE = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
PT = {"PCMU": 0, "PCMA": 8}


def leg(addr, codec: str, te: int | None = 101) -> LegMedia:
    return LegMedia(remote_rtp=addr, remote_rtcp=(addr[0], addr[1] + 1), codec=codec, audio_pt=PT[codec],
                    telephone_event_pt=te, direction=Direction.SENDRECV)


def make(caller: str = "PCMA", agent: str = "PCMU", detector=None, masker=None) -> tuple[Relay, object]:
    relay = Relay(detector=detector, masker=masker)
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER, caller), leg(AGENT, agent, te=96))
    return relay, call


def packet(seq: int, body: bytes, pt: int, ssrc: int = 0x1111, padding: int = 0, marker: int = 0) -> bytes:
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=160 * seq, ssrc=ssrc,
                           payload=body, padding_size=padding, marker=marker))


def speech(n_packets: int, seed: int = 1) -> np.ndarray:
    """Speech-like noise over the whole G.711 range (loud peaks reach the top segments)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3000, 160 * n_packets) * np.repeat(rng.uniform(0.05, 3.0, n_packets), 160)
    return np.clip(x, -32768, 32767).astype(np.int16)


def requantised(samples: np.ndarray, law: str) -> np.ndarray:
    """`samples` after one more G.711 encode/decode in `law`: what a transcoded sample may become."""
    return DECODE[law][ENCODE[law](samples)]


def test_conversion_tables_are_decode_then_encode_over_all_codes() -> None:
    codes = np.arange(256, dtype=np.uint8)
    assert bytes(codes).translate(ULAW_TO_ALAW) == ALAW_ENCODE[ULAW_DECODE[codes].view(np.uint16)].tobytes()
    assert bytes(codes).translate(ALAW_TO_ULAW) == ULAW_ENCODE[ALAW_DECODE[codes].view(np.uint16)].tobytes()
    # Silence maps to silence; sign is kept for every code.
    assert bytes([0xFF]).translate(ULAW_TO_ALAW) == bytes([0xD5])
    u2a = np.frombuffer(ULAW_TO_ALAW, np.uint8)
    assert np.all(np.sign(ALAW_DECODE[u2a]) * np.sign(ULAW_DECODE) >= 0)
    # Requantisation only: mu->A lands on the nearest A-law level; A->mu within one mu-law step of it
    # (the mu-law encoder's decision level at a segment edge is not the midpoint).
    a2u = np.frombuffer(ALAW_TO_ULAW, np.uint8)
    for src, dst, table, slack in ((ULAW_DECODE, ALAW_DECODE, u2a, 0), (ALAW_DECODE, ULAW_DECODE, a2u, 1)):
        err = np.abs(dst[table].astype(np.int32) - src)
        nearest = np.abs(dst[None, :].astype(np.int32) - src[:, None].astype(np.int32)).min(axis=1)
        assert np.all(err <= nearest * (1 + 2 * slack)), err.max()


@pytest.mark.parametrize("caller, agent", [("PCMA", "PCMU"), ("PCMU", "PCMA")])
def test_audio_is_converted_both_ways_with_headers_kept(caller: str, agent: str) -> None:
    relay, call = make(caller, agent)
    x = speech(20)
    sent_up, sent_down = [], []
    for seq in range(20):
        body = ENCODE[caller](x[160 * seq:160 * seq + 160]).tobytes()
        pkt = packet(seq, body, PT[caller], marker=int(seq == 0))
        out, dest = relay.receive_rtp(call.caller, pkt, CALLER, now=seq * 0.02)
        assert dest == AGENT
        got = RtpPacket.parse(out)
        assert (got.payload_type, got.sequence_number, got.timestamp, got.ssrc, got.marker) == \
            (PT[agent], seq, 160 * seq, 0x1111, int(seq == 0))
        assert got.payload == body.translate(ULAW_TO_ALAW if caller == "PCMU" else ALAW_TO_ULAW)
        sent_up.append(got.payload)
        back_body = ENCODE[agent](x[160 * seq:160 * seq + 160]).tobytes()
        back, dest = relay.receive_rtp(call.agent, packet(seq, back_body, PT[agent], ssrc=0x2222), AGENT, now=0.0)
        assert dest == CALLER and RtpPacket.parse(back).payload_type == PT[caller]
        sent_down.append(RtpPacket.parse(back).payload)
    # Decoded, the agent hears the caller's audio within one more G.711 requantisation.
    heard = DECODE[agent][np.frombuffer(b"".join(sent_up), np.uint8)].astype(np.int32)
    spoken = DECODE[caller][ENCODE[caller](x)].astype(np.int32)
    step = np.abs(requantised(spoken.astype(np.int16), agent).astype(np.int32) - spoken)
    assert np.all(np.abs(heard - spoken) <= 2 * step + 16)
    assert np.corrcoef(heard, spoken)[0, 1] > 0.999
    heard_back = DECODE[caller][np.frombuffer(b"".join(sent_down), np.uint8)].astype(np.int32)
    assert np.corrcoef(heard_back, x.astype(np.int32))[0, 1] > 0.99
    assert relay.stats.relayed == [20, 20]


def test_equal_laws_stay_bit_exact_and_reconfigure_switches_conversion_off() -> None:
    relay, call = make("PCMA", "PCMU")
    body = bytes(range(160))
    assert RtpPacket.parse(relay.receive_rtp(call.caller, packet(1, body, 8), CALLER, 0.0)[0]).payload != body
    relay.configure("c1", leg(CALLER, "PCMA"), leg(AGENT, "PCMA", te=96))
    assert relay.receive_rtp(call.caller, packet(2, body, 8), CALLER, 0.0)[0] == packet(2, body, 8)
    back = packet(3, body, 8, ssrc=0x2222)
    assert relay.receive_rtp(call.agent, back, AGENT, 0.0)[0] == back


def test_telephone_events_are_not_converted_and_padding_is_kept() -> None:
    relay, call = make("PCMA", "PCMU")
    ev = bytes(RtpPacket(payload_type=101, sequence_number=5, timestamp=800, ssrc=0x1111,
                         payload=struct.pack("!BBH", 3, 10, 400)))
    out, _ = relay.receive_rtp(call.caller, ev, CALLER, 0.0)
    assert out[1] & 0x7F == 96 and out[2:] == ev[2:]  # only the PT byte changes (RFC 4733 payload as sent)
    body = bytes(range(60, 220))
    padded = packet(6, body, 8, padding=4)
    got = RtpPacket.parse(relay.receive_rtp(call.caller, padded, CALLER, 0.0)[0])
    assert got.payload == body.translate(ALAW_TO_ULAW) and got.padding_size == 4


def test_non_g711_codecs_are_refused() -> None:
    relay = Relay()
    relay.add_call("c")
    for caller, agent in (("G722", "PCMU"), ("PCMA", "G729")):
        with pytest.raises(ValueError):
            relay.configure("c", LegMedia(CALLER, None, caller, 9, None), LegMedia(AGENT, None, agent, 0, None))


def test_pcma_caller_digits_are_detected_while_the_pcmu_agent_hears_them() -> None:
    detector_mod = pytest.importorskip("dtmf.detector")
    relay, call = make("PCMA", "PCMU", detector=detector_mod.DetectorBank(capacity=4))
    signal, _ = dtmf_sequence("159#", tail_ms=200.0)
    codes = alaw_encode(to_int16(signal)).tobytes()
    for seq in range(len(codes) // 160):
        body = codes[160 * seq:160 * seq + 160]
        out = relay.receive_rtp(call.caller, packet(seq, body, 8), CALLER, 0.0)
        assert out is not None and out[0][12:] == body.translate(ALAW_TO_ULAW)
        relay.flush()
    digits = [e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert "".join(digits) == "159#"  # decoded with the caller's law (A-law read as mu-law finds nothing)


@pytest.mark.parametrize("caller, agent", [("PCMA", "PCMU"), ("PCMU", "PCMA")])
def test_capture_masks_in_the_callers_law_and_sends_the_agents(caller: str, agent: str) -> None:
    masker_mod = pytest.importorskip("dtmf.masker")
    detector_mod = pytest.importorskip("dtmf.detector")
    relay, call = make(caller, agent, detector=detector_mod.DetectorBank(capacity=4),
                       masker=masker_mod.MaskerBank(masker_mod.MaskMode.SILENCE, capacity=4))
    signal, _ = dtmf_sequence("7", lead_ms=200.0, tail_ms=200.0)
    pcm = to_int16(signal)
    codes = ENCODE[caller](pcm).tobytes()
    relay.set_capture("c1", True)
    sent = []
    n = len(codes) // 160
    for seq in range(n):
        assert relay.receive_rtp(call.caller, packet(seq, codes[160 * seq:160 * seq + 160], PT[caller]),
                                 CALLER, 0.0) is None  # held for the look-ahead
        sent.extend(d for _, d, _ in relay.flush())
    sent.extend(d for _, d, _ in relay.set_capture("c1", False))
    pkts = [RtpPacket.parse(p) for p in sent]
    assert [p.sequence_number for p in pkts] == list(range(n))
    assert {p.payload_type for p in pkts} == {PT[agent]}
    heard = np.concatenate([DECODE[agent][np.frombuffer(p.payload, np.uint8)] for p in pkts])
    assert np.abs(heard.astype(np.int32)).max() < 100  # no tone, and silence in the agent's law
    digits = [e.digit for e in iter(relay.next_event, None) if isinstance(e, InBandDigitDetected)]
    assert digits == ["7"]


class PassMasker:
    """Masker stand-in: one packet look-ahead; rows above 4000 at sample 0 come out as a flat 1000."""

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None

    def add_stream(self, mask_always: bool = False) -> int:
        return 0

    def remove_stream(self, slot: int) -> None:
        pass

    def set_mask_always(self, slot: int, on: bool) -> None:
        pass

    def set_capture(self, slot: int, on: bool):
        self.prev = None
        return None

    def process(self, slots, frames):
        out = np.zeros_like(frames)
        changed = np.zeros(len(slots), dtype=bool)
        prev = self.prev
        if prev is None:
            changed[0] = True
        elif prev[0] > 4000:
            out[0], changed[0] = 1000, True
        else:
            out[0] = prev
        self.prev = frames[0].copy()
        return out, changed


def test_capture_rows_unchanged_by_the_masker_are_converted_code_for_code() -> None:
    relay, call = make("PCMA", "PCMU", masker=PassMasker())
    quiet = [alaw_encode((np.sin(np.arange(160) * 0.3 + s) * 800).astype(np.int16)).tobytes() for s in range(4)]
    loud = alaw_encode(np.full(160, 8000, np.int16)).tobytes()
    relay.set_capture("c1", True)
    sent = []
    for seq, body in enumerate([quiet[0], quiet[1], loud, quiet[2], quiet[3]]):
        relay.receive_rtp(call.caller, packet(seq, body, 8), CALLER, 0.0)
        sent.extend(RtpPacket.parse(d).payload for _, d, _ in relay.flush())
    # Each row's output is the held packet's: unchanged, unchanged, masked, unchanged.
    assert len(sent) == 4
    assert sent[0] == quiet[0].translate(ALAW_TO_ULAW)
    assert sent[1] == quiet[1].translate(ALAW_TO_ULAW)
    assert sent[2] == ulaw_encode(np.full(160, 1000, np.int16)).tobytes()
    assert sent[3] == quiet[2].translate(ALAW_TO_ULAW)


def test_mask_always_unchanged_rows_are_converted() -> None:
    relay, call = make("PCMA", "PCMU", masker=PassMasker())
    relay.set_mask_always("c1", True)
    bodies = [alaw_encode((np.sin(np.arange(160) * 0.2 + s) * 600).astype(np.int16)).tobytes() for s in range(3)]
    sent = []
    for seq, body in enumerate(bodies):
        assert relay.receive_rtp(call.caller, packet(seq, body, 8), CALLER, 0.0) is None
        sent.extend(RtpPacket.parse(d).payload for _, d, _ in relay.flush())
    assert sent[1:] == [b.translate(ALAW_TO_ULAW) for b in bodies[1:]]


def test_feedback_tone_is_encoded_in_the_callers_law() -> None:
    relay, call = make("PCMA", "PCMU")
    relay.play_feedback("c1", "accepted")
    tone = feedback_tone("accepted")
    agent_body = bytes((i * 7) & 0xFF for i in range(160))
    out, dest = relay.receive_rtp(call.agent, packet(0, agent_body, 0, ssrc=0x2222), AGENT, 0.0)
    got = RtpPacket.parse(out)
    assert dest == CALLER and got.payload_type == 8
    assert got.payload == alaw_encode(tone[:160]).tobytes()
    # After the tone, the agent's audio reaches the caller converted to A-law.
    for seq in range(1, len(tone) // 160 + 2):
        out, _ = relay.receive_rtp(call.agent, packet(seq, agent_body, 0, ssrc=0x2222), AGENT, 0.0)
    assert RtpPacket.parse(out).payload == agent_body.translate(ULAW_TO_ALAW)
    # A tone queued for the old caller law is dropped when the caller's law changes.
    relay.play_feedback("c1", "error")
    relay.configure("c1", leg(CALLER, "PCMU"), leg(AGENT, "PCMU", te=96))
    out, _ = relay.receive_rtp(call.agent, packet(99, agent_body, 0, ssrc=0x2222), AGENT, 0.0)
    assert RtpPacket.parse(out).payload == agent_body
