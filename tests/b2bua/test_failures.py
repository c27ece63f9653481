"""Ladder tests: transport failures reported by the edge, and cleanup of cancelled agent INVITEs."""

from __future__ import annotations

from gateway.b2bua import CallEnded, Peer
from tests.b2bua.ladder import CALLER, PBX, Net, only, request, sdp, statuses
from tests.b2bua.test_b2bua import connect, start

CALLER_TCP = Peer("tcp", "192.0.2.10", 40123, 5)


def ended(net: Net) -> list[str]:
    return [e.reason for e in net.events if isinstance(e, CallEnded)]


def test_agent_unreachable_at_invite_is_a_503_to_the_caller():
    """RFC 3261 8.1.3.1 / 17.1.4: a transport error is treated as a 503 from the next hop."""
    net = Net()
    start(net)
    net.gw.transport_failed(PBX, net.now)
    out = net.flush()
    assert statuses(out, CALLER) == [503] and only(out, PBX) == []
    assert ended(net) == ["agent unreachable"]
    assert only(net.advance(40.0), PBX) == []  # no retransmission to the dead peer
    assert net.gw.pending_transactions == 0


def test_failure_of_another_peer_changes_nothing():
    net = Net()
    start(net)
    net.gw.transport_failed(Peer("udp", "203.0.113.9", 5060), net.now)
    assert net.flush() == [] and ended(net) == []
    net.gw.transport_failed(Peer("tcp", PBX.host, PBX.port, 99), net.now)  # TCP is not our UDP flow
    assert net.flush() == [] and ended(net) == []


def test_dead_caller_connection_before_ack_ends_the_call():
    """RFC 3261 17.2.4: our 2xx cannot reach the caller any more: BYE the agent."""
    net = Net()
    out = net.send(request("INVITE", body=sdp(40000)), CALLER_TCP)
    (inv,) = only(out, PBX)
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    assert statuses(out, CALLER_TCP) == [200]
    net.gw.transport_failed(CALLER_TCP, net.now)
    out = net.flush()
    assert statuses(out, PBX) == ["BYE"]
    assert ended(net) == ["caller unreachable"]


def test_dead_caller_connection_while_ringing_cancels_the_agent():
    net = Net()
    out = net.send(request("INVITE", body=sdp(40000)), CALLER_TCP)
    (inv,) = only(out, PBX)
    net.send(net.answer(inv, 180), PBX)
    net.gw.transport_failed(Peer("tcp", CALLER_TCP.host, CALLER_TCP.port, CALLER_TCP.connection_id), net.now)
    out = net.flush()
    assert statuses(out, PBX) == ["CANCEL"]
    assert ended(net) == ["caller unreachable"]


def test_agent_unreachable_during_reinvite_answers_503_and_hangs_up():
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag, body=sdp(40010)))
    assert statuses(out, PBX) == ["INVITE"]
    net.gw.transport_failed(PBX, net.now)
    out = net.flush()
    assert statuses(out, CALLER) == [503, "BYE"]
    assert ended(net) == ["agent unreachable"]


def test_agent_unreachable_for_relayed_info_answers_503_and_keeps_the_call():
    net = Net(policy=lambda *a: True)
    inv, ok = connect(net)
    raw = request("INFO", cseq=2, branch="z9hG4bKinfo", to_tag=ok.to_tag,
                  extra="Content-Type: application/dtmf-relay\r\n", body=b"Signal=7\r\nDuration=100\r\n")
    assert statuses(net.send(raw), PBX) == ["INFO"]
    net.gw.transport_failed(PBX, net.now)
    assert statuses(net.flush(), CALLER) == [503]
    assert ended(net) == []


def test_cancelled_invite_without_final_answer_is_forgotten_after_64_t1():
    """RFC 3261 9.1: no final response 64*T1 after the CANCEL: the INVITE is considered cancelled."""
    net = Net()
    inv = start(net)
    net.send(net.answer(inv, 180), PBX)
    out = net.send(request("CANCEL", branch="z9hG4bKc1"))
    (cancel,) = only(out, PBX)
    net.send(net.answer(cancel, 200), PBX)  # the agent accepts the CANCEL but never sends 487
    assert net.gw.pending_transactions == 1
    net.advance(31.0)
    assert net.gw.pending_transactions == 1
    net.advance(33.0)
    assert net.gw.pending_transactions == 0
    net.advance(200.0)
    assert net.gw.get_timer() is None
    # A 2xx that late finds nothing: it is not ours any more.
    late = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
    assert late == []


def test_late_2xx_within_the_linger_is_acked_and_byed():
    net = Net()
    inv = start(net)
    net.send(net.answer(inv, 180), PBX)
    net.send(request("CANCEL", branch="z9hG4bKc1"))
    net.advance(10.0)
    out = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
    assert statuses(out, PBX) == ["ACK", "BYE"] and only(out, CALLER) == []


def test_finished_calls_leave_no_state_behind():
    net = Net()
    for n in range(3):
        out = net.send(request("INVITE", call_id=f"c{n}", branch=f"z9hG4bKi{n}", body=sdp(40000)))
        (inv,) = only(out, PBX)
        out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
        (ok,) = only(out, CALLER)
        net.send(request("ACK", call_id=f"c{n}", branch=f"z9hG4bKa{n}", to_tag=ok.to_tag))
        out = net.send(request("BYE", call_id=f"c{n}", cseq=2, branch=f"z9hG4bKb{n}", to_tag=ok.to_tag))
        (bye,) = only(out, PBX)
        net.send(net.answer(bye, 200), PBX)
    assert net.gw.calls == []
    net.advance(100.0)
    assert net.gw.pending_transactions == 0 and net.gw.get_timer() is None
