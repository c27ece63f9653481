"""Latching against RTP injection and bleed: a foreign source never latches on one packet.

Ladders on a fake clock: the real caller sends every 20 ms while a foreign source tries to
take the route; a NAT rebinding (same stream, new port) still moves the latch.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.leg import Direction, LegMedia
from gateway.media.relay import RELATCH_PACKETS, RELATCH_SILENCE_S, Relay, SourceLatched
from gateway.media.rtp import RtpPacket

CALLER_SDP = ("127.0.0.1", 4000)
AGENT_SDP = ("127.0.0.1", 6000)
FOREIGN_HOST = ("127.0.0.2", 4000)
FOREIGN_PORT = ("127.0.0.1", 4444)
REAL_SSRC = 0x1111
PERIOD_S = 0.020


def leg(addr, te=101) -> LegMedia:
    return LegMedia(remote_rtp=addr, remote_rtcp=(addr[0], addr[1] + 1), codec="PCMU", audio_pt=0,
                    telephone_event_pt=te, direction=Direction.SENDRECV)


def audio(seq: int, ssrc: int = REAL_SSRC, fill: int | None = None) -> bytes:
    body = bytes([fill]) * 160 if fill is not None else bytes((seq * 7 + i) & 0xFF for i in range(160))
    return bytes(RtpPacket(payload_type=0, sequence_number=seq & 0xFFFF, timestamp=160 * seq, ssrc=ssrc,
                           payload=body))


def rr(ssrc: int = REAL_SSRC) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def make(caller_sdp=CALLER_SDP):
    relay = Relay()
    call = relay.add_call("c1")
    relay.configure("c1", leg(caller_sdp), leg(AGENT_SDP, te=96))
    return relay, call


def latched(relay: Relay) -> list[SourceLatched]:
    """The caller leg's RTP latch events since the last call."""
    return [e for e in iter(relay.next_event, None) if isinstance(e, SourceLatched) and e.leg == "caller"
            and not e.rtcp]


def agent_reply_goes_to(relay: Relay, call, seq: int, now: float) -> tuple[str, int]:
    out = relay.receive_rtp(call.agent, audio(seq, ssrc=0x2222), AGENT_SDP, now)
    assert out is not None
    return out[1]


def test_injection_with_a_fresh_ssrc_is_dropped_while_the_caller_talks() -> None:
    for foreign in (FOREIGN_HOST, FOREIGN_PORT):
        relay, call = make()
        assert relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0) is not None
        assert latched(relay) == [SourceLatched("c1", "caller", False, CALLER_SDP)]
        relayed = []
        for i in range(1, 51):
            now = i * PERIOD_S
            # The forger sends a clean stream of its own (contiguous numbers, one SSRC) twice as fast.
            for k in (2 * i, 2 * i + 1):
                out = relay.receive_rtp(call.caller, audio(k, ssrc=0xBAD, fill=0x5A), foreign, now)
                if out is not None:
                    relayed.append(out)
            assert agent_reply_goes_to(relay, call, i, now) == CALLER_SDP
            out = relay.receive_rtp(call.caller, audio(i), CALLER_SDP, now + 0.001)
            assert out == (audio(i), AGENT_SDP)
        assert relayed == []
        assert relay.stats.drops[0]["unexpected_source"] == 100
        assert relay.stats.relayed[0] == 51
        assert latched(relay) == []


def test_injection_with_the_callers_own_ssrc_is_dropped_while_the_caller_talks() -> None:
    # A forger that sees the stream copies its SSRC and runs ahead of its numbers: every real
    # packet in between breaks the run, so it never proves itself.
    relay, call = make()
    relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0)
    latched(relay)
    seq = 1
    for i in range(1, 41):
        now = i * PERIOD_S
        for _ in range(RELATCH_PACKETS - 1):
            assert relay.receive_rtp(call.caller, audio(seq + 100, fill=0x5A), FOREIGN_HOST, now) is None
            seq += 1
        assert relay.receive_rtp(call.caller, audio(i), CALLER_SDP, now + 0.001) == (audio(i), AGENT_SDP)
        seq = i + 1
        assert agent_reply_goes_to(relay, call, i, now) == CALLER_SDP
    assert latched(relay) == []


