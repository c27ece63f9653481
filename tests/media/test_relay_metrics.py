"""RFC 3550 loss and jitter per stream and the look-ahead hold times, read from the relay's plain counters."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_interarrival_jitter_follows_rfc3550() -> None:
    rng = np.random.default_rng(3)
    relay, call = make()
    n = 400
    arrivals = 100.0 + 0.02 * np.arange(n) + rng.uniform(0, 0.006, n)  # up to 6 ms of network jitter
    stamps = [(0xFFFFF000 + 160 * i) & 0xFFFFFFFF for i in range(n)]  # wraps the 32-bit timestamp
    for i in range(n):
        relay.receive_rtp(call.caller, pkt(i, ts=stamps[i]), CALLER_SDP, float(arrivals[i]))
    expected = reference_jitter_s(arrivals, 0xFFFFF000 + 160 * np.arange(n))
    assert expected > 1e-3
    assert call.caller.jitter_s == pytest.approx(expected, rel=0.05)


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
