"""Ladder tests: the two legs end up on different G.711 laws (lenient answers, RFC 3264 6.1).

Each leg keeps its own law and the relay converts; anything that is not G.711 is still
refused (fail closed: audio the gateway cannot inspect).
"""

from __future__ import annotations

import pytest

from gateway.b2bua import CallEnded, CallState, LawsDiffered, MessageRejected, UnofferedCodecAccepted
from gateway.sip.message import SipResponse
from gateway.sip.sdp import parse_sdp, remote_audio
from tests.b2bua.ladder import CALLER, MEDIA_ADDRESS, PBX, Net, only, request, sdp, statuses
from tests.b2bua.test_b2bua import agent_request, connect, start
from tests.b2bua.test_offer_answer import late_start

# What `sipp -sn uac_pcap` offers and what `sipp -sn uas` answers to anything.
PCMA_ONLY = sdp(40000, fmts="8 101")


def agent_sdp(fmts: str, port: int = 50000) -> bytes:
    return sdp(port, fmts=fmts, te_pt=96, host="192.0.2.20")


def pcmu_only_answer(port: int = 50000) -> bytes:
    """An answer with no telephone-event and no rtpmap, like SIPp's built-in uas."""
    return (f"v=0\r\no=uas 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def of(net: Net, kind: type) -> list:
    return [e for e in net.events if isinstance(e, kind)]


def test_pcma_offer_answered_pcmu_by_the_agent_keeps_the_call_with_each_leg_on_its_law():
    net = Net()
    inv = start(net, PCMA_ONLY)
    call_id = net.events[0].call_id
    assert [c.name for c in remote_audio(parse_sdp(inv.body)).codecs] == ["PCMA"]  # we offer what the caller did
    out = net.send(net.answer(inv, 200, body=pcmu_only_answer()), PBX)
    # The agent gets its ACK and no BYE; the caller gets 200, not 488.
    assert statuses(out, PBX) == ["ACK"]
    (ok,) = only(out, CALLER)
    assert isinstance(ok, SipResponse) and ok.status == 200
    answer = remote_audio(parse_sdp(ok.body))
    assert [c.name for c in answer.codecs] == ["PCMA"]  # the caller's own law (RFC 3264 6.1)
    assert answer.telephone_event is not None and answer.telephone_event.pt == 101
    assert answer.rtp == (MEDIA_ADDRESS, 30000)
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert (caller_leg.codec, caller_leg.audio_pt) == ("PCMA", 8)
    assert (agent_leg.codec, agent_leg.audio_pt, agent_leg.telephone_event_pt) == ("PCMU", 0, None)
    assert of(net, UnofferedCodecAccepted) == [UnofferedCodecAccepted(call_id, "agent", "PCMU")]
    assert of(net, LawsDiffered) == [LawsDiffered(call_id, "PCMA", "PCMU")]
    assert not of(net, MessageRejected) and net.gw.call(call_id).state is CallState.ANSWERED


def test_an_offered_law_in_the_answer_wins_over_an_unoffered_one_listed_first():
    net = Net()
    inv = start(net, PCMA_ONLY)
    call_id = net.events[0].call_id
    net.send(net.answer(inv, 200, body=agent_sdp("0 8 96")), PBX)
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.codec == agent_leg.codec == "PCMA"  # one law: bit-exact pass-through
    assert not of(net, UnofferedCodecAccepted) and not of(net, LawsDiffered)


def test_caller_offering_both_laws_is_answered_in_the_agents_law():
    net = Net()
    inv = start(net, sdp(40000, fmts="8 0 101"))
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 200, body=agent_sdp("0 96")), PBX)
    (ok,) = only(out, CALLER)
    assert [c.name for c in remote_audio(parse_sdp(ok.body)).codecs] == ["PCMU"]  # no conversion needed
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.codec == agent_leg.codec == "PCMU"
    assert not of(net, LawsDiffered)


@pytest.mark.parametrize("fmts", ["9 96", "18 96", "96"])
def test_an_answer_without_g711_is_still_refused(fmts: str):
    net = Net()
    inv = start(net, PCMA_ONLY)
    out = net.send(net.answer(inv, 200, body=agent_sdp(fmts)), PBX)
    assert statuses(out, PBX) == ["ACK", "BYE"] and statuses(out, CALLER) == [488]
    assert MessageRejected("SDP answer has no acceptable codec", 488) in net.events
    assert [e.reason for e in of(net, CallEnded)] == ["no common codec"]


def test_an_unoffered_law_at_another_clock_rate_is_refused():
    net = Net()
    inv = start(net, PCMA_ONLY)
    body = pcmu_only_answer().replace(b"RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", b"RTP/AVP 97\r\na=rtpmap:97 PCMU/16000")
    out = net.send(net.answer(inv, 200, body=body), PBX)
    assert statuses(out, CALLER) == [488]