def test_a_burst_between_two_caller_packets_proves_nothing() -> None:
    # The forger copies SSRC and next numbers and sends RELATCH_PACKETS of them inside one packet time.
    relay, call = make()
    for i in range(30):
        now = i * PERIOD_S
        assert relay.receive_rtp(call.caller, audio(i), CALLER_SDP, now) == (audio(i), AGENT_SDP)
        for k in range(RELATCH_PACKETS + 2):
            assert relay.receive_rtp(call.caller, audio(i + 1 + k, fill=0x5A), FOREIGN_PORT, now + 0.002 * (k + 1)) is None
        assert agent_reply_goes_to(relay, call, i, now + 0.019) == CALLER_SDP


def test_nat_rebind_relatches_after_n_packets_and_loses_only_those() -> None:
    relay, call = make()
    moved = ("127.0.0.1", 4002)
    forwarded = []
    for seq in range(20):
        out = relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, seq * PERIOD_S)
        forwarded.append(seq if out is not None else None)
    latched(relay)
    # The NAT gives the caller a new port; the stream goes on (same SSRC, next numbers).
    for seq in range(20, 40):
        now = seq * PERIOD_S
        dest = agent_reply_goes_to(relay, call, seq, now)
        out = relay.receive_rtp(call.caller, audio(seq), moved, now + 0.001)
        if out is not None:
            assert out == (audio(seq), AGENT_SDP)
        forwarded.append(seq if out is not None else None)
        # The agent's audio never goes to the new port before it has proven itself.
        assert dest == (moved if seq > 20 + RELATCH_PACKETS - 1 else CALLER_SDP)
    lost = [i for i, f in enumerate(forwarded) if f is None]
    assert lost == list(range(20, 20 + RELATCH_PACKETS - 1))
    assert latched(relay) == [SourceLatched("c1", "caller", False, moved)]
    assert relay.stats.drops[0]["unexpected_source"] == RELATCH_PACKETS - 1
    # The old binding is now foreign: a stray packet from it is dropped.
    assert relay.receive_rtp(call.caller, audio(40), CALLER_SDP, 40 * PERIOD_S) is None


def test_nat_rebind_after_a_few_lost_packets_still_relatches() -> None:
    relay, call = make()
    for seq in range(10):
        relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, seq * PERIOD_S)
    moved = ("127.0.0.1", 4002)
    outs = [relay.receive_rtp(call.caller, audio(seq), moved, seq * PERIOD_S) for seq in range(15, 15 + RELATCH_PACKETS)]
    assert outs[:-1] == [None] * (RELATCH_PACKETS - 1) and outs[-1] is not None


def test_replayed_old_numbers_from_a_new_port_never_latch() -> None:
    relay, call = make()
    for seq in range(100, 200):
        relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, seq * PERIOD_S)
    # Same SSRC, contiguous, but behind the stream: a replay of captured packets.
    for seq in range(50, 80):
        assert relay.receive_rtp(call.caller, audio(seq), FOREIGN_PORT, 4.0 + seq * 0.001) is None
    assert agent_reply_goes_to(relay, call, 1, 4.1) == CALLER_SDP


def test_sprayed_packets_without_contiguous_numbers_never_latch() -> None:
    relay, call = make()
    relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0)
    # The caller falls silent; a sprayer sends packets with numbers that never follow each other.
    for k in range(200):
        now = 3.0 + k * 0.001
        assert relay.receive_rtp(call.caller, audio(k * 2, ssrc=0xBAD), FOREIGN_HOST, now) is None
    assert agent_reply_goes_to(relay, call, 1, 3.3) == CALLER_SDP


def test_new_ssrc_latches_only_after_the_caller_went_quiet() -> None:
    relay, call = make()
    relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0)
    latched(relay)
    restarted = ("127.0.0.1", 4010)
    early = RELATCH_SILENCE_S - 0.1
    assert [relay.receive_rtp(call.caller, audio(k, ssrc=0x3333), restarted, early + k * PERIOD_S)
            for k in range(RELATCH_PACKETS)] == [None] * RELATCH_PACKETS
    # Still within the silence bound at its start: the run does not count; a new run after it does.
    start = RELATCH_SILENCE_S + 0.01
    outs = [relay.receive_rtp(call.caller, audio(k, ssrc=0x3333), restarted, start + k * PERIOD_S)
            for k in range(10, 10 + RELATCH_PACKETS)]
    assert outs[:-1] == [None] * (RELATCH_PACKETS - 1) and outs[-1] is not None
    assert latched(relay) == [SourceLatched("c1", "caller", False, restarted)]


