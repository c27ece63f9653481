"""The capture look-ahead hold is capped at one packet time: a late successor never stretches it.

The relay core runs with the real `MaskerBank` on an explicit clock: packets arrive at
chosen times, `process_pending` runs at the end of each arrival's loop iteration, and the
relay's one timer fires exactly when `get_timer()` asks. What the agent gets is put back
together by sequence number (the relay keeps packets 1:1) and checked sample by sample,
with the DTMF detector and the leaked-milliseconds measure of tests/dtmf_masker/calls.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.g711 import ULAW_DECODE, ulaw_encode
from dtmf.masker import MaskerBank, MaskMode, encode_masked
from dtmf.tones import dtmf_tone, white_noise
from gateway.media import relay as relay_module
from gateway.media.relay import HOLD_SLACK_S, TAIL_SAMPLES, Relay
from gateway.media.rtp import RtpPacket
from tests.dtmf_masker.calls import Call, Tone, leaked_ms, make_call, mask_bank, speech_like
from tests.media.test_relay import AGENT_SDP, CALLER_SDP, leg

PACKET = 160
PACKET_S = 0.020
PROC_S = 0.0003
"""Receipt to the end of the loop iteration, where `process_pending` runs."""
DEADLINE_S = PACKET_S + HOLD_SLACK_S


def capture_relay(mode: MaskMode = MaskMode.SILENCE) -> tuple[Relay, object]:
    relay = Relay(masker=MaskerBank(mode))
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER_SDP), leg(AGENT_SDP, te=96))
    relay.set_capture("c1", True, now=0.0)
    return relay, call


def packets_of(audio: np.ndarray) -> list[bytes]:
    codes = ulaw_encode(audio.astype(np.int16)).tobytes()
    return [bytes(RtpPacket(payload_type=0, sequence_number=i, timestamp=PACKET * i, ssrc=0x4321,
                            payload=codes[PACKET * i:PACKET * (i + 1)])) for i in range(len(audio) // PACKET)]


def run(relay: Relay, call, pkts: list[bytes], arrivals_s: list[float]) -> dict[int, tuple[float, bytes]]:
    """Every packet through the relay at its arrival time; {seq: (send time, bytes)} of what left."""
    sent: dict[int, tuple[float, bytes]] = {}

    def keep(t: float, sends) -> None:
        for _, data, dest in sends:
            seq = (data[2] << 8) | data[3]
            assert dest == AGENT_SDP and seq not in sent, "a packet left twice"
            sent[seq] = (t, data)

    def timers_until(t: float) -> None:
        while (when := relay.get_timer()) is not None and when <= t:
            keep(when, relay.handle_timer(when))

    for i in sorted(range(len(pkts)), key=lambda k: arrivals_s[k]):
        t = arrivals_s[i]
        timers_until(t)
        assert relay.receive_rtp(call.caller, pkts[i], CALLER_SDP, t) is None
        keep(t + PROC_S, relay.process_pending(t + PROC_S))
    timers_until(max(arrivals_s) + 0.1)
    return sent


def agent_audio(sent: dict[int, tuple[float, bytes]], n_packets: int) -> np.ndarray:
    """The agent's audio by sequence number; every packet but the last (still held) must have left."""
    assert sorted(sent) == list(range(n_packets - 1)) or sorted(sent) == list(range(n_packets))
    out = np.zeros(n_packets * PACKET, dtype=np.int16)
    for seq, (_, data) in sent.items():
        out[seq * PACKET:(seq + 1) * PACKET] = ULAW_DECODE[np.frombuffer(data[12:], np.uint8)]
    return out


def detected(audio: np.ndarray) -> list[str]:
    det = DtmfDetector()
    return [e.digit for e in det.process(audio) + det.flush() if isinstance(e, DigitDetected)]


def on_time(n: int, start_s: float = 1.0) -> list[float]:
    return [start_s + PACKET_S * i for i in range(n)]


def loud_speech(n_packets: int, seed: int = 5) -> np.ndarray:
    audio = speech_like(n_packets * PACKET, np.random.default_rng(seed), -20.0)
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------- one late successor


