"""Ladder tests: offers with audio and other m= lines, in every place an offer can travel, and media
on IPv6 (the ladder's relay address is IPv4). Real SIP text, fake clock."""

from __future__ import annotations

from gateway.b2bua import CallEnded, CallState, MessageRejected
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.sdp import parse_sdp
from tests.b2bua.ladder import CALLER, PBX, Net, only, request, sdp, statuses
from tests.b2bua.test_b2bua import agent_request, connect, start

VIDEO = "m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
APP = "m=application {port} UDP/DTLS/SCTP webrtc-datachannel\r\n"


def multi(audio_port: int, *, before: tuple[str, ...] = (), after: tuple[str, ...] = (),
          host: str = "192.0.2.10", fmts: str = "8 0 101", te_pt: int = 101, other_port: int = 0) -> bytes:
    """`sdp()`'s audio line with other m= lines before and after it (ports `other_port`)."""
    head, _, audio = sdp(audio_port, fmts=fmts, te_pt=te_pt, host=host).decode().partition("m=audio")
    lines = "".join(x.format(port=other_port) for x in before) + "m=audio" + audio
    return (head + lines + "".join(x.format(port=other_port) for x in after)).encode()


def layout(body: bytes) -> list[tuple[str, int]]:
    return [(m.media, m.port) for m in parse_sdp(body).media]


def video_first_call(net: Net) -> tuple[SipRequest, SipResponse]:
    """Caller offers [video, audio]; the agent gets audio alone; the caller's 200 has both lines."""
    inv = start(net, multi(40000, before=(VIDEO,), other_port=40002))
    out = net.send(net.answer(inv, 200, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    return inv, ok


def test_video_first_offer_answered_line_for_line_agent_offered_audio_alone():
    net = Net()
    inv, ok = video_first_call(net)
    # RFC 3264 5.1: a new offer to the agent carries only what the gateway relays.
    assert layout(inv.body) == [("audio", 30002)]
    # RFC 3264 6: same lines, same order; video refused with port 0; audio on the caller-leg port.
    assert layout(ok.body) == [("video", 0), ("audio", 30000)]
    assert parse_sdp(ok.body).media[0].formats == ["96"]
    caller_leg, agent_leg = net.media.opened[net.events[0].call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40000) and agent_leg.remote_rtp == ("192.0.2.20", 50000)


def test_audio_first_with_video_and_data_answered_line_for_line():
    net = Net()
    inv = start(net, multi(40000, after=(VIDEO, APP), other_port=40002))
    assert layout(inv.body) == [("audio", 30002)]
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    assert layout(ok.body) == [("audio", 30000), ("video", 0), ("application", 0)]


def test_caller_reinvite_with_video_is_answered_line_for_line():
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag,
                           body=multi(40010, before=(VIDEO,), other_port=40012)))
    (reinv,) = only(out, PBX)
    assert layout(reinv.body) == [("audio", 30002)]  # the agent's session has one line
    out = net.send(net.answer(reinv, 200, body=sdp(50010, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    assert [m.status for m in only(out, CALLER)] == [200]
    assert layout(only(out, CALLER)[0].body) == [("video", 0), ("audio", 30000)]
    caller_leg, _ = net.media.opened[net.events[0].call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40010)


def test_agent_reinvite_with_video_keeps_the_callers_layout_and_then_its_own():
    net = Net()
    inv, ok = video_first_call(net)
    call_id = net.events[0].call_id
    # The agent offers [audio, video]: our offer to the caller keeps the caller's session
    # [video, audio] (RFC 3264 8: no line removed or moved), so its audio is not mapped onto video.
    out = net.send(agent_request(net, inv, "INVITE", 1, body=multi(50020, after=(VIDEO,), host="192.0.2.20",
                                                                  fmts="8 96", te_pt=96, other_port=50022)), PBX)
    (reinv,) = only(out, CALLER)
    assert layout(reinv.body) == [("video", 0), ("audio", 30000)]
    out = net.send(net.answer(reinv, 200, tag="caller1", body=multi(40020, before=(VIDEO,))), CALLER)
    (ok2,) = only(out, PBX)
    assert ok2.status == 200 and layout(ok2.body) == [("audio", 30002), ("video", 0)]
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40020) and agent_leg.remote_rtp == ("192.0.2.20", 50020)
    # The agent's session now has two lines: the next offer to it keeps both, video still off.
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre2", to_tag=ok.to_tag,
                           body=multi(40030, before=(VIDEO,), other_port=40032)))
    (reinv2,) = only(out, PBX)
    assert layout(reinv2.body) == [("audio", 30002), ("video", 0)]
    answer = multi(50030, after=(VIDEO,), host="192.0.2.20", fmts="8 96", te_pt=96)
    out = net.send(net.answer(reinv2, 200, body=answer), PBX)
    (ok3,) = only(out, CALLER)
    assert layout(ok3.body) == [("video", 0), ("audio", 30000)]
    _, agent_leg = net.media.opened[call_id].configured[-1]
    assert agent_leg.remote_rtp == ("192.0.2.20", 50030)
    assert not [e for e in net.events if isinstance(e, MessageRejected)]


