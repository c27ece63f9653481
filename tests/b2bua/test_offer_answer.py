"""Ladder tests: late offers (initial and re-INVITE), forked 2xx, early media. Real SIP text, fake clock."""

from __future__ import annotations

from gateway.b2bua import CallAnswered, CallEnded, CallState, LawsDiffered, MessageRejected
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.sdp import parse_sdp, remote_audio
from tests.b2bua.ladder import CALLER, MEDIA_ADDRESS, PBX, Net, as_multipart, only, request, sdp, sip_t_body, statuses
from tests.b2bua.test_b2bua import agent_request, connect, start

AGENT_OFFER = sdp(50000, fmts="8 0 96", te_pt=96, host="192.0.2.20")


def late_start(net: Net) -> SipRequest:
    out = net.send(request("INVITE", body=b""))
    assert statuses(out, CALLER) == [100]
    (inv,) = only(out, PBX)
    assert isinstance(inv, SipRequest)
    return inv


def late_answered(net: Net) -> tuple[SipRequest, SipResponse]:
    inv = late_start(net)
    out = net.send(net.answer(inv, 200, body=AGENT_OFFER), PBX)
    (ok,) = only(out, CALLER)
    assert isinstance(ok, SipResponse) and ok.status == 200
    return inv, ok


def ended(net: Net) -> list[CallEnded]:
    return [e for e in net.events if isinstance(e, CallEnded)]


def test_late_offer_agent_offer_to_caller_and_caller_answer_to_agent():
    net = Net()
    inv = late_start(net)
    # RFC 3261 13.2.1: no offer in our INVITE either; the agent offers in its 2xx.
    assert inv.body == b"" and inv.headers.get("Content-Type") is None
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 200, body=AGENT_OFFER), PBX)
    assert only(out, PBX) == []  # the ACK waits for the caller's answer
    (ok,) = only(out, CALLER)
    offer = remote_audio(parse_sdp(ok.body))
    assert [c.name for c in offer.codecs] == ["PCMA", "PCMU"]  # the agent's order, only what we inspect
    assert offer.rtp == (MEDIA_ADDRESS, 30000) and offer.telephone_event.pt == 101
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert net.gw.call(call_id).state is CallState.ANSWERED and isinstance(net.events[-1], CallAnswered)
    assert net.media.opened[call_id].configured == []
    # The agent retransmits its 2xx before the caller answered: still nothing to ACK with.
    assert only(net.send(net.answer(inv, 200, body=AGENT_OFFER), PBX), PBX) == []

    out = net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag, body=sdp(40000, fmts="0 101")))
    (ack,) = only(out, PBX)
    assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.to_tag == "agent1"
    assert ack.headers.get("Content-Type") == "application/sdp"
    answer = remote_audio(parse_sdp(ack.body))
    assert [c.name for c in answer.codecs] == ["PCMU"]  # the caller's choice, no transcoding
    assert answer.rtp == (MEDIA_ADDRESS, 30002) and answer.telephone_event.pt == 96
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.codec == agent_leg.codec == "PCMU"
    assert caller_leg.remote_rtp == ("192.0.2.10", 40000) and agent_leg.remote_rtp == ("192.0.2.20", 50000)
    assert (caller_leg.telephone_event_pt, agent_leg.telephone_event_pt) == (101, 96)
    # Now a retransmitted 2xx gets the same ACK again (RFC 3261 13.2.2.4).
    again = only(net.send(net.answer(inv, 200, body=AGENT_OFFER), PBX), PBX)
    assert [(m.method, m.body) for m in again] == [("ACK", ack.body)]
    assert not [e for e in net.events if isinstance(e, MessageRejected)]


def test_late_offer_ack_without_answer_acks_agent_with_refusal_then_byes_both():
    net = Net()
    inv, ok = late_answered(net)
    out = net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    ack, bye = only(out, PBX)
    assert (ack.method, bye.method) == ("ACK", "BYE")  # the owed ACK first
    refused = parse_sdp(ack.body)
    assert refused.media[0].port == 0  # RFC 3264 6: the stream is refused, the ACK still answers
    assert statuses(out, CALLER) == ["BYE"]
    assert ended(net)[-1].reason == "no common codec"


def test_late_offer_without_inspectable_codec_is_refused():
    net = Net()
    inv = late_start(net)
    out = net.send(net.answer(inv, 200, body=sdp(50000, fmts="9 96", te_pt=96, host="192.0.2.20")), PBX)
    ack, bye = only(out, PBX)
    assert ack.method == "ACK" and parse_sdp(ack.body).media[0].port == 0 and bye.method == "BYE"
    assert statuses(out, CALLER) == [488]
    assert ended(net)[-1].reason == "no common codec"


def test_late_offer_caller_never_acks_agent_still_gets_ack_before_bye():
    net = Net()
    late_answered(net)
    out = net.advance(40.0)
    pbx = statuses(out, PBX)
    assert pbx[:2] == ["ACK", "BYE"] and "BYE" in statuses(out, CALLER)
    assert ended(net)[-1].reason == "no ACK"