def test_held_packet_leaves_at_its_deadline_when_the_successor_is_30_ms_late() -> None:
    relay, call = capture_relay()
    # Broadband noise at -20 dBm0: loud, yet nothing the masker takes for a tone, even without look-ahead.
    audio = np.clip(np.rint(white_noise(10 * PACKET, -20.0, np.random.default_rng(5))), -32768, 32767)
    pkts = packets_of(audio)
    arrivals = on_time(10)
    arrivals[4] = arrivals[3] + 0.030  # packet 4 comes 30 ms after packet 3 (10 ms late)
    sent = run(relay, call, pkts, arrivals)
    # Packet 3 left at its deadline, one packet time (+ slack) after it arrived, not at 4's arrival.
    assert sent[3][0] == pytest.approx(arrivals[3] + DEADLINE_S)
    assert sent[2][0] == pytest.approx(arrivals[3] + PROC_S)  # on time: with its successor
    # The late one is simply the next held packet, released by its own successor.
    assert sent[4][0] == pytest.approx(arrivals[5] + PROC_S)
    for seq in range(9):
        assert sent[seq][1][:12] == pkts[seq][:12]
        if seq != 3:
            assert sent[seq][1] == pkts[seq], seq  # bit-exact
    body = sent[3][1][12:]
    assert body[:PACKET - TAIL_SAMPLES] == pkts[3][12:12 + PACKET - TAIL_SAMPLES]
    assert body[PACKET - TAIL_SAMPLES:] == b"\xff" * TAIL_SAMPLES  # no look-ahead for the tail: silence
    hist = relay.stats.lookahead_seconds
    assert hist.count == 10 and max(t - arrivals[s] for s, (t, _) in sent.items()) == pytest.approx(DEADLINE_S)


def test_a_quiet_tail_passes_bit_exact_at_the_deadline() -> None:
    relay, call = capture_relay()
    rng = np.random.default_rng(1)
    audio = rng.integers(-6, 7, 10 * PACKET).astype(np.int16)  # room noise, ~ -70 dBm0
    pkts = packets_of(audio)
    arrivals = on_time(10)
    arrivals[4] = arrivals[3] + 0.030
    sent = run(relay, call, pkts, arrivals)
    assert sent[3][0] == pytest.approx(arrivals[3] + DEADLINE_S)
    assert [sent[s][1] for s in range(9)] == pkts[:9]


def test_no_successor_at_all_still_releases_at_the_deadline() -> None:
    relay, call = capture_relay()
    pkts = packets_of(loud_speech(3))
    sent = run(relay, call, pkts, on_time(3))
    assert sorted(sent) == [0, 1, 2]
    assert sent[2][0] == pytest.approx(1.0 + 2 * PACKET_S + DEADLINE_S)
    assert relay.get_timer() == 2.0  # only the once-a-second metrics sample is left


def test_tone_in_the_last_5_ms_of_a_packet_with_a_late_successor_never_reaches_the_agent() -> None:
    relay, call = capture_relay()
    n = 20
    speech = loud_speech(n, seed=9).astype(np.float64) * 0.3
    start = 6 * PACKET - 30  # 3.75 ms before packet 5 ends
    tone = dtmf_tone("5", 120.0, -10.0)
    tones_only = np.zeros(n * PACKET)
    tones_only[start:start + len(tone)] = tone
    audio = np.clip(np.rint(speech + tones_only), -32768, 32767).astype(np.int16)
    c = Call(ULAW_DECODE[ulaw_encode(audio)], tones_only, [Tone("5", start, start + len(tone), -10.0, 0.0)], "speech")
    arrivals = on_time(n)
    for k in range(6, n):
        arrivals[k] += 0.030 - PACKET_S  # packet 6 (the successor) 10 ms late, the rest keep its pace
    sent = run(relay, call, packets_of(c.audio), arrivals)
    assert sent[5][0] == pytest.approx(arrivals[5] + DEADLINE_S)
    out = agent_audio(sent, n)
    assert detected(c.audio) == ["5"]
    assert detected(out) == []
    assert leaked_ms(out, c, c.tones[0]) == 0.0


# ---------------------------------------------------------------- many digits