def test_late_offer_with_video_first_is_answered_line_for_line_in_the_ack():
    net = Net()
    out = net.send(request("INVITE", body=b""))
    (inv,) = only(out, PBX)
    agent_offer = multi(50000, before=(VIDEO,), host="192.0.2.20", fmts="8 0 96", te_pt=96, other_port=50002)
    out = net.send(net.answer(inv, 200, body=agent_offer), PBX)
    (ok,) = only(out, CALLER)
    assert layout(ok.body) == [("audio", 30000)]  # a new session with the caller: audio alone
    out = net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag, body=sdp(40000, fmts="8 101")))
    (ack,) = only(out, PBX)
    assert layout(ack.body) == [("video", 0), ("audio", 30002)]
    caller_leg, agent_leg = net.media.opened[net.events[0].call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40000) and agent_leg.remote_rtp == ("192.0.2.20", 50000)


def test_offerless_caller_reinvite_offer_in_200_keeps_the_callers_layout():
    net = Net()
    inv, ok = video_first_call(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag))
    (reinv,) = only(out, PBX)
    assert reinv.body == b""
    out = net.send(net.answer(reinv, 200, body=multi(50010, after=(APP,), host="192.0.2.21", fmts="8 96",
                                                     te_pt=96, other_port=50012)), PBX)
    (ok2,) = only(out, CALLER)
    assert layout(ok2.body) == [("video", 0), ("audio", 30000)]
    out = net.send(request("ACK", cseq=2, branch="z9hG4bKack2", to_tag=ok.to_tag,
                           body=multi(40020, before=(VIDEO,))))
    (ack,) = only(out, PBX)
    assert layout(ack.body) == [("audio", 30002), ("application", 0)]
    caller_leg, agent_leg = net.media.opened[net.events[0].call_id].configured[-1]
    assert caller_leg.remote_rtp == ("192.0.2.10", 40020) and agent_leg.remote_rtp == ("192.0.2.21", 50010)


# ---------------------------------------------------------------- IPv6 media on the IPv4 relay

def ipv6(body: bytes) -> bytes:
    return body.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP6 2001:db8::10").replace(
        b"c=IN IP4 192.0.2.20", b"c=IN IP6 2001:db8::20")


def warning_301(resp: SipResponse) -> bool:
    return (resp.headers.get("Warning") or "").startswith('301 ') and "Incompatible network address formats" in (
        resp.headers.get("Warning") or "")


def test_ipv6_offer_is_refused_488_with_warning_301_and_never_reaches_the_agent():
    net = Net()
    out = net.send(request("INVITE", body=ipv6(sdp(40000))))
    assert only(out, PBX) == []
    assert statuses(out, CALLER) == [100, 488]
    assert warning_301(only(out, CALLER)[1])
    assert [e.reason for e in net.events] == ["SDP address family is incompatible"]
    assert net.media.opened == {} and net.gw.calls == []


def test_ipv6_reinvite_offer_is_refused_and_the_call_keeps_its_media():
    net = Net()
    inv, ok = connect(net)
    configured = list(net.media.opened[net.events[0].call_id].configured)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag, body=ipv6(sdp(40010))))
    assert only(out, PBX) == [] and statuses(out, CALLER) == [100, 488]
    assert warning_301(only(out, CALLER)[1])
    call = net.gw.calls[0]
    assert call.state is CallState.ANSWERED and net.media.opened[call.call_id].configured == configured


def test_ipv6_answer_from_the_agent_byes_it_and_refuses_the_caller():
    net = Net()
    inv = start(net)
    out = net.send(net.answer(inv, 200, body=ipv6(sdp(50000, host="192.0.2.20"))), PBX)
    assert statuses(out, PBX) == ["ACK", "BYE"]
    assert statuses(out, CALLER) == [488] and warning_301(only(out, CALLER)[0])
    assert [e.reason for e in net.events if isinstance(e, CallEnded)] == ["incompatible address"]


def test_ipv6_late_offer_from_the_agent_is_acked_refused_and_byed():
    net = Net()
    (inv,) = only(net.send(request("INVITE", body=b"")), PBX)
    out = net.send(net.answer(inv, 200, body=ipv6(sdp(50000, host="192.0.2.20"))), PBX)
    ack, bye = only(out, PBX)
    assert (ack.method, bye.method) == ("ACK", "BYE") and layout(ack.body) == [("audio", 0)]
    assert statuses(out, CALLER) == [488] and warning_301(only(out, CALLER)[0])


def test_ipv6_answer_in_the_ack_ends_the_call():
    net = Net()
    (inv,) = only(net.send(request("INVITE", body=b"")), PBX)
    (ok,) = only(net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX), CALLER)
    out = net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag, body=ipv6(sdp(40000))))
    ack, bye = only(out, PBX)
    assert (ack.method, bye.method) == ("ACK", "BYE") and layout(ack.body) == [("audio", 0)]
    assert statuses(out, CALLER) == ["BYE"]
    assert [e.reason for e in net.events if isinstance(e, CallEnded)] == ["incompatible address"]


def test_ipv6_answer_to_a_reinvite_is_refused_to_the_offerer():
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre", to_tag=ok.to_tag, body=sdp(40010)))
    (reinv,) = only(out, PBX)
    out = net.send(net.answer(reinv, 200, body=ipv6(sdp(50010, host="192.0.2.20"))), PBX)
    assert statuses(out, PBX) == ["ACK"]
    assert statuses(out, CALLER) == [488] and warning_301(only(out, CALLER)[0])