def test_offerless_reinvite_from_caller_relays_offer_and_answer():
    net = Net()
    inv, ok = connect(net)
    call_id = net.events[0].call_id
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag))
    assert statuses(out, CALLER) == [100]
    (reinv,) = only(out, PBX)
    assert reinv.method == "INVITE" and reinv.body == b"" and reinv.to_tag == "agent1"
    out = net.send(net.answer(reinv, 200, body=sdp(50010, fmts="0 8 96", te_pt=96, host="192.0.2.21")), PBX)
    assert only(out, PBX) == []
    (ok2,) = only(out, CALLER)
    offer = remote_audio(parse_sdp(ok2.body))
    assert [c.name for c in offer.codecs] == ["PCMA", "PCMU"]  # the current codec first
    v1, v2 = (int(parse_sdp(m.body).value("o").split()[2]) for m in (ok, ok2))
    assert v2 > v1
    # Glare while the offer waits for its answer (RFC 3264 4): 491.
    out = net.send(agent_request(net, inv, "INVITE", 5, body=sdp(50020, host="192.0.2.20")), PBX)
    assert statuses(out, PBX) == [100, 491]
    out = net.send(request("ACK", cseq=2, branch="z9hG4bKack2", to_tag=ok.to_tag, body=sdp(40020, fmts="8 101")))
    (ack,) = only(out, PBX)
    assert ack.cseq == (reinv.cseq[0], "ACK")
    answer = remote_audio(parse_sdp(ack.body))
    assert [c.name for c in answer.codecs] == ["PCMA"] and answer.rtp == (MEDIA_ADDRESS, 30002)
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40020) and agent_leg.remote_rtp == ("192.0.2.21", 50010)
    assert caller_leg.codec == agent_leg.codec == "PCMA"
    # The agent's retransmitted 2xx is ACKed again; a new re-INVITE is accepted again.
    again = only(net.send(net.answer(reinv, 200, body=sdp(50010, fmts="0 8 96", te_pt=96, host="192.0.2.21")), PBX), PBX)
    assert [(m.method, m.body) for m in again] == [("ACK", ack.body)]
    out = net.send(request("INVITE", cseq=3, branch="z9hG4bKre3", to_tag=ok.to_tag, body=sdp(40030)))
    assert statuses(out, PBX) == ["INVITE"]


def test_offerless_reinvite_from_agent():
    net = Net()
    inv, ok = connect(net)
    call_id = net.events[0].call_id
    out = net.send(agent_request(net, inv, "INVITE", 1), PBX)
    (reinv,) = only(out, CALLER)
    assert reinv.body == b"" and reinv.to_tag == "caller1"
    out = net.send(net.answer(reinv, 200, tag="caller1", body=sdp(40050, fmts="8 0 101")), CALLER)
    (ok2,) = only(out, PBX)
    assert [c.name for c in remote_audio(parse_sdp(ok2.body)).codecs] == ["PCMA", "PCMU"]
    raw = agent_request(net, inv, "ACK", 1, body=sdp(50050, fmts="8 96", te_pt=96, host="192.0.2.20"))
    out = net.send(raw.replace(b"branch=z9hG4bKpbx1", b"branch=z9hG4bKpbxack"), PBX)
    (ack,) = only(out, CALLER)
    assert ack.method == "ACK" and remote_audio(parse_sdp(ack.body)).rtp == (MEDIA_ADDRESS, 30000)
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40050) and agent_leg.remote_rtp == ("192.0.2.20", 50050)


def test_offerless_reinvite_answer_without_codec_is_refused_and_call_ended():
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag))
    (reinv,) = only(out, PBX)
    out = net.send(net.answer(reinv, 200, body=sdp(50010, fmts="9 96", te_pt=96, host="192.0.2.21")), PBX)
    ack, bye = only(out, PBX)
    assert ack.method == "ACK" and ack.cseq == (reinv.cseq[0], "ACK") and parse_sdp(ack.body).media[0].port == 0
    assert bye.method == "BYE"
    assert statuses(out, CALLER) == [488, "BYE"]
    assert ended(net)[-1].reason == "no common codec"


