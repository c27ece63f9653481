"""The relay's masked-row path: batching, rounds, odd payloads, mixed codecs, unchanged rows untouched."""

from __future__ import annotations

import numpy as np

from dtmf.g711 import ALAW_DECODE, ULAW_DECODE, alaw_encode, ulaw_encode
from gateway.media.leg import Direction, LegMedia
from gateway.media.relay import HOLD_SLACK_S, LOOKAHEAD_BOUNDS_S, CountHistogram, Relay
from gateway.media.rtp import RtpPacket

MASKED_LEVEL = 1000


class SlotMasker:
    """MaskerBank stand-in with many slots: one packet look-ahead; a row whose first sample is
    above 4000 is 'a tone' and leaves as a constant MASKED_LEVEL."""

    def __init__(self) -> None:
        self.n = 0
        self.prev: dict[int, np.ndarray | None] = {}
        self.calls: list[list[int]] = []

    def add_stream(self, mask_always: bool = False) -> int:
        self.n += 1
        return self.n - 1

    def remove_stream(self, slot: int) -> None:
        pass

    def set_mask_always(self, slot: int, on: bool) -> None:
        pass

    def set_capture(self, slot: int, on: bool):
        self.prev[slot] = None
        return None

    def flush(self, slot: int):
        prev, self.prev[slot] = self.prev.get(slot), None
        if prev is None:
            return None
        return (np.full(160, MASKED_LEVEL, np.int16), True) if prev[0] > 4000 else (prev, False)

    def process(self, slots, frames):
        slots = [int(s) for s in slots]
        assert len(set(slots)) == len(slots), "a slot twice in one call"
        self.calls.append(slots)
        out = np.zeros_like(frames)
        changed = np.zeros(len(slots), dtype=bool)
        for r, s in enumerate(slots):
            prev = self.prev.get(s)
            if prev is None:
                changed[r] = True  # filler
            elif prev[0] > 4000:
                out[r] = MASKED_LEVEL
                changed[r] = True
            else:
                out[r] = prev
            self.prev[s] = frames[r].copy()
        return out, changed


def media(port: int, codec: str = "PCMU") -> LegMedia:
    pt = 0 if codec == "PCMU" else 8
    return LegMedia(remote_rtp=("10.0.0.1", port), remote_rtcp=("10.0.0.1", port + 1), codec=codec,
                    audio_pt=pt, telephone_event_pt=101, direction=Direction.SENDRECV)


def packet(seq: int, body: bytes, pt: int = 0, ssrc: int = 1, padding: int = 0) -> bytes:
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=160 * seq, ssrc=ssrc,
                           payload=body, padding_size=padding))


def speech(seq: int, codec: str = "PCMU") -> bytes:
    """Quiet, varying audio the fake masker passes unchanged."""
    x = (np.sin(np.arange(160) * 0.3 + seq) * 800).astype(np.int16)
    return (ulaw_encode(x) if codec == "PCMU" else alaw_encode(x)).tobytes()


def tone(codec: str = "PCMU") -> bytes:
    x = np.full(160, 8000, np.int16)
    return (ulaw_encode(x) if codec == "PCMU" else alaw_encode(x)).tobytes()


def setup(codecs: list[str]):
    masker = SlotMasker()
    relay = Relay(masker=masker)
    calls = []
    for i, codec in enumerate(codecs):
        call = relay.add_call(f"c{i}")
        relay.configure(f"c{i}", media(4000 + 10 * i, codec), media(6000 + 10 * i, codec))
        relay.set_capture(f"c{i}", True)
        calls.append(call)
    return relay, masker, calls


def feed(relay: Relay, call, pkt: bytes) -> None:
    assert relay.receive_rtp(call.caller, pkt, call.caller.media.remote_rtp, now=1.0) is None


def sent_by_call(sends) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for leg, data, _ in sends:
        out.setdefault(leg.call_id, []).append(data)
    return out


