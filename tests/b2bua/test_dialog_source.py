"""In-dialog requests are accepted only from the host the leg's dialog was set up with.

Found by tests/robustness: a BYE carrying the live call's Call-ID and tags, sent from
another address, ended the gateway's side of the call and BYEd the agent while the
real caller stayed on a dead half-call (a re-INVITE could move the media the same way).
"""

from __future__ import annotations

from gateway.b2bua import B2buaConfig, MessageRejected
from gateway.sip.transaction import Peer
from tests.b2bua.ladder import CALLER, PBX, Net, request, sdp, statuses
from tests.b2bua.test_b2bua import agent_request, connect

SPOOFER = Peer("udp", "203.0.113.66", 5060)


def answers(out) -> list[int]:
    """Statuses of the responses the gateway sent, wherever the Via sent them."""
    return [m.status for m, _ in out if hasattr(m, "status")]


def test_bye_from_foreign_host_is_481_and_call_survives():
    net = Net()
    _, ok = connect(net)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKspoof", to_tag=ok.to_tag), SPOOFER)
    assert answers(out) == [481] and statuses(out, PBX) == []
    assert [e.reason for e in net.events if isinstance(e, MessageRejected)] == [
        "SIP in-dialog request from a foreign host"]
    assert len(net.gw.calls) == 1
    out = net.send(request("BYE", cseq=3, branch="z9hG4bKbye", to_tag=ok.to_tag))
    assert statuses(out, CALLER) == [200] and statuses(out, PBX) == ["BYE"]


def test_reinvite_from_foreign_host_does_not_move_media():
    net = Net()
    _, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag, body=sdp(41000)), SPOOFER)
    assert answers(out) == [100, 481] and statuses(out, PBX) == []


def test_same_host_other_port_is_accepted():
    net = Net()
    _, ok = connect(net)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKbye", to_tag=ok.to_tag), CALLER._replace(port=5999))
    assert statuses(out, PBX) == ["BYE"] and net.gw.calls == []


def test_agent_leg_checked_when_next_hop_is_an_ip():
    agent = Peer("udp", "192.0.2.20", 5080)
    net = Net(B2buaConfig(next_hop="sip:192.0.2.20:5080"))
    net.gw.receive(request("INVITE", body=sdp(40000)), CALLER, net.now)
    (inv,) = [m for m, p in net.flush() if p == agent]
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), agent)
    (ok,) = [m for m, p in out if p == CALLER]
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    bye = agent_request(net, inv, "BYE", 1)
    out = net.send(bye, SPOOFER)
    assert answers(out) == [481] and statuses(out, CALLER) == []
    out = net.send(agent_request(net, inv, "BYE", 2), agent)
    assert statuses(out, CALLER) == ["BYE"]


def test_check_can_be_turned_off():
    net = Net(B2buaConfig(next_hop="sip:pbx.example.com:5080", dialog_source_check=False))
    _, ok = connect(net)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKspoof", to_tag=ok.to_tag), SPOOFER)
    assert answers(out) == [200] and statuses(out, PBX) == ["BYE"]