def test_before_the_first_latch_the_sdp_host_wins_over_another_host() -> None:
    relay, call = make()
    for seq in range(RELATCH_PACKETS - 1):
        assert relay.receive_rtp(call.caller, audio(seq, ssrc=0xBAD), FOREIGN_HOST, seq * 0.001) is None
    assert relay.receive_rtp(call.caller, audio(0), ("127.0.0.1", 4100), 0.01) is not None
    # The forger's run is broken (the latched source spoke), and it needs silence now anyway.
    assert relay.receive_rtp(call.caller, audio(RELATCH_PACKETS - 1, ssrc=0xBAD), FOREIGN_HOST, 0.02) is None
    assert agent_reply_goes_to(relay, call, 1, 0.03) == ("127.0.0.1", 4100)


def test_unusable_sdp_address_latches_the_first_valid_packet() -> None:
    relay, call = make(caller_sdp=("0.0.0.0", 4000))
    assert relay.receive_rtp(call.caller, audio(1), FOREIGN_HOST, 0.0) is not None
    assert agent_reply_goes_to(relay, call, 1, 0.0) == FOREIGN_HOST


def test_rtcp_follows_the_rtp_latch() -> None:
    relay, call = make()
    agent_rtcp = (AGENT_SDP[0], AGENT_SDP[1] + 1)
    # Before RTP latched: only the SDP host.
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.2", 4001), 0.0) is None
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.1", 4001), 0.0) == (rr(), agent_rtcp)
    relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0)
    # RTCP latched: another source is dropped, on another host or the same, until RTP moves.
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.2", 4001), 0.1) is None
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.1", 4999), 0.1) is None
    assert relay.stats.drops[0]["unexpected_source"] == 3
    # A NAT rebind moves RTP; RTCP may then move too, once, from the RTP source's host.
    moved = ("127.0.0.1", 4002)
    for seq in range(1, 1 + RELATCH_PACKETS):
        relay.receive_rtp(call.caller, audio(seq), moved, 0.2 + seq * PERIOD_S)
    assert call.caller.rtp_src == moved
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.2", 4003), 0.5) is None
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.1", 4003), 0.5) == (rr(), agent_rtcp)
    assert relay.receive_rtcp(call.caller, rr(), ("127.0.0.1", 4001), 0.6) is None
    # The agent's RTCP goes back to the caller's latched RTCP source only.
    out = relay.receive_rtcp(call.agent, rr(0x2222), agent_rtcp, 0.7)
    assert out == (rr(0x2222), ("127.0.0.1", 4003))
    events = [e for e in iter(relay.next_event, None) if isinstance(e, SourceLatched)]
    assert [e.address for e in events if e.rtcp and e.leg == "caller"] == [("127.0.0.1", 4001), ("127.0.0.1", 4003)]


def test_strict_mode_never_relatches() -> None:
    relay = Relay(strict=True)
    call = relay.add_call("c1")
    relay.configure("c1", leg(CALLER_SDP), leg(AGENT_SDP, te=96))
    relay.receive_rtp(call.caller, audio(0), CALLER_SDP, 0.0)
    moved = ("127.0.0.1", 4002)
    assert all(relay.receive_rtp(call.caller, audio(s), moved, s * PERIOD_S) is None for s in range(1, 20))
    assert relay.stats.drops[0]["source"] == 19
    assert agent_reply_goes_to(relay, call, 1, 1.0) == CALLER_SDP


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FOREIGN_HOST, FOREIGN_PORT, ("127.0.0.3", 9)]),
                          st.sampled_from([REAL_SSRC, 0xBAD, 0]),
                          st.integers(0, 0xFFFF), st.integers(1, 8)),
                max_size=30))
def test_no_foreign_packet_reaches_the_agent_while_the_caller_talks(bursts) -> None:
    """Whatever the forger sends (bursts of contiguous packets), the talking caller keeps the route."""
    relay, call = make()
    seq = 0
    relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, 0.0)
    for j, (addr, ssrc, first, count) in enumerate(bursts):
        now = (j + 1) * PERIOD_S
        for k in range(count):
            assert relay.receive_rtp(call.caller, audio(first + k, ssrc=ssrc, fill=0x5A), addr, now) is None
        seq += 1
        assert relay.receive_rtp(call.caller, audio(seq), CALLER_SDP, now + 0.001) == (audio(seq), AGENT_SDP)
        assert agent_reply_goes_to(relay, call, j, now) == CALLER_SDP