def test_forked_2xx_is_acked_and_byed_and_the_call_keeps_the_first():
    net = Net()
    inv = start(net)
    call_id = net.events[0].call_id
    net.send(net.answer(inv, 180, tag="forkA"), PBX)
    out = net.send(net.answer(inv, 200, tag="forkA", body=sdp(50000, host="192.0.2.20")), PBX)
    assert statuses(out, PBX) == ["ACK"] and statuses(out, CALLER) == [200]
    configured = len(net.media.opened[call_id].configured)
    second = net.answer(inv, 200, tag="forkB", body=sdp(50100, host="192.0.2.30"))
    out = net.send(second, PBX)
    ack, bye = only(out, PBX)  # RFC 3261 13.2.2.4: ACK it, then BYE it
    assert (ack.method, bye.method) == ("ACK", "BYE") and ack.to_tag == bye.to_tag == "forkB"
    assert ack.cseq == (1, "ACK") and bye.call_id == inv.call_id
    assert only(out, CALLER) == [] and len(net.media.opened[call_id].configured) == configured
    # Its retransmission is ACKed again, not BYEd twice; the first fork's still gets its own ACK.
    assert statuses(net.send(second, PBX), PBX) == ["ACK"]
    net.send(net.answer(bye, 200, tag="forkB"), PBX)
    again = only(net.send(net.answer(inv, 200, tag="forkA", body=sdp(50000, host="192.0.2.20")), PBX), PBX)
    assert [(m.method, m.to_tag) for m in again] == [("ACK", "forkA")]
    assert net.gw.call(call_id).state is CallState.ANSWERED
    assert not ended(net)


def test_early_media_183_configures_and_200_with_new_sdp_updates():
    net = Net()
    inv = start(net)
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 183, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    (progress,) = only(out, CALLER)
    assert progress.status == 183 and remote_audio(parse_sdp(progress.body)).rtp == (MEDIA_ADDRESS, 30000)
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert agent_leg.remote_rtp == ("192.0.2.20", 50000) and caller_leg.codec == "PCMA"
    out = net.send(net.answer(inv, 200, body=sdp(50010, fmts="8 97", te_pt=97, host="192.0.2.21")), PBX)
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and ok.body == progress.body  # RFC 3261 13.2.1: one answer to the caller
    configured = net.media.opened[call_id].configured
    assert len(configured) == 2
    caller_leg, agent_leg = configured[-1]
    assert agent_leg.remote_rtp == ("192.0.2.21", 50010) and agent_leg.telephone_event_pt == 97
    assert caller_leg.remote_rtp == ("192.0.2.10", 40000)


def test_early_media_then_200_without_sdp_keeps_the_183_answer():
    net = Net()
    inv = start(net)
    call_id = net.events[0].call_id
    net.send(net.answer(inv, 183, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    out = net.send(net.answer(inv, 200), PBX)
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and remote_audio(parse_sdp(ok.body)).rtp == (MEDIA_ADDRESS, 30000)
    assert len(net.media.opened[call_id].configured) == 1 and not ended(net)


def test_early_media_law_change_in_200_keeps_the_callers_answer_and_converts():
    net = Net()
    inv = start(net)
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 183, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    (progress,) = only(out, CALLER)
    out = net.send(net.answer(inv, 200, body=sdp(50000, fmts="0 96", te_pt=96, host="192.0.2.20")), PBX)
    assert statuses(out, PBX) == ["ACK"]
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and ok.body == progress.body  # RFC 3261 13.2.1: one answer to the caller
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert (caller_leg.codec, agent_leg.codec) == ("PCMA", "PCMU")  # the relay converts
    assert LawsDiffered(call_id, "PCMA", "PCMU") in net.events and not ended(net)


def test_early_media_then_uninspectable_200_fails_closed():
    net = Net()
    inv = start(net)
    net.send(net.answer(inv, 183, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    out = net.send(net.answer(inv, 200, body=sdp(50000, fmts="9 96", te_pt=96, host="192.0.2.20")), PBX)
    assert statuses(out, PBX) == ["ACK", "BYE"] and statuses(out, CALLER) == [488]
    assert ended(net)[-1].reason == "no common codec"


def test_a_late_offer_answered_in_a_multipart_ack_is_taken_from_its_sdp_part():
    """RFC 5621: a SIP-T caller answers the agent's late offer in a multipart ACK (was refused as no SDP)."""
    net = Net()
    inv, ok = late_answered(net)
    raw = as_multipart(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag, body=sip_t_body(sdp(40000, fmts="0 101"))))
    (ack,) = only(net.send(raw), PBX)
    assert ack.method == "ACK" and [c.name for c in remote_audio(parse_sdp(ack.body)).codecs] == ["PCMU"]
    assert not ended(net) and not [e for e in net.events if isinstance(e, MessageRejected)]


def test_forked_early_media_names_each_answers_fork_for_the_relay():
    """Two forks answer 183 with SDP, then the second answers 200 with the SDP of its 183: the relay
    is told which dialog each answer came from and whether it was early, so it can restart latching
    (tests/media/test_relay.py holds the relay to it)."""
    net = Net()
    inv = start(net)
    call_id = net.events[0].call_id
    net.send(net.answer(inv, 183, tag="forka", body=sdp(31000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    net.send(net.answer(inv, 183, tag="forkb", body=sdp(31002, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    net.send(net.answer(inv, 200, tag="forkb", body=sdp(31002, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    agents = [a for _, a in net.media.opened[call_id].configured]
    assert [(a.fork_tag, a.early, a.remote_rtp[1]) for a in agents] == [
        ("forka", True, 31000), ("forkb", True, 31002), ("forkb", False, 31002)]