def test_unchanged_rows_leave_as_the_bytes_that_arrived_and_changed_rows_are_reencoded_per_codec() -> None:
    relay, _, (mu, a) = setup(["PCMU", "PCMA"])
    p1mu, p1a = packet(1, tone("PCMU")), packet(1, speech(1, "PCMA"), pt=8)
    feed(relay, mu, p1mu)
    feed(relay, a, p1a)
    assert relay.process_pending(1.0) == []  # both held
    p2mu, p2a = packet(2, speech(2)), packet(2, tone("PCMA"), pt=8)
    feed(relay, mu, p2mu)
    feed(relay, a, p2a)
    got = sent_by_call(relay.process_pending(1.02))
    assert got["c1"] == [p1a] and got["c1"][0] is p1a  # unchanged: the very object, no copy
    masked = got["c0"][0]
    assert masked[:12] == p1mu[:12]
    assert np.all(np.abs(ULAW_DECODE[np.frombuffer(masked[12:], np.uint8)] - MASKED_LEVEL) < 64)
    feed(relay, mu, packet(3, speech(3)))
    feed(relay, a, packet(3, speech(3, "PCMA"), pt=8))
    got = sent_by_call(relay.process_pending(1.04))
    assert got["c0"] == [p2mu]
    assert np.all(np.abs(ALAW_DECODE[np.frombuffer(got["c1"][0][12:], np.uint8)] - MASKED_LEVEL) < 64)
    assert relay.stats.captured == 4 and relay.stats.masker_batches == 3


def test_same_caller_twice_in_one_batch_goes_in_rounds_in_order() -> None:
    relay, masker, (c0, c1) = setup(["PCMU", "PCMU"])
    feed(relay, c0, packet(1, speech(1)))
    feed(relay, c1, packet(1, speech(1), ssrc=2))
    feed(relay, c0, packet(2, tone()))
    feed(relay, c0, packet(3, speech(3)))
    got = sent_by_call(relay.process_pending(1.0))
    assert masker.calls == [[0, 1], [0], [0]]
    first, second = got["c0"]
    assert first == packet(1, speech(1))
    assert second[:12] == packet(2, b"")[:12] and second[12:] != tone()
    assert "c1" not in got  # its only packet is held


def test_odd_sized_payload_leaves_as_silence_and_others_in_the_batch_are_unaffected() -> None:
    relay, masker, (c0, c1) = setup(["PCMU", "PCMU"])
    feed(relay, c0, packet(1, speech(1)[:80]))
    feed(relay, c1, packet(1, speech(1), ssrc=2))
    relay.process_pending(1.0)
    feed(relay, c0, packet(2, speech(2)))
    feed(relay, c1, packet(2, speech(2), ssrc=2))
    got = sent_by_call(relay.process_pending(1.02))
    assert got["c0"] == [packet(1, b"\xff" * 80)]  # safe state: unknown masked form is silence
    assert got["c1"] == [packet(1, speech(1), ssrc=2)]
    assert masker.calls == [[1], [0, 1]]
    feed(relay, c0, packet(3, speech(3)[:80]))  # the held packet's look-ahead is unknown
    got = sent_by_call(relay.process_pending(1.04))
    assert got["c0"] == [packet(2, b"\xff" * 160)]


def test_padded_packet_leaves_without_padding_but_bit_exact_audio() -> None:
    relay, _, (c0,) = setup(["PCMU"])
    feed(relay, c0, packet(1, speech(1), padding=8))
    feed(relay, c0, packet(2, speech(2)))
    sent = [d for _, d, _ in relay.process_pending(1.0)]
    assert sent == [packet(1, speech(1))]


def test_batched_hold_times_equal_one_observation_each() -> None:
    since = [0.5 - d for d in np.linspace(0.0005, 0.12, 40)]
    for n in (3, 40):
        one, batch = CountHistogram(LOOKAHEAD_BOUNDS_S), CountHistogram(LOOKAHEAD_BOUNDS_S)
        for t in since[:n]:
            one.observe(0.5 - t)
        batch.observe_since(0.5, since[:n])
        assert batch.counts == one.counts and abs(batch.sum_s - one.sum_s) < 1e-12


def windowed(codecs: list[str], window_s: float, rows: int = 256):
    relay, masker, calls = setup(codecs)
    relay.mask_window_s, relay.mask_batch_rows = window_s, rows
    return relay, masker, calls