def test_lenient_answer_in_183_and_200_is_reported_once():
    net = Net()
    inv = start(net, PCMA_ONLY)
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 183, body=pcmu_only_answer()), PBX)
    (progress,) = only(out, CALLER)
    assert progress.status == 183 and [c.name for c in remote_audio(parse_sdp(progress.body)).codecs] == ["PCMA"]
    out = net.send(net.answer(inv, 200, body=pcmu_only_answer()), PBX)
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and ok.body == progress.body
    assert len(of(net, UnofferedCodecAccepted)) == 1 and len(of(net, LawsDiffered)) == 1
    assert net.media.opened[call_id].configured[-1][1].codec == "PCMU"


def test_late_offer_pcmu_agent_and_a_caller_answering_pcma_anyway():
    net = Net()
    inv = late_start(net)
    call_id = net.events[0].call_id
    out = net.send(net.answer(inv, 200, body=agent_sdp("0 96")), PBX)
    (ok,) = only(out, CALLER)
    assert [c.name for c in remote_audio(parse_sdp(ok.body)).codecs] == ["PCMU"]
    # The caller answers the law it was not offered; the agent is answered in its own offer's law.
    out = net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag, body=sdp(40000, fmts="8 101")))
    (ack,) = only(out, PBX)
    answer = remote_audio(parse_sdp(ack.body))
    assert [c.name for c in answer.codecs] == ["PCMU"] and answer.telephone_event.pt == 96
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert (caller_leg.codec, agent_leg.codec) == ("PCMA", "PCMU")
    assert of(net, UnofferedCodecAccepted) == [UnofferedCodecAccepted(call_id, "caller", "PCMA")]
    assert of(net, LawsDiffered) == [LawsDiffered(call_id, "PCMA", "PCMU")]
    assert not of(net, CallEnded)


def test_caller_reinvite_answered_in_the_other_law_by_the_agent():
    net = Net()
    inv, ok = connect(net, agent_sdp("8 96"))
    call_id = net.events[0].call_id
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag, body=sdp(40010, fmts="8 101")))
    (reinv,) = only(out, PBX)
    out = net.send(net.answer(reinv, 200, body=pcmu_only_answer(50010)), PBX)
    (ok2,) = only(out, CALLER)
    assert ok2.status == 200 and [c.name for c in remote_audio(parse_sdp(ok2.body)).codecs] == ["PCMA"]
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert (caller_leg.codec, agent_leg.codec) == ("PCMA", "PCMU")
    assert caller_leg.remote_rtp == ("192.0.2.10", 40010) and agent_leg.remote_rtp == ("192.0.2.20", 50010)
    assert of(net, LawsDiffered) == [LawsDiffered(call_id, "PCMA", "PCMU")]
    # The agent re-INVITEs back to PCMA: one law again, nothing more to report.
    out = net.send(agent_request(net, inv, "INVITE", 1, body=agent_sdp("8 96", 50020)), PBX)
    (reinv2,) = only(out, CALLER)
    assert [c.name for c in remote_audio(parse_sdp(reinv2.body)).codecs] == ["PCMA"]
    out = net.send(net.answer(reinv2, 200, tag="caller1", body=sdp(40020, fmts="8 101")), CALLER)
    assert statuses(out, PBX) == [200]
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.codec == agent_leg.codec == "PCMA"
    assert len(of(net, LawsDiffered)) == 1 and not of(net, CallEnded)


def mixed_call(net: Net):
    """A call answered like SIPp's built-in pair: caller on PCMA, agent on PCMU."""
    inv = start(net, PCMA_ONLY)
    out = net.send(net.answer(inv, 200, body=pcmu_only_answer()), PBX)
    (ok,) = only(out, CALLER)
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    return inv, ok


def test_agent_refresh_on_a_converting_call_offers_the_caller_its_current_law_too():
    net = Net()
    inv, ok = mixed_call(net)
    call_id = net.events[0].call_id
    out = net.send(agent_request(net, inv, "INVITE", 1, body=agent_sdp("0 96", 50030)), PBX)
    (reinv,) = only(out, CALLER)
    # The agent's law first (one law would pass bit-exact), then the caller's current one.
    assert [c.name for c in remote_audio(parse_sdp(reinv.body)).codecs] == ["PCMU", "PCMA"]
    out = net.send(net.answer(reinv, 200, tag="caller1", body=sdp(40000, fmts="8 101")), CALLER)
    (ok2,) = only(out, PBX)
    assert ok2.status == 200 and [c.name for c in remote_audio(parse_sdp(ok2.body)).codecs] == ["PCMU"]
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert (caller_leg.codec, agent_leg.codec) == ("PCMA", "PCMU") and agent_leg.remote_rtp[1] == 50030
    assert not of(net, CallEnded)


def test_reoffer_on_a_one_law_call_adds_no_other_law():
    net = Net()
    inv, ok = connect(net, agent_sdp("8 96"))
    out = net.send(agent_request(net, inv, "INVITE", 1, body=agent_sdp("0 96", 50030)), PBX)
    (reinv,) = only(out, CALLER)
    assert [c.name for c in remote_audio(parse_sdp(reinv.body)).codecs] == ["PCMU"]
