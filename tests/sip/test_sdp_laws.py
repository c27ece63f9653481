"""Offer/answer across G.711 laws: lenient answers (RFC 3264 6.1) and the preferred law of an answer."""

from __future__ import annotations

import pytest

from gateway.sip.sdp import (
    NotAcceptable,
    answer_codec,
    build_answer,
    build_offer,
    leg_from_answer,
    parse_sdp,
    remote_audio,
)


def audio_sdp(fmts: str, rtpmaps: str = "", port: int = 50000) -> bytes:
    return (f"v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {fmts}\r\n{rtpmaps}").encode()


def our_offer(codecs: list[str]):
    _, offer = build_offer(address="198.51.100.1", port=30002, codecs=codecs, telephone_event_pt=101,
                           session_id=1, version=1)
    return offer


@pytest.mark.parametrize("offered, answer, chosen", [
    (["PCMA"], audio_sdp("8"), ("PCMA", 8)),
    (["PCMA"], audio_sdp("0"), ("PCMU", 0)),  # SIPp's built-in uas: not offered, still G.711
    (["PCMU"], audio_sdp("8 101", "a=rtpmap:101 telephone-event/8000\r\n"), ("PCMA", 8)),
    (["PCMA"], audio_sdp("0 8"), ("PCMA", 8)),  # an offered law wins over the answer's first
    (["PCMA"], audio_sdp("9 0"), ("PCMU", 0)),  # G.722 skipped, G.711 taken
    (["PCMA"], audio_sdp("97", "a=rtpmap:97 pcmu/8000\r\n"), ("PCMU", 97)),  # dynamic PT, any case
])
def test_answer_codec_takes_an_offered_law_else_any_g711(offered, answer, chosen):
    codec = answer_codec(our_offer(offered), remote_audio(parse_sdp(answer)))
    assert (codec.name, codec.pt) == chosen


@pytest.mark.parametrize("answer", [
    audio_sdp("9"),
    audio_sdp("18", "a=rtpmap:18 G729/8000\r\n"),
    audio_sdp("101", "a=rtpmap:101 telephone-event/8000\r\n"),
    audio_sdp("97", "a=rtpmap:97 PCMU/16000\r\n"),
    audio_sdp("96", "a=rtpmap:96 opus/48000/2\r\n"),
])
def test_answers_without_8khz_g711_are_refused(answer):
    with pytest.raises(NotAcceptable, match="^SDP answer has no acceptable codec$") as info:
        leg_from_answer(our_offer(["PCMA", "PCMU"]), remote_audio(parse_sdp(answer)))
    assert info.value.status == 488


def test_unoffered_law_leg_keeps_pt_and_telephone_event_from_the_answer():
    leg = leg_from_answer(our_offer(["PCMA"]), remote_audio(parse_sdp(audio_sdp("0"))))
    assert (leg.codec, leg.audio_pt, leg.telephone_event_pt) == ("PCMU", 0, None)
    assert leg.remote_rtp == ("192.0.2.20", 50000)


@pytest.mark.parametrize("caller_fmts, prefer, chosen", [
    ("8 0 101", "PCMU", "PCMU"),  # the other leg's law when offered: no conversion
    ("8 0 101", "PCMA", "PCMA"),
    ("8 101", "PCMU", "PCMA"),  # not offered: the caller's own law, the relay converts
    ("0 8 101", None, "PCMU"),  # no preference: the offer's order
])
def test_build_answer_prefers_the_other_legs_law_when_offered(caller_fmts, prefer, chosen):
    rtpmaps = "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    offer = remote_audio(parse_sdp(audio_sdp(caller_fmts, rtpmaps, port=40000)))
    sd, leg = build_answer(offer, address="198.51.100.1", port=30000, session_id=1, version=1, prefer=prefer)
    assert leg.codec == chosen
    assert [c.name for c in remote_audio(parse_sdp(bytes(sd))).codecs] == [chosen]


def test_build_answer_still_refuses_an_offer_without_g711_whatever_the_preference():
    offer = remote_audio(parse_sdp(audio_sdp("9 18", port=40000)))
    with pytest.raises(NotAcceptable, match="^SDP offer has no acceptable codec$"):
        build_answer(offer, address="198.51.100.1", port=30000, session_id=1, version=1, prefer="PCMU")
