"""RFC 3550 loss and jitter per stream and the look-ahead hold times, read from the relay's plain counters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.relay import Relay
from gateway.media.rtp import RtpPacket
from tests.media.test_relay import AGENT_SDP, CALLER_SDP, FakeDetector, FakeMasker, leg


def make(**kw):
    relay = Relay(**kw)
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER_SDP), leg(AGENT_SDP, te=96))
    return relay, call


def pkt(seq: int, ts: int | None = None, ssrc: int = 0x1111, pt: int = 0) -> bytes:
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF,
                           timestamp=(160 * seq if ts is None else ts) & 0xFFFFFFFF, ssrc=ssrc, payload=bytes(160)))


def lost(relay: Relay) -> dict[str, int]:
    return {d: n for (d,), n in relay.stats.packets_lost_total().items()}


def test_gaps_are_lost_packets_per_direction() -> None:
    relay, call = make()
    for seq in (1, 2, 5, 6, 9):  # 3, 4, 7, 8 missing
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 0.02 * seq)
    for seq in (1, 3):
        relay.receive_rtp(call.agent, pkt(seq, ssrc=7), AGENT_SDP, 0.02 * seq)
    assert call.caller.packets_lost == 4 and call.agent.packets_lost == 1
    assert lost(relay) == {"caller_to_agent": 0, "agent_to_caller": 0}  # folded in at sample time
    relay.handle_timer(relay.get_timer())
    assert lost(relay) == {"caller_to_agent": 4, "agent_to_caller": 1}


def test_loss_across_the_sequence_wrap() -> None:
    relay, call = make()
    for seq in (65533, 65534, 65535, 1, 2):  # 0 missing
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 0.0)
    assert call.caller.packets_lost == 1
    relay.remove_call("c1")
    assert lost(relay)["caller_to_agent"] == 1


def test_late_and_duplicate_packets_never_make_the_total_decrease() -> None:
    relay, call = make()
    for seq in (1, 2, 4):
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 0.0)
    relay.handle_timer(relay.get_timer())
    assert lost(relay)["caller_to_agent"] == 1
    for seq in (3, 3, 4, 5):  # the late one, then duplicates: RFC 3550 lost goes negative
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 1.5)
    assert call.caller.packets_lost == 5 - 7
    relay.handle_timer(relay.get_timer())
    assert lost(relay)["caller_to_agent"] == 1


def test_new_ssrc_starts_a_new_stream_and_keeps_the_old_loss() -> None:
    relay, call = make()
    for seq in (10, 13):
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 0.0)
    for seq in (500, 501, 503):
        relay.receive_rtp(call.caller, pkt(seq, ssrc=0x2222), CALLER_SDP, 0.1)
    relay.remove_call("c1")
    assert lost(relay)["caller_to_agent"] == 2 + 1


def test_a_huge_jump_resyncs_on_the_second_packet_without_counting_loss() -> None:
    relay, call = make()
    for seq in (1, 2, 3, 30000, 30001, 30002, 30004):  # RFC 3550 A.1: restart at 30001
        relay.receive_rtp(call.caller, pkt(seq), CALLER_SDP, 0.0)
    assert call.caller.packets_lost == 1
    relay.remove_call("c1")
    assert lost(relay)["caller_to_agent"] == 1


def reference_jitter_s(arrivals_s, timestamps, clock_hz=8000) -> float:
    """RFC 3550 6.4.1 in floating point: J += (|D(i-1,i)| - J) / 16."""
    j = 0.0
    for i in range(1, len(arrivals_s)):
        d = (arrivals_s[i] - arrivals_s[i - 1]) * clock_hz - (timestamps[i] - timestamps[i - 1])
        j += (abs(d) - j) / 16
    return j / clock_hz


def jittery_stream(relay, leg_, n: int, seed: int, start_s: float = 100.0):
    rng = np.random.default_rng(seed)
    arrivals = start_s + 0.02 * np.arange(n) + rng.uniform(0, 0.006, n)  # up to 6 ms of network jitter
    stamps = 0xFFFFF000 + 160 * np.arange(n)  # wraps the 32-bit timestamp
    return arrivals, stamps


def test_interarrival_jitter_is_exactly_rfc3550_when_every_pair_is_taken() -> None:
    relay, call = make(jitter_every=1)
    arrivals, stamps = jittery_stream(relay, call.caller, 400, seed=3)
    for i in range(400):
        relay.receive_rtp(call.caller, pkt(i, ts=int(stamps[i])), CALLER_SDP, float(arrivals[i]))
    expected = reference_jitter_s(arrivals, stamps)
    assert expected > 1e-3
    assert call.caller.jitter_s == pytest.approx(expected, rel=1e-6)


def test_sampled_jitter_estimates_the_same_rfc3550_value() -> None:
    """One pair in 16 (the default): the same D, so the same mean; each value within the noise."""
    relay, call = make()
    n = 5000
    arrivals, stamps = jittery_stream(relay, call.caller, n, seed=4)
    ours, ref = [], []
    for i in range(n):
        relay.receive_rtp(call.caller, pkt(i, ts=int(stamps[i])), CALLER_SDP, float(arrivals[i]))
        if i % 50 == 49 and i > 500:  # once a second, after both have settled
            ours.append(call.caller.jitter_s)
            ref.append(reference_jitter_s(arrivals[:i + 1], stamps[:i + 1]))
    assert np.mean(ours) == pytest.approx(np.mean(ref), rel=0.05)
    # Both are noisy estimates of E|D| (A.8 averages ~31 packets, the sampled one ~15 pairs).
    assert np.mean(np.abs(np.array(ours) / np.array(ref) - 1)) < 0.25


def test_default_jitter_takes_one_pair_in_sixteen() -> None:
    """The estimate moves only when a pair closes: on sequence numbers 16k + 1, nowhere else."""
    relay, call = make()
    arrivals, stamps = jittery_stream(relay, call.caller, 200, seed=7)
    moved = []
    for i in range(200):
        before = call.caller.rx_jitter
        relay.receive_rtp(call.caller, pkt(i, ts=int(stamps[i])), CALLER_SDP, float(arrivals[i]))
        if call.caller.rx_jitter != before:
            moved.append(i)
    assert moved and all(i % 16 == 1 for i in moved)
    assert len(moved) >= 10


def test_sampled_jitter_sees_every_other_packet_late() -> None:
    """Pairs are consecutive packets, so a pattern in step with the sampling still shows."""
    relay, call = make()
    for i in range(800):
        relay.receive_rtp(call.caller, pkt(i), CALLER_SDP, 10.0 + 0.02 * i + (0.004 if i % 2 else 0.0))
    assert call.caller.jitter_s == pytest.approx(0.004, rel=0.01)


def test_evenly_spaced_stream_has_no_jitter_and_events_do_not_count() -> None:
    relay, call = make()
    for i in range(50):
        relay.receive_rtp(call.caller, pkt(i), CALLER_SDP, 10.0 + 0.02 * i)
    # RFC 4733 packets repeat their event's timestamp: not audio, not in the jitter.
    for i in range(50, 60):
        relay.receive_rtp(call.caller, pkt(i, ts=160 * 50, pt=101)[:12] + b"\x05\x0a\x01\x40",
                          CALLER_SDP, 10.0 + 0.02 * i)
    assert call.caller.jitter_s == 0.0
    assert call.caller.packets_lost == 0


def test_jitter_histogram_sampled_once_a_second_per_active_stream_and_at_stream_end() -> None:
    relay, call = make()
    t = 50.0
    for i in range(150):  # 3 s of caller audio, agent silent
        t = 50.0 + 0.02 * i
        while (when := relay.get_timer()) is not None and when <= t:
            relay.handle_timer(when)
        relay.receive_rtp(call.caller, pkt(i), CALLER_SDP, t + (0.004 if i % 2 else 0.0))
    samples = relay.stats.jitter.count
    assert samples == 2  # at 51 s and 52 s; the agent stream never sent
    relay.remove_call("c1")  # the last partial second
    assert relay.stats.jitter.count == 3
    assert relay.stats.jitter.sum_s == pytest.approx(3 * 0.004, rel=0.3)


def test_lookahead_histogram_holds_each_capture_packet_one_packet_time() -> None:
    relay, call = make(detector=FakeDetector(), masker=FakeMasker())
    relay.set_capture("c1", True, now=0.0)
    for i in range(10):
        now = 1.0 + 0.02 * i
        assert relay.receive_rtp(call.caller, pkt(i), CALLER_SDP, now) is None
        sends = relay.process_pending(now + 0.0003)  # end of the loop iteration
        assert len(sends) == (1 if i else 0)
    assert len(relay.set_capture("c1", False, now=1.197)) == 1
    hist = relay.stats.lookahead_seconds
    assert hist.count == 10
    counts = dict(zip(hist.bounds_s, hist.counts))
    assert counts[20.5e-3] == 9  # 20.3 ms each; the last one, released at capture end after 17 ms
    assert counts[19e-3] == 1
    assert hist.sum_s == pytest.approx(9 * 0.0203 + 0.017)


def reference_lost(seqs: list[int]) -> int:
    """RFC 3550 A.1 update_seq (no probation) and A.3 expected - received, written out plainly."""
    base = max_seq = seqs[0]
    cycles, received, bad_seq = 0, 1, -1
    for seq in seqs[1:]:
        udelta = (seq - max_seq) & 0xFFFF
        if udelta < 3000:
            if seq < max_seq:
                cycles += 0x10000
            max_seq = seq
        elif udelta <= 0x10000 - 100:
            if seq == bad_seq:
                base = max_seq = seq
                cycles, received, bad_seq = 0, 1, -1
                continue
            bad_seq = (seq + 1) & 0xFFFF
            continue
        received += 1
    return cycles + max_seq - base + 1 - received


@given(st.integers(0, 0xFFFF), st.lists(st.one_of(
    st.integers(1, 1).map(lambda d: ("step", d)),
    st.integers(2, 40).map(lambda d: ("step", d)),
    st.integers(-120, 0).map(lambda d: ("step", d)),
    st.integers(3000, 0x10000 - 101).map(lambda d: ("step", d)),
    st.just(("repeat", 0)),
), max_size=300))
@settings(max_examples=300, deadline=None)
def test_loss_equals_a_plain_rfc3550_a1_a3(first: int, steps) -> None:
    """The one-compare fast path and the running count give A.3's lost for any sequence walk."""
    seqs, seq = [first], first
    for kind, d in steps:
        if kind == "step":
            seq = (seq + d) & 0xFFFF
        seqs.append(seq)
    relay, call = make()
    for s in seqs:
        relay.receive_rtp(call.caller, pkt(s), CALLER_SDP, 0.0)
    assert call.caller.packets_lost == reference_lost(seqs)
