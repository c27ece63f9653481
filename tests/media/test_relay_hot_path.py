"""The relay's hot-path shortcuts give the detector exactly what the plain path would.

Caller packets that are a bare 12-byte header and 160 bytes of payload join the detection
FIFO whole (no copy per packet); others (CSRCs, an extension, padding) join as their payload.
Either way, and mixed in one batch, the detector must see each packet's payload decoded.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dtmf.g711 import ALAW_DECODE, ULAW_DECODE
from gateway.media.leg import LegMedia
from gateway.media.relay import Relay
from gateway.media.rtp import RtpPacket


class RecordingDetector:
    """Stands in for DetectorBank: keeps what each call got."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.slots = 0

    def add_stream(self) -> int:
        self.slots += 1
        return self.slots - 1

    def remove_stream(self, slot: int) -> None:
        pass

    def process(self, slots, frames):
        self.calls.append((np.array(slots).copy(), np.array(frames).copy()))
        return []


def caller(i: int) -> tuple[str, int]:
    return ("10.0.1.1", 4000 + 2 * i)


def relay_with(n: int, codec: str = "PCMU") -> tuple[Relay, RecordingDetector, list]:
    det = RecordingDetector()
    relay = Relay(detector=det)
    calls = []
    pt = 0 if codec == "PCMU" else 8
    for i in range(n):
        calls.append(relay.add_call(f"c{i}"))
        relay.configure(f"c{i}", LegMedia(caller(i), None, codec, pt, 101),
                        LegMedia(("10.0.2.1", 6000 + 2 * i), None, codec, pt, 101))
    return relay, det, calls


def packet(shape: str, seq: int, payload: bytes, pt: int = 0) -> bytes:
    """An RTP packet carrying `payload` (160 bytes) in one of several header layouts."""
    header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + (160 * seq).to_bytes(4, "big") + (7).to_bytes(4, "big")
    if shape == "plain":
        return header + payload
    if shape == "csrc":  # CC = 1: payload at 16
        return bytes([0x81]) + header[1:] + (99).to_bytes(4, "big") + payload
    if shape == "extension":  # X: a 4-byte extension header and one word
        return bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x01" + b"\x00\x00\x00\x00" + payload
    if shape == "padding":  # P: 4 bytes of padding, the last one its count
        return bytes([0xA0]) + header[1:] + payload + b"\x00\x00\x00\x04"
    raise ValueError(shape)


SHAPES = ("plain", "csrc", "extension", "padding")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SHAPES), st.binary(min_size=160, max_size=160)), min_size=1, max_size=12))
def test_detector_sees_each_payload_whatever_the_header_layout(rows) -> None:
    relay, det, calls = relay_with(len(rows))
    for i, (shape, payload) in enumerate(rows):
        pkt = packet(shape, 1, payload)
        assert relay.receive_rtp(calls[i].caller, pkt, caller(i), 0.0) is not None
    relay.flush()
    (slots, frames), = det.calls
    assert slots.tolist() == [c.caller.slot for c in calls]
    codes = np.frombuffer(b"".join(p for _, p in rows), np.uint8).reshape(len(rows), 160)
    assert frames.dtype == np.int16
    assert np.array_equal(frames, ULAW_DECODE[codes])


def test_every_mu_law_code_pair_decodes_as_the_table() -> None:
    # 65,536 pairs: every (even, odd) sample position combination of two codes.
    pairs = np.arange(65536, dtype=np.uint32)
    body = np.stack([pairs & 0xFF, pairs >> 8], axis=1).astype(np.uint8).tobytes()
    body += b"\xff" * (-len(body) % 160)
    chunks = [body[i:i + 160] for i in range(0, len(body), 160)]
    relay, det, calls = relay_with(len(chunks))
    for i, chunk in enumerate(chunks):
        relay.receive_rtp(calls[i].caller, packet("plain", 1, chunk), caller(i), 0.0)
    relay.flush()
    frames = np.concatenate([f for _, f in det.calls])
    assert np.array_equal(frames.ravel(), ULAW_DECODE[np.frombuffer(body, np.uint8)])


def test_a_law_batch_and_a_stream_twice_in_one_batch() -> None:
    relay, det, calls = relay_with(2, codec="PCMA")
    bodies = [bytes(range(i, i + 160)) for i in range(3)]
    relay.receive_rtp(calls[0].caller, packet("plain", 1, bodies[0], pt=8), caller(0), 0.0)
    relay.receive_rtp(calls[1].caller, packet("csrc", 1, bodies[1], pt=8), caller(1), 0.0)
    relay.receive_rtp(calls[0].caller, packet("plain", 2, bodies[2], pt=8), caller(0), 0.0)
    relay.flush()
    got = [(int(s), f) for slots, frames in det.calls for s, f in zip(slots, frames)]
    want = [(calls[0].caller.slot, bodies[0]), (calls[1].caller.slot, bodies[1]), (calls[0].caller.slot, bodies[2])]
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, f), (_, body) in zip(got, want):
        assert np.array_equal(f, ALAW_DECODE[np.frombuffer(body, np.uint8)])
