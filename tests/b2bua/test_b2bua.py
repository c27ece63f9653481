"""Ladder-diagram tests: fake caller and PBX exchange real SIP text with the B2BUA core, fake clock."""

from __future__ import annotations

import base64

import pytest

from gateway.b2bua import (
    B2buaConfig,
    CallAnswered,
    CallEnded,
    CallStarted,
    CallState,
    InfoDtmfReceived,
    MessageRejected,
)
from gateway.media.leg import Direction
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.sdp import parse_sdp, remote_audio
from gateway.sip.transaction import Peer
from tests.b2bua.ladder import (CALLER, MEDIA_ADDRESS, PBX, FakeMediaController, Net, as_multipart, only, request,
                                sdp, sip_t_body, statuses)

KEY = base64.b64encode(bytes(range(30))).decode()


def start(net: Net, body: bytes | None = None, **kw) -> SipRequest:
    out = net.send(request("INVITE", body=sdp(40000, fmts="8 0 101") if body is None else body, **kw))
    assert statuses(out, CALLER) == [100]
    (agent_invite,) = only(out, PBX)
    assert isinstance(agent_invite, SipRequest)
    return agent_invite


def connect(net: Net, agent_sdp: bytes | None = None) -> tuple[SipRequest, SipResponse]:
    inv = start(net)
    out = net.send(net.answer(inv, 200, body=agent_sdp or sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    assert isinstance(ok, SipResponse) and ok.status == 200
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    return inv, ok


def agent_request(net: Net, inv: SipRequest, method: str, cseq: int, body: bytes = b"", extra: str = "") -> bytes:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:{MEDIA_ADDRESS}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP pbx.example.com:5080;branch=z9hG4bKpbx{cseq}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1234@pbx.example.com>;tag=agent1\r\n"
        f"To: {inv.headers.get('From')}\r\n"
        f"Call-ID: {inv.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:1234@pbx.example.com:5080>\r\n"
        f"{ctype}{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_basic_call_pt_remap_and_caller_bye():
    net = Net(B2buaConfig(next_hop="sip:pbx.example.com:5080", agent_telephone_event_pt=96))
    inv = start(net)
    assert inv.uri == "sip:1234@pbx.example.com:5080"  # Request-URI user kept
    offer = remote_audio(parse_sdp(inv.body))
    assert [c.name for c in offer.codecs] == ["PCMA", "PCMU"]  # caller's order, PCMU/PCMA only
    assert offer.telephone_event is not None and offer.telephone_event.pt == 96
    assert offer.rtp == (MEDIA_ADDRESS, 30002)  # anchored on the agent-leg port
    started = net.events[0]
    assert isinstance(started, CallStarted) and (started.caller, started.agent) == ("alice", "1234")
    call = net.gw.call(started.call_id)
    assert call is not None and call.state is CallState.TRYING

    out = net.send(net.answer(inv, 180), PBX)
    (ringing,) = only(out, CALLER)
    assert ringing.status == 180 and ringing.to_tag
    out = net.send(net.answer(inv, 200, body=sdp(50000, fmts="8 96", te_pt=96, host="192.0.2.20")), PBX)
    (ack,) = only(out, PBX)
    assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.to_tag == "agent1"
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and ok.to_tag == ringing.to_tag
    answer = remote_audio(parse_sdp(ok.body))
    assert answer.rtp == (MEDIA_ADDRESS, 30000)
    assert [c.name for c in answer.codecs] == ["PCMA"]
    assert answer.telephone_event is not None and answer.telephone_event.pt == 101
    caller_leg, agent_leg = net.media.opened[started.call_id].configured[-1]
    assert (caller_leg.telephone_event_pt, agent_leg.telephone_event_pt) == (101, 96)
    assert caller_leg.remote_rtp == ("192.0.2.10", 40000) and agent_leg.remote_rtp == ("192.0.2.20", 50000)
    assert caller_leg.codec == agent_leg.codec == "PCMA"
    assert isinstance(net.events[-1], CallAnswered) and call.state is CallState.ANSWERED

    # The caller ACKs: no 2xx retransmission afterwards.
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    assert only(net.advance(2.0), CALLER) == []

    out = net.send(request("BYE", cseq=2, branch="z9hG4bKbye", to_tag=ok.to_tag))
    assert statuses(out, CALLER) == [200]
    (bye,) = only(out, PBX)
    assert bye.method == "BYE" and bye.call_id == inv.call_id and bye.cseq == (2, "BYE")
    assert net.events[-1] == CallEnded(started.call_id, "caller hangup", net.now)
    assert net.media.opened[started.call_id].closed and net.gw.calls == []
    net.send(net.answer(bye, 200), PBX)
    assert not [e for e in net.events if isinstance(e, MessageRejected)]


def test_unacked_2xx_is_retransmitted_then_call_ended():
    net = Net()
    inv = start(net)
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    assert statuses(out, CALLER) == [200]
    out = net.advance(40.0)
    assert statuses(out, CALLER)[:3] == [200, 200, 200]
    assert "BYE" in statuses(out, PBX)
    assert isinstance(net.events[-1], CallEnded) and net.events[-1].reason == "no ACK"


def test_busy():
    net = Net()
    inv = start(net)
    out = net.send(net.answer(inv, 486), PBX)
    assert statuses(out, PBX) == ["ACK"]
    assert statuses(out, CALLER) == [486]
    assert net.events[-1].reason == "rejected 486"


def test_cancel_before_answer():
    net = Net()
    inv = start(net)
    net.send(net.answer(inv, 180), PBX)
    out = net.send(request("CANCEL", branch="z9hG4bKc1"))
    assert sorted(statuses(out, CALLER)) == [200, 487]
    (cancel,) = only(out, PBX)
    assert cancel.method == "CANCEL" and cancel.top_via.branch == inv.top_via.branch
    assert net.events[-1].reason == "cancelled"
    out = net.send(net.answer(inv, 487), PBX)
    assert statuses(out, PBX) == ["ACK"]
    # A late 200 from the agent after the CANCEL: ACK and BYE it.
    late = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
    assert not only(late, CALLER)


def test_cancel_unknown_is_481():
    net = Net()
    out = net.send(request("CANCEL", branch="z9hG4bKnone"))
    assert statuses(out, CALLER) == [481]


def test_agent_hangs_up():
    net = Net()
    inv, ok = connect(net)
    out = net.send(agent_request(net, inv, "BYE", 1), PBX)
    assert statuses(out, PBX) == [200]
    (bye,) = only(out, CALLER)
    assert bye.method == "BYE" and bye.to_tag == "caller1" and bye.from_tag == ok.to_tag
    assert bye.uri == "sip:alice@192.0.2.10:5060"
    assert net.events[-1].reason == "agent hangup"


def test_reinvite_hold_and_resume_from_caller():
    net = Net()
    inv, ok = connect(net)
    call_id = net.events[0].call_id
    hold = request("INVITE", cseq=2, branch="z9hG4bKre1", to_tag=ok.to_tag, body=sdp(40000, direction="sendonly"))
    out = net.send(hold)
    (reinv,) = only(out, PBX)
    assert reinv.method == "INVITE" and reinv.to_tag == "agent1"
    assert remote_audio(parse_sdp(reinv.body)).direction is Direction.SENDONLY
    out = net.send(net.answer(reinv, 200, body=sdp(50000, direction="recvonly", host="192.0.2.20")), PBX)
    assert statuses(out, PBX) == ["ACK"]
    (ok2,) = only(out, CALLER)
    assert ok2.status == 200 and remote_audio(parse_sdp(ok2.body)).direction is Direction.RECVONLY
    caller_leg, agent_leg = net.media.opened[call_id].configured[-1]
    assert caller_leg.direction is Direction.SENDONLY and agent_leg.direction is Direction.RECVONLY
    v1 = parse_sdp(ok.body).value("o").split()[2]
    v2 = parse_sdp(ok2.body).value("o").split()[2]
    assert int(v2) > int(v1)
    net.send(request("ACK", cseq=2, branch="z9hG4bKack2", to_tag=ok.to_tag))
    # Resume on a new port.
    out = net.send(request("INVITE", cseq=3, branch="z9hG4bKre2", to_tag=ok.to_tag, body=sdp(40010)))
    (reinv2,) = only(out, PBX)
    out = net.send(net.answer(reinv2, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok3,) = only(out, CALLER)
    caller_leg, _ = net.media.opened[call_id].configured[-1]
    assert caller_leg.direction is Direction.SENDRECV and caller_leg.remote_rtp == ("192.0.2.10", 40010)
    assert ok3.status == 200


def test_reinvite_from_agent_with_codec_change_and_glare():
    net = Net()
    inv, ok = connect(net, sdp(50000, fmts="0 101", host="192.0.2.20"))
    out = net.send(agent_request(net, inv, "INVITE", 1, body=sdp(50020, fmts="8 0 101", host="192.0.2.20")), PBX)
    (reinv,) = only(out, CALLER)
    offered = remote_audio(parse_sdp(reinv.body))
    assert offered.codecs[0].name == "PCMU"  # the current codec stays first: no transcoding
    # Glare: the caller re-INVITEs while ours is pending.
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKgl", to_tag=ok.to_tag, body=sdp(40000)))
    assert statuses(out, CALLER) == [100, 491]
    out = net.send(net.answer(reinv, 200, tag="caller1", body=sdp(40000, fmts="0 101")), CALLER)
    (ok2,) = only(out, PBX)
    assert ok2.status == 200 and remote_audio(parse_sdp(ok2.body)).rtp == (MEDIA_ADDRESS, 30002)


def test_udp_retransmissions():
    net = Net()
    raw = request("INVITE", body=sdp(40000))
    net.send(raw)
    out = net.send(raw)  # caller retransmits: 100 again, no second agent INVITE
    assert statuses(out, CALLER) == [100] and only(out, PBX) == []
    out = net.advance(0.5)  # timer A retransmits to the agent
    assert statuses(out, PBX) == ["INVITE"]
    assert len(net.gw.calls) == 1


def test_agent_timeout_gives_408():
    net = Net()
    start(net)
    out = net.advance(40.0)
    assert statuses(out, CALLER)[-1] == 408
    assert net.events[-1].reason == "agent timeout"


def test_ring_timeout_cancels_agent():
    net = Net(B2buaConfig(next_hop="sip:pbx.example.com:5080", ring_timeout_s=60.0))
    inv = start(net)
    net.send(net.answer(inv, 180), PBX)
    out = net.advance(61.0)
    assert 408 in statuses(out, CALLER) and "CANCEL" in statuses(out, PBX)


def test_provisional_responses_restart_the_ring_timer():
    """An ACD that keeps the caller on 183 early media, re-sent every 30 s, is not cut off (RFC 3261
    16.6 Timer C); silence after the last one still is."""
    net = Net(B2buaConfig(next_hop="sip:pbx.example.com:5080", ring_timeout_s=60.0))
    inv = start(net)
    for t in (30.0, 60.0, 90.0, 120.0):
        out = net.advance(t)
        assert 408 not in statuses(out, CALLER)
        net.send(net.answer(inv, 183), PBX)
    assert 408 not in statuses(net.advance(179.0), CALLER)
    out = net.advance(181.0)
    assert 408 in statuses(out, CALLER) and "CANCEL" in statuses(out, PBX)


def test_a_bye_in_the_early_dialog_ends_the_call():
    """RFC 3261 15 / 15.1.2: after our 180 (with its tag) the caller may hang up with BYE: 200 to it,
    487 to the INVITE, the agent's INVITE cancelled (it was 481 and the agent kept ringing)."""
    net = Net()
    inv = start(net)
    out = net.send(net.answer(inv, 180), PBX)
    (ringing,) = only(out, CALLER)
    out = net.send(request("UPDATE", cseq=2, branch="z9hG4bKearlyup", to_tag=ringing.to_tag))
    assert statuses(out, CALLER) == [200] and only(out, PBX) == []  # RFC 3311: UPDATE in the early dialog
    out = net.send(request("UPDATE", cseq=3, branch="z9hG4bKearlyup2", to_tag=ringing.to_tag, body=sdp(40002)))
    assert statuses(out, CALLER) == [500]
    out = net.send(request("BYE", cseq=4, branch="z9hG4bKearlybye", to_tag=ringing.to_tag))
    assert sorted(s for s in statuses(out, CALLER) if isinstance(s, int)) == [200, 487]
    assert "CANCEL" in statuses(out, PBX)
    assert any(isinstance(e, CallEnded) and e.reason == "caller hangup" for e in net.events)
    out = net.send(request("BYE", cseq=5, branch="z9hG4bKstray", to_tag="nosuchtag"))
    assert statuses(out, CALLER) == [481]


def test_a_sip_i_offer_is_taken_from_its_sdp_part():
    """RFC 5621 / 3204: SIP-I INVITEs carry ISUP beside the SDP; an optional part is dropped, a
    required one the gateway cannot pass is refused 415."""
    offer = sdp(40000)
    for handling, expect in (("optional", "INVITE"), ("required", 415)):
        body = (b"--sipi\r\nContent-Type: application/sdp\r\n\r\n" + offer +
                b"\r\n--sipi\r\nContent-Type: application/isup;version=itu-t92+\r\n"
                b"Content-Disposition: signal;handling=" + handling.encode() + b"\r\n\r\n\x01\x00\x49\x00"
                b"\r\n--sipi--\r\n")
        raw = request("INVITE", body=body).replace(b"Content-Type: application/sdp",
                                                   b"Content-Type: multipart/mixed;boundary=sipi", 1)
        net = Net()
        out = net.send(raw)
        if expect == "INVITE":
            (agent_invite,) = only(out, PBX)
            assert agent_invite.content_type == "application/sdp"
            assert remote_audio(parse_sdp(agent_invite.body)).codecs
        else:
            assert expect in statuses(out, CALLER) and only(out, PBX) == []


def test_a_telephone_number_request_uri_keeps_user_phone():
    """RFC 3261 19.1.1: `user=phone` says the user part is a telephone number; the next hop needs it."""
    net = Net()
    out = net.send(request("INVITE", body=sdp(40000), uri="sip:+442071234567@gw.example.com;user=phone"))
    (inv,) = only(out, PBX)
    assert inv.uri.startswith("sip:+442071234567@pbx.example.com:5080") and inv.uri.endswith(";user=phone")
    net = Net()
    (inv,) = only(net.send(request("INVITE", body=sdp(40000))), PBX)
    assert "user=phone" not in inv.uri


def test_srtp_on_caller_leg_only():
    extra = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
    net = Net()
    inv = start(net, sdp(40000, proto="RTP/SAVP", extra=extra))
    assert "RTP/AVP" in inv.body.decode() and "crypto" not in inv.body.decode()
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    text = ok.body.decode()
    assert "RTP/SAVP" in text and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in text
    caller_leg, agent_leg = next(iter(net.media.opened.values())).configured[-1]
    assert caller_leg.srtp is not None and caller_leg.srtp.remote_key_b64 == KEY and agent_leg.srtp is None


def test_reoffer_to_an_srtp_caller_uses_the_suite_its_answer_took():
    """RFC 4568: a caller listing a suite we cannot do first (AES-256, RFC 6188) gets our answer on the
    one we took; the agent's later re-INVITE (hold) reaches the caller on that suite too (it went out
    on the caller's first line with a 128-bit key, and PJSIP answered 488)."""
    key256 = base64.b64encode(bytes(range(46))).decode()
    extra = (f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key256}\r\n"
             f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n")
    net = Net()
    inv = start(net, sdp(40000, proto="RTP/SAVP", extra=extra))
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    assert "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:" in ok.body.decode()
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    out = net.send(agent_request(net, inv, "INVITE", 1, body=sdp(50000, direction="sendonly", host="192.0.2.20")), PBX)
    (reinv,) = only(out, CALLER)
    text = reinv.body.decode()
    assert "RTP/SAVP" in text and "AES_CM_128_HMAC_SHA1_80 inline:" in text and "AES_256" not in text


@pytest.mark.parametrize("side", ["agent", "caller"])
def test_an_rfc2543_hold_is_passed_on_as_a_hold(side: str):
    """RFC 3264 8.4: c=0.0.0.0 with a=sendrecv is an old-style hold; the other side was offered
    plain sendrecv and never heard of it (no music on hold)."""
    net = Net()
    inv, ok = connect(net)
    held = sdp(50000 if side == "agent" else 40000, host="192.0.2.20" if side == "agent" else "192.0.2.10")
    held = held.replace(b"c=IN IP4 192.0.2.20" if side == "agent" else b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0")
    if side == "agent":
        (reoffer,) = only(net.send(agent_request(net, inv, "INVITE", 1, body=held), PBX), CALLER)
    else:
        out = net.send(request("INVITE", cseq=2, branch="z9hG4bKhold", to_tag=ok.to_tag, body=held))
        (reoffer,) = only(out, PBX)
    assert remote_audio(parse_sdp(reoffer.body)).direction is Direction.SENDONLY


def test_an_initial_offer_with_no_address_yet_is_not_a_hold():
    """RFC 3264 8.4: c=0.0.0.0 in an initial offer means the address is not known yet; offering the
    agent sendonly for it left the call one-way."""
    net = Net()
    inv = start(net, sdp(40000).replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0"))
    assert remote_audio(parse_sdp(inv.body)).direction is Direction.SENDRECV


def test_srtp_offer_refused_when_srtp_is_off():
    extra = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
    net = Net(B2buaConfig(next_hop="sip:pbx.example.com:5080", srtp_allowed=False))
    out = net.send(request("INVITE", body=sdp(40000, proto="RTP/SAVP", extra=extra)))
    assert statuses(out, CALLER)[-1] == 488
    assert not [m for m, p in out if p != CALLER]  # nothing reaches the agent
    assert not net.media.opened
    out = net.send(request("INVITE", branch="z9hG4bKplain", call_id="plain", body=sdp(40002)))
    assert [m for m, p in out if p != CALLER and isinstance(m, SipRequest) and m.method == "INVITE"]


def test_srtp_on_agent_leg_only():
    net = Net(B2buaConfig(next_hop="sips:pbx.example.com", agent_srtp_suite="AES_CM_128_HMAC_SHA1_32"))
    out = net.send(request("INVITE", body=sdp(40000)))
    (inv,) = [m for m, p in out if p.transport == "tls"]
    assert inv.top_via.transport == "TLS" and "RTP/SAVP" in inv.body.decode()
    assert "AES_CM_128_HMAC_SHA1_32" in inv.body.decode()


def test_options_refer_unknown_max_forwards_require():
    net = Net()
    out = net.send(request("OPTIONS", branch="z9hG4bKo"))
    (resp,) = only(out, CALLER)
    assert resp.status == 200 and "INFO" in resp.headers.get("Allow") and resp.headers.get("Accept") == "application/sdp"
    out = net.send(request("FOO", branch="z9hG4bKf"))
    assert statuses(out, CALLER) == [501]
    out = net.send(request("INVITE", branch="z9hG4bKmf", max_forwards=0, body=sdp(40000)))
    assert statuses(out, CALLER) == [100, 483]
    out = net.send(request("INVITE", branch="z9hG4bKrq", call_id="rq", extra="Require: 100rel\r\n", body=sdp(40000)))
    (_, bad_ext) = only(out, CALLER)
    assert bad_ext.status == 420 and bad_ext.headers.get("Unsupported") == "100rel"
    inv, ok = connect(net)
    out = net.send(request("REFER", cseq=2, branch="z9hG4bKref", to_tag=ok.to_tag,
                           extra="Refer-To: <sip:other@example.com>\r\n"))
    (refused,) = only(out, CALLER)
    assert refused.status == 403 and only(out, PBX) == []


def test_no_acceptable_codec_488_and_no_ports_503():
    net = Net()
    out = net.send(request("INVITE", body=sdp(40000, fmts="9 101")))
    assert statuses(out, CALLER) == [100, 488] and only(out, PBX) == []
    net = Net(media=FakeMediaController(free_calls=0))
    out = net.send(request("INVITE", body=sdp(40000)))
    assert statuses(out, CALLER) == [100, 503]


def test_info_dtmf_policy():
    decisions = []

    def policy(call_id, body, content_type):
        decisions.append(content_type)
        return False

    net = Net(policy=policy)
    inv, ok = connect(net)
    body = b"Signal=5\r\nDuration=160\r\n"
    raw = request("INFO", cseq=2, branch="z9hG4bKinfo", to_tag=ok.to_tag,
                  extra="Content-Type: application/dtmf-relay\r\n", body=body)
    out = net.send(raw)
    assert statuses(out, CALLER) == [200] and only(out, PBX) == []
    ev = net.events[-1]
    assert isinstance(ev, InfoDtmfReceived) and ev.digit == "5" and not ev.forwarded
    assert "5" not in repr(ev).replace(ev.call_id, "")
    assert decisions == ["application/dtmf-relay"]


MULTIPART_INFO = (b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
                  b"--b1\r\nContent-Type: application/dtmf-relay\r\n\r\nSignal=6\r\nDuration=100\r\n--b1--\r\n")


@pytest.mark.parametrize("ctype, body, digit", [
    ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
    ("Application/DTMF-Relay; charset=utf-8", b"signal = *\r\n", "*"),
    ("application/x-dtmf-relay", b"Signal=4\r\nDuration=100\r\n", "4"),
    ("application/vnd.nortelnetworks.digits", b"d=3\r\n", "3"),
    ("application/dtmf", b"9", "9"),
    ("application/x-dtmf", b"#\r\n", "#"),
    ('multipart/mixed; boundary="b1"', MULTIPART_INFO, "6"),
    ("application/dtmf-relay", b"Signal=55\r\n", None),
    ("application/media_control+xml", b"<media_control/>", None),
    ("multipart/mixed", MULTIPART_INFO, None),  # no boundary
])
def test_info_dtmf_forms_reach_the_capture(ctype: str, body: bytes, digit: str | None):
    """Each vendor form of INFO DTMF gives its digit (the capture takes it); the policy decides the relaying."""
    net = Net(policy=lambda *a: False)
    inv, ok = connect(net)
    n_events = len(net.events)
    raw = request("INFO", cseq=2, branch="z9hG4bKinfo", to_tag=ok.to_tag, extra=f"Content-Type: {ctype}\r\n",
                  body=body)
    out = net.send(raw)
    assert statuses(out, CALLER) == [200] and only(out, PBX) == []
    got = [e.digit for e in net.events[n_events:] if isinstance(e, InfoDtmfReceived)]
    assert got == ([digit] if digit else [])


def test_info_relayed_when_policy_allows():
    net = Net(policy=lambda *a: True)
    inv, ok = connect(net)
    raw = request("INFO", cseq=2, branch="z9hG4bKinfo", to_tag=ok.to_tag,
                  extra="Content-Type: application/dtmf-relay\r\n", body=b"Signal=7\r\nDuration=100\r\n")
    out = net.send(raw)
    (info,) = only(out, PBX)
    assert info.method == "INFO" and info.body == b"Signal=7\r\nDuration=100\r\n"
    out = net.send(net.answer(info, 200), PBX)
    assert statuses(out, CALLER) == [200]


def test_hangup_from_edge_ends_both_legs():
    net = Net()
    inv, ok = connect(net)
    call_id = net.events[0].call_id
    net.gw.hangup(call_id, "media timeout", net.now)
    out = net.flush()
    assert statuses(out, CALLER) == ["BYE"] and statuses(out, PBX) == ["BYE"]
    assert net.events[-1].reason == "media timeout"


def test_session_timer_ends_call_without_refresh():
    net = Net()
    inv = start(net, body=None, extra="Session-Expires: 90\r\nSupported: timer\r\n")
    assert inv.headers.get("Session-Expires") == "90"
    out = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
    (ok,) = only(out, CALLER)
    # The agent's side uses no timer: the caller refreshes (RFC 4028 9), the gateway never does.
    assert ok.headers.get("Session-Expires") == "90;refresher=uac" and "timer" in ok.headers.get_all("Require")
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    assert only(net.advance(50.0), CALLER) == []  # 90 - min(32, 30) = 60 s
    out = net.advance(100.0)
    assert "BYE" in statuses(out, CALLER) and "BYE" in statuses(out, PBX)
    assert any(isinstance(e, CallEnded) and e.reason == "session expired" for e in net.events)


def test_a_caller_asking_the_gateway_to_refresh_is_told_to_refresh_itself_or_gets_no_timer():
    """The gateway never refreshes: it answered refresher=uas and hung up at expiry (outside probe)."""
    for supported, expect in (("Supported: timer\r\n", "30;refresher=uac"), ("", None)):
        net = Net()
        inv = start(net, body=None, extra=f"Session-Expires: 30;refresher=uas\r\n{supported}")
        out = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
        (ok,) = only(out, CALLER)
        assert ok.headers.get("Session-Expires") == expect
        net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
        out = net.advance(100.0)
        assert ("BYE" in statuses(out, CALLER)) == (expect is not None)


def test_a_callers_refresh_answered_by_an_agent_without_timers_keeps_the_timer_named():
    """RFC 4028 7.4: a 2xx without Session-Expires tells the caller to stop refreshing; while the
    gateway holds a timer for the call, its 2xx names it (the call would end at the next expiry)."""
    net = Net()
    inv = start(net, body=None, extra="Session-Expires: 90\r\nSupported: timer\r\n")
    out = net.send(net.answer(inv, 200, body=sdp(50000)), PBX)
    (ok,) = only(out, CALLER)
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    net.advance(40.0)
    for n, (method, body) in enumerate((("UPDATE", b""), ("INVITE", sdp(40000)))):
        out = net.send(request(method, cseq=2 + n, branch=f"z9hG4bKref{n}", to_tag=ok.to_tag, body=body,
                               extra="Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n"))
        (relayed,) = only(out, PBX)
        out = net.send(net.answer(relayed, 200, body=sdp(50000) if body else b""), PBX)  # no Session-Expires
        (answered,) = [m for m in only(out, CALLER) if isinstance(m, SipResponse)]
        assert answered.status == 200 and answered.headers.get("Session-Expires") == "90;refresher=uac"
        assert "timer" in answered.headers.get_all("Require")


def test_a_session_refresh_by_update_restarts_the_timer_on_both_legs():
    """RFC 4028 10: PJSIP and Asterisk refresh with an UPDATE without SDP (the gateway allows UPDATE);
    its Session-Expires and Supported: timer reach the other leg, the 2xx's come back, and the timer
    restarts (the call was torn down at the old expiry)."""
    net = Net()
    inv = start(net, body=None, extra="Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    out = net.send(net.answer(inv, 200, body=sdp(50000), extra=[("Session-Expires", "90;refresher=uac")]), PBX)
    (ok,) = only(out, CALLER)
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    for n, t in enumerate((45.0, 90.0, 135.0)):
        net.advance(t)
        out = net.send(request("UPDATE", cseq=2 + n, branch=f"z9hG4bKup{n}", to_tag=ok.to_tag,
                               extra="Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n"))
        (update,) = only(out, PBX)
        assert update.method == "UPDATE" and update.headers.get("Session-Expires") == "90;refresher=uac"
        assert "timer" in update.headers.get_all("Supported")
        out = net.send(net.answer(update, 200, extra=[("Session-Expires", "90;refresher=uac"), ("Require", "timer")]),
                       PBX)
        (answered,) = only(out, CALLER)
        assert answered.status == 200 and answered.headers.get("Session-Expires") == "90;refresher=uac"
    out = net.advance(180.0)  # 45 s after the last refresh: well inside 90 - 30
    assert "BYE" not in statuses(out, CALLER) + statuses(out, PBX)
    out = net.advance(200.0)  # 65 s after it, no refresh: the session expires
    assert "BYE" in statuses(out, CALLER) and "BYE" in statuses(out, PBX)


def test_a_challenge_reaches_the_caller_and_its_credentials_reach_the_next_hop():
    """RFC 3261 22.2: a next hop that authenticates INVITEs answers 401/407; the caller needs the
    challenge to retry, and its retry's credentials must reach the next hop (SIPp's digest client
    failed through the gateway: the challenge headers were dropped)."""
    net = Net()
    inv = start(net)
    challenge = [("WWW-Authenticate", 'Digest realm="pbx", nonce="abc", algorithm=MD5'),
                 ("Proxy-Authenticate", 'Digest realm="edge", nonce="n1"'),
                 ("Proxy-Authenticate", 'Digest realm="edge2", nonce="n2"')]
    out = net.send(net.answer(inv, 401, extra=challenge), PBX)
    (refused,) = [m for m in only(out, CALLER) if isinstance(m, SipResponse)]
    assert refused.status == 401
    assert refused.headers.values("WWW-Authenticate") == [challenge[0][1]]
    assert refused.headers.values("Proxy-Authenticate") == [challenge[1][1], challenge[2][1]]
    creds = 'Digest username="alice", realm="pbx", nonce="abc", uri="sip:1234@gw.example.com", response="x"'
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKretry", body=sdp(40000),
                           extra=f"Authorization: {creds}\r\nX-Queue: gold\r\nDiversion: <sip:100@pbx>;reason=busy\r\n"))
    (retry,) = only(out, PBX)
    assert retry.headers.get("Authorization") == creds
    # RFC 3261 22.2: the next hop sees its challenge answered in the same call.
    assert (retry.call_id, retry.from_tag, retry.cseq) == (inv.call_id, inv.from_tag, (inv.cseq[0] + 1, "INVITE"))
    assert retry.headers.get("X-Queue") == "gold" and retry.headers.get("Diversion") == "<sip:100@pbx>;reason=busy"


def test_refusals_keep_what_the_caller_needs_to_act_on_them():
    """422 keeps Min-SE (RFC 4028 6), 503 Retry-After; a 3xx's targets point at the gateway with
    their user kept, so that the redirected call comes back through it."""
    for status, extra, name, expect in (
            (422, [("Min-SE", "1800")], "Min-SE", ["1800"]),
            (503, [("Retry-After", "30")], "Retry-After", ["30"]),
            (421, [("Require", "100rel")], "Require", ["100rel"]),  # RFC 3261 21.4.16: MUST name it
            (302, [("Contact", "<sip:2000@pbx.example.com:5080>")], "Contact", ["<sip:2000@127.0.0.1:5060>"])):
        net = Net()
        assert net.gw.config.local_host == "127.0.0.1"
        inv = start(net)
        out = net.send(net.answer(inv, status, extra=extra), PBX)
        (refused,) = [m for m in only(out, CALLER) if isinstance(m, SipResponse)]
        assert refused.status == status
        got = refused.headers.values(name)
        if status == 302:
            got = [v for v in got if "2000@" in v]
        assert got == expect, (status, refused.headers.items())


def test_reason_goes_on_with_cancel_and_bye():
    """RFC 3326: the caller's CANCEL "Call completed elsewhere" (no missed call on the agent's phone)
    and the agent's BYE release cause (Q.850 for ISUP interworking) reach the other leg."""
    net = Net()
    inv = start(net)
    net.send(net.answer(inv, 180), PBX)
    completed = 'SIP;cause=200;text="Call completed elsewhere"'
    out = net.send(request("CANCEL", branch="z9hG4bKc1", extra=f"Reason: {completed}\r\n"))
    (cancel,) = [m for m in only(out, PBX) if m.method == "CANCEL"]
    assert cancel.headers.values("Reason") == [completed]
    net = Net()
    inv, ok = connect(net)
    out = net.send(agent_request(net, inv, "BYE", 1, extra="Reason: Q.850;cause=16\r\n"), PBX)
    (bye,) = [m for m in only(out, CALLER) if isinstance(m, SipRequest)]
    assert bye.method == "BYE" and bye.headers.values("Reason") == ["Q.850;cause=16"]
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKbye", to_tag=ok.to_tag))
    (bye,) = [m for m in only(out, PBX) if isinstance(m, SipRequest)]
    assert bye.headers.values("Reason") == []


def test_responses_that_make_the_callers_dialog_copy_its_record_route():
    """RFC 3261 12.1.1: the caller's in-dialog requests must take the record-routing proxies' path."""
    net = Net()
    rr = "Record-Route: <sip:sbc1.example;lr>, <sip:192.0.2.50:5080;lr>\r\nRecord-Route: <sip:edge.example;lr>\r\n"
    inv = start(net, extra=rr)
    out = net.send(net.answer(inv, 180), PBX)
    (ringing,) = only(out, CALLER)
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    for resp in (ringing, ok):
        assert resp.headers.values("Record-Route") == ["<sip:sbc1.example;lr>, <sip:192.0.2.50:5080;lr>",
                                                       "<sip:edge.example;lr>"]


def test_options_at_max_forwards_zero_is_answered_other_requests_are_not():
    net = Net()
    out = net.send(request("OPTIONS", branch="z9hG4bKopt", max_forwards=0))
    assert statuses(out, CALLER) == [200]
    out = net.send(request("INVITE", branch="z9hG4bKmf0", max_forwards=0, body=sdp(40000)))
    assert 483 in statuses(out, CALLER)


def test_no_update_reaches_a_caller_that_does_not_allow_it():
    """RFC 3311 5.1: the agent's UPDATE with an offer (hold) reaches such a caller as a re-INVITE; its
    refresh without one is answered by the gateway (the caller answered 501 and the agent got it)."""
    net = Net()
    inv = start(net, extra="Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n")
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = only(out, CALLER)
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    out = net.send(agent_request(net, inv, "UPDATE", 1, body=sdp(50000, direction="sendonly", host="192.0.2.20")), PBX)
    (reinv,) = only(out, CALLER)
    assert reinv.method == "INVITE" and remote_audio(parse_sdp(reinv.body)).direction is Direction.SENDONLY
    out = net.send(net.answer(reinv, 200, tag="caller1", body=sdp(40000, direction="recvonly")), CALLER)
    assert statuses(out, CALLER) == ["ACK"]
    (answered,) = only(out, PBX)
    assert answered.status == 200 and answered.cseq[1] == "UPDATE"
    out = net.send(agent_request(net, inv, "UPDATE", 2, extra="Session-Expires: 90;refresher=uac\r\n"), PBX)
    assert only(out, CALLER) == []
    (answered,) = only(out, PBX)
    assert answered.status == 200 and answered.headers.get("Session-Expires") == "90;refresher=uac"


def test_a_reinvite_crossing_a_bye_still_gets_its_final_response():
    """RFC 3261 15.1.2: the caller's re-INVITE is pending at the agent when the agent hangs up."""
    net = Net()
    inv, ok = connect(net)
    out = net.send(request("INVITE", cseq=2, branch="z9hG4bKre1", to_tag=ok.to_tag, body=sdp(40000, direction="sendonly")))
    (reinv,) = only(out, PBX)
    out = net.send(agent_request(net, inv, "BYE", 1), PBX)
    caller_got = statuses(out, CALLER)
    assert "BYE" in caller_got and 487 in caller_got


def test_requests_to_a_tcp_caller_fall_back_to_its_contact_port_on_its_connection():
    """RFC 3261 18.1.1: the caller's connection carries our requests while it lasts; its Contact's
    port (same host) is where a new connection goes once it closed (the caller never got the BYE)."""
    tcp_caller = Peer("tcp", "192.0.2.10", 40123, 7)
    net = Net()
    raw = request("INVITE", body=sdp(40000), via_host="192.0.2.10:40123").replace(
        b"Via: SIP/2.0/UDP", b"Via: SIP/2.0/TCP").replace(
        b"Contact: <sip:alice@192.0.2.10:5060>", b"Contact: <sip:alice@192.0.2.10:5080;transport=tcp>")
    out = net.send(raw, tcp_caller)
    (inv,) = only(out, PBX)
    out = net.send(net.answer(inv, 200, body=sdp(50000, host="192.0.2.20")), PBX)
    (ok,) = [m for m, p in out if p.connection_id == 7]
    out = net.send(agent_request(net, inv, "BYE", 1), PBX)
    (bye,) = [(m, p) for m, p in out if isinstance(m, SipRequest) and m.method == "BYE"]
    assert bye[1] == Peer("tcp", "192.0.2.10", 5080, 7)


def test_the_caller_stays_its_legs_refresher_whatever_the_agent_side_chose():
    """The gateway never refreshes and cannot reach a caller without UPDATE with the agent's refreshes:
    the caller's leg names the caller as refresher at setup, in our requests and in our answers, on
    the interval it is then held to (review: refresher=uas passed through and the caller expired)."""
    net = Net()
    inv = start(net, body=None, extra="Session-Expires: 1800\r\nSupported: timer\r\nAllow: INVITE, ACK, BYE\r\n")
    out = net.send(net.answer(inv, 200, body=sdp(50000), extra=[("Session-Expires", "1800;refresher=uas")]), PBX)
    (ok,) = only(out, CALLER)
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    net.send(request("ACK", branch="z9hG4bKack1", to_tag=ok.to_tag))
    # The agent re-offers with its own refresher: the caller hears that it refreshes (uas of our request).
    out = net.send(agent_request(net, inv, "INVITE", 1, body=sdp(50000, host="192.0.2.20"),
                                 extra="Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n"), PBX)
    (reinv,) = only(out, CALLER)
    assert reinv.headers.get("Session-Expires") == "1800;refresher=uas"
    out = net.send(net.answer(reinv, 200, tag="caller1", body=sdp(40000)), CALLER)
    assert [m.status for m in only(out, PBX)] == [200]
    net.send(agent_request(net, inv, "ACK", 1), PBX)
    # The caller refreshes with a shorter interval: it is answered with the one it is held to.
    out = net.send(request("UPDATE", cseq=2, branch="z9hG4bKup", to_tag=ok.to_tag,
                           extra="Session-Expires: 90\r\nSupported: timer\r\n"))
    (update,) = only(out, PBX)
    out = net.send(net.answer(update, 200), PBX)
    (answered,) = only(out, CALLER)
    assert answered.headers.get("Session-Expires") == "90;refresher=uac"
    assert "BYE" not in statuses(net.advance(50.0), CALLER)
    assert "BYE" in statuses(net.advance(70.0), CALLER)


def test_the_agents_info_reaches_the_caller_whatever_the_capture_policy():
    """The capture's INFO policy is for the caller's INFO (review: the agent's was withheld too)."""
    net = Net(policy=lambda *a: False)
    inv, ok = connect(net)
    raw = agent_request(net, inv, "INFO", 1, extra="Content-Type: application/x-cti\r\n")
    out = net.send(raw, PBX)
    assert [m.method for m in only(out, CALLER)] == ["INFO"]


def test_an_early_bye_from_another_host_is_refused():
    net = Net()
    inv = start(net)
    out = net.send(net.answer(inv, 180), PBX)
    (ringing,) = only(out, CALLER)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKforeign", to_tag=ringing.to_tag), Peer("udp", "203.0.113.9", 5060))
    assert [m.status for m, _ in out] == [481] and only(out, PBX) == []


def test_a_redirect_to_a_tls_caller_stays_on_tls_and_a_tel_target_keeps_its_number():
    net = Net()
    tls_caller = Peer("tls", "192.0.2.10", 40555, 3)
    raw = request("INVITE", body=sdp(40000), via_host="192.0.2.10:40555").replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS")
    (inv,) = only(net.send(raw, tls_caller), PBX)
    out = net.send(net.answer(inv, 302, extra=[("Contact", "<tel:+442071234567>")]), PBX)
    (moved,) = [m for m, p in out if p.connection_id == 3 and isinstance(m, SipResponse) and m.status == 302]
    contacts = moved.headers.values("Contact")
    assert all(";transport=tls" in c for c in contacts)
    assert any(c.startswith("<sip:+442071234567@") and ";user=phone" in c for c in contacts)


def test_a_sip_i_reinvite_is_taken_from_its_sdp_part():
    net = Net()
    inv, ok = connect(net)
    body = (b"--b\r\nContent-Type: application/sdp\r\n\r\n" + sdp(40000, direction="sendonly") +
            b"\r\n--b\r\nContent-Type: application/isup\r\nContent-Disposition: signal;handling=optional\r\n\r\n"
            b"s=--b not a delimiter\r\n--b--\r\n")
    raw = request("INVITE", cseq=2, branch="z9hG4bKsipi", to_tag=ok.to_tag, body=body).replace(
        b"Content-Type: application/sdp", b"Content-Type: multipart/mixed;boundary=b", 1)
    out = net.send(raw)
    (reinv,) = only(out, PBX)
    assert reinv.method == "INVITE" and remote_audio(parse_sdp(reinv.body)).direction is Direction.SENDONLY


def inv_call_id(net: Net) -> str:
    (call_id,) = net.media.opened
    return call_id


def test_multipart_answers_are_taken_from_their_sdp_part():
    """RFC 5621: a SIP-T/SIP-I peer answers as it offers, in multipart. The agent's 2xx and the
    caller's 2xx to our re-INVITE each answer through their SDP part (both were refused as no SDP)."""
    net = Net()
    inv = start(net)
    answer = as_multipart(net.answer(inv, 200, body=sip_t_body(sdp(50000, fmts="8 101", host="192.0.2.20"))))
    out = net.send(answer, PBX)
    (ok,) = only(out, CALLER)
    assert ok.status == 200 and ok.content_type == "application/sdp"
    assert remote_audio(parse_sdp(ok.body)).codecs[0].name == "PCMA"
    assert net.media.opened[inv_call_id(net)].configured[-1][1].remote_rtp == ("192.0.2.20", 50000)
    net.send(request("ACK", cseq=1, branch="z9hG4bKack1", to_tag=ok.to_tag))
    out = net.send(agent_request(net, inv, "INVITE", 1, body=sdp(50000, direction="sendonly", host="192.0.2.20")), PBX)
    (reinv,) = only(out, CALLER)
    reply = as_multipart(net.answer(reinv, 200, tag="caller1",
                                    body=sip_t_body(sdp(40010, fmts="8 101", direction="recvonly"))))
    out = net.send(reply, CALLER)
    (ok2,) = only(out, PBX)
    assert ok2.status == 200 and remote_audio(parse_sdp(ok2.body)).direction is Direction.RECVONLY
    assert net.media.opened[inv_call_id(net)].configured[-1][0].remote_rtp == ("192.0.2.10", 40010)


def test_malformed_garbage_and_other_calls_unaffected():
    net = Net()
    inv, ok = connect(net)
    bad = request("OPTIONS", branch="z9hG4bKbad").replace(b"Max-Forwards: 70", b"Max-Forwards: abc")
    out = net.send(bad)
    (resp,) = only(out, CALLER)
    assert resp.status == 400 and resp.call_id == "call-1@192.0.2.10"
    out = net.send(b"\x00\xff garbage")
    assert out == []
    out = net.send(request("OPTIONS", branch="z9hG4bKv").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert statuses(out, CALLER) == [505]
    rejected = [e for e in net.events if isinstance(e, MessageRejected)]
    assert [e.status for e in rejected] == [400, None, 505]
    # The call still works.
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKbye", to_tag=ok.to_tag))
    assert statuses(out, PBX) == ["BYE"]


def test_bye_with_wrong_tag_is_481():
    net = Net()
    connect(net)
    out = net.send(request("BYE", cseq=2, branch="z9hG4bKb", to_tag="nope"))
    assert statuses(out, CALLER) == [481]