def late_after_onsets(c: Call, delay_s: float = 0.030) -> list[float]:
    """On time, except that the successor of every packet holding a tone onset comes `delay_s`
    after it (and the packets after keep that pace until the next onset)."""
    n = len(c.audio) // PACKET
    onset_packets = sorted({t.start // PACKET for t in c.tones})
    arrivals, shift = [], 0.0
    for i in range(n):
        if i - 1 in onset_packets:
            shift += delay_s - PACKET_S
        arrivals.append(1.0 + PACKET_S * i + shift)
    return arrivals


@pytest.fixture(scope="module")
def late_calls() -> list[Call]:
    rng = np.random.default_rng(20261130)
    return [make_call(rng, 30, bg, last_5ms_share=1.0) for bg in ("silence", "noise", "speech")]


@pytest.mark.parametrize("mode", [MaskMode.SILENCE, MaskMode.COMFORT_NOISE])
def test_late_onset_digits_leak_nothing_when_every_successor_is_late(late_calls, mode) -> None:
    for c in late_calls:
        assert all(t.start % PACKET >= PACKET - 5 * 8 for t in c.tones)
        relay, call = capture_relay(mode)
        n = len(c.audio) // PACKET
        arrivals = late_after_onsets(c)
        sent = run(relay, call, packets_of(c.audio), arrivals)
        released = [s for s, (t, _) in sent.items() if t - arrivals[s] == pytest.approx(DEADLINE_S)]
        assert len(released) >= len(c.tones), c.background  # the deadline path is what ran
        out = agent_audio(sent, n)
        assert detected(out) == [], c.background
        assert max(leaked_ms(out, c, t) for t in c.tones) == 0.0, c.background


def test_the_tail_rule_is_what_stops_them(late_calls, monkeypatch) -> None:
    """Passing the deadline-released tail unmasked (what the look-ahead alone decides) leaks."""
    monkeypatch.setattr(relay_module, "TAIL_QUIET_POWER", float("inf"))
    leaks = []
    for c in late_calls:
        relay, call = capture_relay()
        sent = run(relay, call, packets_of(c.audio), late_after_onsets(c))
        out = agent_audio(sent, len(c.audio) // PACKET)
        leaks += [leaked_ms(out, c, t) for t in c.tones]
    assert max(leaks) > 0.0


def test_late_packets_change_nothing_but_their_own_deadline_release() -> None:
    """Speech with jitter and late packets: every packet released with look-ahead is exactly what
    the masker decides on time (bit-exact where it passes the audio), and a deadline release
    changes no later decision."""
    relay, call = capture_relay(MaskMode.COMFORT_NOISE)
    n = 300
    audio = np.clip(np.rint(speech_like(n * PACKET, np.random.default_rng(4), -30.0)), -32768, 32767)
    pkts = packets_of(audio.astype(np.int16))
    codes = np.frombuffer(b"".join(p[12:] for p in pkts), np.uint8)
    reference = mask_bank([ULAW_DECODE[codes]], MaskMode.COMFORT_NOISE)[0]  # on time, full look-ahead
    rng = np.random.default_rng(8)
    arrivals = [1.0 + PACKET_S * i + float(rng.uniform(0, 0.008)) + (0.025 if i % 17 == 0 else 0.0)
                for i in range(n)]
    arrivals = np.maximum.accumulate(arrivals).tolist()  # in order: those after a late one catch up in a burst
    sent = run(relay, call, pkts, arrivals)
    late = {s for s, (t, _) in sent.items() if t - arrivals[s] == pytest.approx(DEADLINE_S)}
    assert len(late) >= 10
    loud = passed = 0
    for seq, (_, data) in sent.items():
        assert data[:12] == pkts[seq][:12]
        row = slice(seq * PACKET, (seq + 1) * PACKET)
        if seq not in late:
            assert data[12:] == encode_masked(codes[row], reference[row], "PCMU").tobytes(), seq
            passed += data == pkts[seq]
            continue
        # Released without look-ahead: the masker's flush may mask what it cannot clear
        # (loose flags), and a loud tail leaves as silence.
        tail = ULAW_DECODE[np.frombuffer(pkts[seq][-TAIL_SAMPLES:], np.uint8)].astype(np.float64)
        if np.mean(tail ** 2) >= relay_module.TAIL_QUIET_POWER:
            loud += 1
            assert data[-TAIL_SAMPLES:] == b"\xff" * TAIL_SAMPLES
    assert loud >= 5 and passed >= n // 2  # most speech passes bit-exact


# ---------------------------------------------------------------- the hold-time histogram


def jittery_arrivals(n: int, seed: int) -> list[float]:
    """Network jitter up to 12 ms, and every ~50 packets a 30-60 ms delay spike that the
    following packets catch up from (they arrive in a burst)."""
    rng = np.random.default_rng(seed)
    arrivals, spike_until, spike_at = [], -1, 0.0
    for i in range(n):
        t = 1.0 + PACKET_S * i + float(rng.exponential(0.003)) % 0.012
        if i > spike_until and rng.random() < 0.02:
            spike_at, spike_until = t + float(rng.uniform(0.03, 0.06)), i + 3
        if i <= spike_until:
            t = max(t, spike_at)
        arrivals.append(t)
    return arrivals


@pytest.mark.parametrize("capped", [True, False])
def test_hold_time_p99_within_21_ms_in_a_jittery_run(capped, monkeypatch) -> None:
    if not capped:  # the relay before the cap: released only by the successor
        monkeypatch.setattr(relay_module, "HOLD_SLACK_S", 10.0)
    relay, call = capture_relay()
    n = 1500
    pkts = packets_of(np.clip(np.rint(speech_like(n * PACKET, np.random.default_rng(2), -30.0)), -32768, 32767))
    run(relay, call, pkts, jittery_arrivals(n, seed=11))
    hist = relay.stats.lookahead_seconds
    assert hist.count >= n - 1
    p99 = hist.quantile(0.99)
    if capped:
        assert p99 <= 0.021
        assert hist.counts[-1] == 0 and sum(hist.counts[hist.bounds_s.index(21e-3) + 1:]) == 0
    else:
        assert p99 > 0.021


# ---------------------------------------------------------------- the edge


async def test_edge_timer_releases_a_held_packet_whose_successor_never_comes() -> None:
    import asyncio
    import socket

    from gateway.media.leg import LegMedia
    from gateway.transport.rtp import RtpMediaController

    def sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    ctl = RtpMediaController("127.0.0.1", 31400, 31499, relay=Relay(masker=MaskerBank(MaskMode.SILENCE)))
    caller, agent = sock(), sock()
    try:
        call = ctl.open_call("call-1")
        cp, ap = caller.getsockname(), agent.getsockname()
        call.configure(LegMedia(cp, (cp[0], cp[1] + 1), "PCMU", 0, 101),
                       LegMedia(ap, (ap[0], ap[1] + 1), "PCMU", 0, 101))
        call.set_capture(True)
        pkt = packets_of(np.zeros(PACKET, np.int16))[0]
        caller.sendto(pkt, ("127.0.0.1", call.caller_port))
        # One packet, no successor: only the release deadline on the edge's timer lets it out.
        data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(agent, 2048), 2.0)
        assert data == pkt
        assert ctl.relay.stats.lookahead_seconds.count == 1
    finally:
        ctl.close()
        caller.close()
        agent.close()


def test_deadline_due_says_when_handle_timer_would_release() -> None:
    relay, call = capture_relay()
    pkts = packets_of(loud_speech(2))
    assert not relay.deadline_due(1.0)  # nothing held
    relay.receive_rtp(call.caller, pkts[0], CALLER_SDP, 1.0)
    relay.process_pending(1.0)
    assert relay.holding
    assert not relay.deadline_due(1.0 + DEADLINE_S - 1e-6)
    assert relay.deadline_due(1.0 + DEADLINE_S)
    assert len(relay.handle_timer(1.0 + DEADLINE_S)) == 1
    assert not relay.deadline_due(1.0 + DEADLINE_S)
    # The late successor is held in turn, on its own deadline.
    relay.receive_rtp(call.caller, pkts[1], CALLER_SDP, 1.03)
    relay.process_pending(1.03)
    assert not relay.deadline_due(1.03 + DEADLINE_S - 1e-6)
    assert relay.deadline_due(1.03 + DEADLINE_S)