def test_masker_window_waits_for_its_oldest_row_and_arms_the_timer() -> None:
    relay, masker, (c0, c1) = windowed(["PCMU", "PCMU"], 0.001)
    assert relay.get_timer() is None
    feed(relay, c0, packet(1, speech(1)))
    assert relay.timer_changed and relay.get_timer() == 1.001
    relay.receive_rtp(c1.caller, packet(1, speech(1), ssrc=2), c1.caller.media.remote_rtp, now=1.0004)
    assert relay.process_pending(1.0009) == [] and masker.calls == []
    relay.process_pending(1.001)
    assert masker.calls == [[0, 1]] and relay.mask_rows_pending == 0
    # Next: the release deadline of c0's held packet, one packet time (+ slack) after it arrived.
    assert relay.get_timer() == 1.0 + 0.020 + HOLD_SLACK_S


def test_masker_window_runs_at_once_when_the_batch_is_full_and_flush_forces_it() -> None:
    relay, masker, (c0, c1, c2) = windowed(["PCMU"] * 3, 0.5, rows=2)
    feed(relay, c0, packet(1, speech(1)))
    relay.process_pending(1.0)
    assert masker.calls == []
    feed(relay, c1, packet(1, speech(1)))
    relay.process_pending(1.0)
    assert masker.calls == [[0, 1]]
    feed(relay, c2, packet(1, speech(1)))
    relay.flush(1.0)
    assert masker.calls == [[0, 1], [2]]


def test_removing_the_only_waiting_call_clears_the_masker_deadline() -> None:
    relay, _, (c0, c1) = windowed(["PCMU", "PCMU"], 0.01)
    feed(relay, c0, packet(1, speech(1)))
    relay.receive_rtp(c1.caller, packet(1, speech(1)), c1.caller.media.remote_rtp, now=1.005)
    relay.remove_call("c0")
    assert relay.get_timer() == 1.015
    relay.remove_call("c1")
    assert relay.get_timer() == 2.0  # the metrics sample


async def test_edge_releases_a_windowed_row_from_its_timer() -> None:
    import asyncio
    import socket

    from gateway.transport.rtp import RtpMediaController

    def sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    masker = SlotMasker()
    ctl = RtpMediaController("127.0.0.1", 31300, 31399, relay=Relay(masker=masker, mask_window_s=0.003))
    caller, agent = sock(), sock()
    try:
        call = ctl.open_call("call-1")
        cp, ap = caller.getsockname(), agent.getsockname()
        call.configure(LegMedia(cp, (cp[0], cp[1] + 1), "PCMU", 0, 101),
                       LegMedia(ap, (ap[0], ap[1] + 1), "PCMU", 0, 101))
        call.set_capture(True)
        for seq in (1, 2):
            caller.sendto(packet(seq, speech(seq)), ("127.0.0.1", call.caller_port))
        # No packet follows: only the edge's timer can close the window that releases packet 1.
        data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(agent, 2048), 2.0)
        assert data == packet(1, speech(1))
        assert ctl.relay.mask_rows_pending == 0
    finally:
        ctl.close()
        caller.close()
        agent.close()


def test_seconds_since_masked_counts_from_the_last_changed_packets_arrival() -> None:
    relay, _, (toned, quiet) = setup(["PCMU", "PCMU"])
    assert relay.seconds_since_masked("c0", 5.0) is None and relay.seconds_since_masked("nope", 5.0) is None
    feed(relay, toned, packet(1, tone()))
    feed(relay, quiet, packet(1, speech(1)))
    relay.process_pending(1.0)
    assert relay.seconds_since_masked("c0", 1.0) is None  # held, not yet masked
    feed(relay, toned, packet(2, speech(2)))
    feed(relay, quiet, packet(2, speech(2)))
    relay.process_pending(1.02)
    assert relay.seconds_since_masked("c0", 1.5) == 0.5  # the toned packet arrived at 1.0 (feed's clock)
    assert relay.seconds_since_masked("c1", 1.5) is None  # nothing of c1's was changed
