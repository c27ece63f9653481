"""The demo's user agent core, two of them wired back to back with a fake clock (no sockets)."""

from __future__ import annotations

from gateway.demo.useragent import CallEnded, CallEstablished, CallFailed, CallPhase, UserAgent
from gateway.sip.message import parse_message
from gateway.sip.transaction import Peer

CALLER = Peer("udp", "127.0.0.1", 5061)
AGENT = Peer("udp", "127.0.0.1", 5062)


def pair() -> tuple[UserAgent, UserAgent]:
    caller = UserAgent(user="bob", host="127.0.0.1", sip_port=CALLER.port, rtp_port=40000)
    agent = UserAgent(user="alice", host="127.0.0.1", sip_port=AGENT.port, rtp_port=40002)
    return caller, agent


def transfer(caller: UserAgent, agent: UserAgent, now: float, drop: set[str] = frozenset()) -> list[str]:
    """Move datagrams both ways until quiet; return the start lines seen, in order."""
    seen = []
    for _ in range(20):
        moved = False
        for src, dst, src_peer in ((caller, agent, CALLER), (agent, caller, AGENT)):
            for data, _ in src.messages_to_send():
                line = data.split(b"\r\n", 1)[0].decode()
                seen.append(line)
                moved = True
                if not any(d in line for d in drop):
                    dst.receive(data, src_peer, now)
        if not moved:
            break
    return seen


def events(ua: UserAgent) -> list[object]:
    out = []
    while (ev := ua.next_event()) is not None:
        out.append(ev)
    return out


def test_invite_answer_ack_bye_ladder():
    caller, agent = pair()
    caller.invite("sip:alice@127.0.0.1:5062", AGENT, 0.0)
    ladder = transfer(caller, agent, 0.0)
    assert ladder[0].startswith("INVITE sip:alice@")
    assert ladder[1:4] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK", "ACK sip:alice@127.0.0.1:5062 SIP/2.0"]
    up_caller, up_agent = events(caller), events(agent)
    assert isinstance(up_caller[0], CallEstablished) and isinstance(up_agent[0], CallEstablished)
    assert up_caller[0].media.remote_rtp == ("127.0.0.1", 40002)
    assert up_agent[0].media.remote_rtp == ("127.0.0.1", 40000)
    assert up_agent[0].media.codec == "PCMU" and up_agent[0].media.telephone_event_pt == 101
    caller.bye(1.0)
    assert transfer(caller, agent, 1.0) == ["BYE sip:alice@127.0.0.1:5062 SIP/2.0", "SIP/2.0 200 OK"]
    assert events(caller) == [CallEnded(by_peer=False)]
    assert events(agent) == [CallEnded(by_peer=True)]
    assert caller.phase is CallPhase.ENDED and agent.phase is CallPhase.ENDED


def test_lost_200_is_retransmitted_and_acked_once_it_arrives():
    caller, agent = pair()
    caller.invite("sip:alice@127.0.0.1:5062", AGENT, 0.0)
    transfer(caller, agent, 0.0, drop={"200 OK"})
    assert events(caller) == []
    deadline = agent.get_timer()
    assert deadline is not None and deadline <= 0.5  # RFC 3261 13.3.1.4: 2xx resent after T1
    agent.handle_timer(deadline)
    ladder = transfer(caller, agent, deadline)
    assert ladder[:2] == ["SIP/2.0 200 OK", "ACK sip:alice@127.0.0.1:5062 SIP/2.0"]
    assert isinstance(events(caller)[0], CallEstablished)
    # The ACK stopped the 2xx retransmissions: only the transaction's own end timer is left.
    later = agent.get_timer()
    agent.handle_timer(later if later is not None else deadline)
    assert not any(b"200 OK" in data for data, _ in agent.messages_to_send())


def test_busy_agent_refuses_a_second_call_and_caller_reports_it():
    caller, agent = pair()
    other = UserAgent(user="carol", host="127.0.0.1", sip_port=5063, rtp_port=40004)
    caller.invite("sip:alice@127.0.0.1:5062", AGENT, 0.0)
    transfer(caller, agent, 0.0)
    other.invite("sip:alice@127.0.0.1:5062", AGENT, 0.0)
    for data, _ in other.messages_to_send():
        agent.receive(data, Peer("udp", "127.0.0.1", 5063), 0.0)
    answers = [parse_message(d) for d, _ in agent.messages_to_send()]
    assert [a.status for a in answers] == [100, 486]
    for a in answers:
        other.receive(bytes(a), AGENT, 0.0)
    assert events(other) == [CallFailed(486, "Busy Here")]


def test_garbage_is_counted_not_raised():
    caller, agent = pair()
    agent.receive(b"\x00\x01 not sip", CALLER, 0.0)
    agent.receive(b"INVITE sip:x SIP/2.0\r\n\r\n", CALLER, 0.0)
    assert agent.dropped == 2 and agent.phase is CallPhase.IDLE
