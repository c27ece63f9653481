"""SDP parsing, serialising and the gateway's offer/answer rules."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.leg import Direction
from gateway.sip.sdp import (
    NotAcceptable,
    SdpParseError,
    build_answer,
    build_offer,
    leg_from_answer,
    parse_sdp,
    remote_audio,
)

KEY = base64.b64encode(bytes(range(30))).decode()


def caller_sdp(
    port: int = 40000,
    fmts: str = "8 0 101",
    extra: str = "",
    proto: str = "RTP/AVP",
    te_pt: int = 101,
) -> bytes:
    return (
        "v=0\r\n"
        "o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
        "s=-\r\n"
        "c=IN IP4 192.0.2.10\r\n"
        "t=0 0\r\n"
        f"m=audio {port} {proto} {fmts}\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:9 G722/8000\r\n"
        f"a=rtpmap:{te_pt} telephone-event/8000\r\n"
        f"a=fmtp:{te_pt} 0-16\r\n"
        "a=ptime:20\r\n"
        "a=x-unknown:kept\r\n"
        f"{extra}"
    ).encode()


def test_parse_and_round_trip():
    raw = caller_sdp()
    sd = parse_sdp(raw)
    assert bytes(sd) == raw
    assert sd.media[0].attribute("x-unknown") == "kept"
    ra = remote_audio(sd)
    assert ra.rtp == ("192.0.2.10", 40000)
    assert ra.rtcp == ("192.0.2.10", 40001)
    assert [c.name for c in ra.codecs] == ["PCMA", "PCMU"]
    assert ra.telephone_event is not None and ra.telephone_event.pt == 101
    assert ra.direction is Direction.SENDRECV and ra.ptime_ms == 20


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"", "SDP does not start with v=0"),
        (b"v=1\r\n", "SDP does not start with v=0"),
        (b"v=0\r\nnonsense\r\n", "SDP line is malformed"),
        (b"v=0\r\nm=audio notaport RTP/AVP 0\r\n", "SDP m= line is invalid"),
        (b"v=0\r\nc=IN IP9 x\r\n", "SDP c= line is invalid"),
        (b"v=0\r\n\xff=0\r\n", "SDP is not valid UTF-8"),
    ],
)
def test_malformed_sdp(raw, message):
    with pytest.raises(SdpParseError) as info:
        parse_sdp(raw)
    assert str(info.value) == message


def test_offer_to_agent_only_inspectable_codecs_caller_order_and_pt_remap():
    ra = remote_audio(parse_sdp(caller_sdp()))
    sd, offer = build_offer(
        address="198.51.100.1",
        port=30000,
        codecs=[c.name for c in ra.codecs],
        telephone_event_pt=96,
        session_id=1,
        version=1,
    )
    text = bytes(sd).decode()
    assert "m=audio 30000 RTP/AVP 8 0 96\r\n" in text
    assert "G722" not in text and "a=rtpmap:96 telephone-event/8000" in text
    assert "c=IN IP4 198.51.100.1" in text and "a=rtcp:30001 IN IP4 198.51.100.1" in text
    # Agent answers with 96 for telephone-event; the caller leg keeps 101.
    agent_answer = (
        "v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
        "m=audio 50000 RTP/AVP 0 96\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000\r\n"
    ).encode()
    agent_leg = leg_from_answer(offer, remote_audio(parse_sdp(agent_answer)))
    assert (agent_leg.codec, agent_leg.audio_pt, agent_leg.telephone_event_pt) == ("PCMU", 0, 96)
    assert agent_leg.remote_rtp == ("192.0.2.20", 50000)
    _, caller_leg = build_answer(ra, address="198.51.100.1", port=30002, session_id=2, version=1)
    assert caller_leg.telephone_event_pt == 101 and caller_leg.codec == "PCMA"


def test_answer_with_no_acceptable_codec_is_488():
    ra = remote_audio(parse_sdp(caller_sdp(fmts="9 101")))
    with pytest.raises(NotAcceptable) as info:
        build_answer(ra, address="198.51.100.1", port=30000, session_id=1, version=1)
    assert info.value.status == 488
    assert str(info.value) == "SDP offer has no acceptable codec"


def test_hold_direction_and_answer():
    ra = remote_audio(parse_sdp(caller_sdp(extra="a=sendonly\r\n")))
    assert ra.direction is Direction.SENDONLY
    sd, leg = build_answer(ra, address="198.51.100.1", port=30000, session_id=1, version=2)
    assert "a=recvonly" in bytes(sd).decode()
    assert leg.direction is Direction.SENDONLY
    old_hold = remote_audio(parse_sdp(caller_sdp().replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0")))
    assert old_hold.rtp is None


def test_srtp_answer_generates_our_key_and_hides_it():
    extra = f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^20|1:32\r\n"
    ra = remote_audio(parse_sdp(caller_sdp(proto="RTP/SAVP", extra=extra)))
    assert ra.secure and KEY not in repr(ra)
    sd, leg = build_answer(ra, address="198.51.100.1", port=30000, session_id=1, version=1)
    text = bytes(sd).decode()
    assert "m=audio 30000 RTP/SAVP" in text
    assert leg.srtp is not None and leg.srtp.suite == "AES_CM_128_HMAC_SHA1_32"
    assert leg.srtp.remote_key_b64 == KEY and leg.srtp.local_key_b64 != KEY
    assert f"inline:{leg.srtp.local_key_b64}" in text
    assert KEY not in repr(leg) and leg.srtp.local_key_b64 not in repr(leg)


def test_srtp_offer_without_supported_suite_is_488():
    extra = f"a=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY}\r\n"
    ra = remote_audio(parse_sdp(caller_sdp(proto="RTP/SAVP", extra=extra)))
    with pytest.raises(NotAcceptable, match="^SDP offer has no acceptable crypto suite$"):
        build_answer(ra, address="198.51.100.1", port=30000, session_id=1, version=1)


def test_srtp_offer_and_answer_keys_pair_up():
    sd, offer = build_offer(
        address="198.51.100.1", port=30000, codecs=["PCMU"], telephone_event_pt=101,
        srtp_suite="AES_CM_128_HMAC_SHA1_80", session_id=1, version=1,
    )
    assert "RTP/SAVP" in bytes(sd).decode() and offer.local_key_b64 not in repr(offer)
    their = remote_audio(parse_sdp(bytes(sd)))  # a peer answering with our own offer's crypto shape
    answer_sd, their_leg = build_answer(their, address="192.0.2.20", port=50000, session_id=9, version=1)
    ours = leg_from_answer(offer, remote_audio(parse_sdp(bytes(answer_sd))))
    assert ours.srtp is not None and their_leg.srtp is not None
    assert ours.srtp.remote_key_b64 == their_leg.srtp.local_key_b64
    assert ours.srtp.local_key_b64 == their_leg.srtp.remote_key_b64
    plain = remote_audio(parse_sdp(caller_sdp()))
    with pytest.raises(NotAcceptable):
        leg_from_answer(offer, plain)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_value_errors(data):
    try:
        remote_audio(parse_sdp(data))
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="vmacost=0123456789 /:.\r\nINP4AVRudio", max_size=200))
def test_sdp_grammar_noise_only_value_errors(text):
    try:
        remote_audio(parse_sdp(("v=0\r\n" + text).encode()))
    except ValueError:
        pass
