"""Offers with more than one m= line: the answer keeps every line, in order (RFC 3264 6), later
offers keep a session's lines (RFC 3264 8), and media on the wrong address family is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.sdp import (
    IncompatibleAddress,
    MediaSlot,
    NotAcceptable,
    build_answer,
    build_offer,
    build_rejection,
    check_address_family,
    leg_from_answer,
    parse_sdp,
    remote_audio,
)

SECTIONS = {
    "audio": "m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
             "a=rtpmap:101 telephone-event/8000\r\n",
    "video": "m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
    "application": "m=application {port} UDP/DTLS/SCTP webrtc-datachannel\r\n",
    "text": "m=text {port} RTP/AVP 98\r\na=rtpmap:98 t140/1000\r\n",
}


def offer_sdp(*kinds: str, conn: str = "IN IP4 192.0.2.10", ports: tuple[int, ...] = ()) -> bytes:
    head = f"v=0\r\no=ua 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc={conn}\r\nt=0 0\r\n"
    body = "".join(SECTIONS[k].format(port=ports[i] if i < len(ports) else 40000 + 2 * i)
                   for i, k in enumerate(kinds))
    return (head + body).encode()


def answer_for(raw: bytes) -> list[tuple[str, int]]:
    offer = remote_audio(parse_sdp(raw))
    sd, _ = build_answer(offer, address="203.0.113.5", port=30000, session_id=1, version=1)
    return [(m.media, m.port) for m in parse_sdp(bytes(sd)).media]


@pytest.mark.parametrize("kinds", [
    ("audio",), ("audio", "video"), ("video", "audio"), ("audio", "application"), ("application", "audio"),
    ("video", "audio", "text"), ("audio", "audio"), ("video", "video", "audio", "application"),
])
def test_answer_has_every_offered_line_in_order_and_only_the_first_audio_open(kinds):
    lines = answer_for(offer_sdp(*kinds))
    assert [m for m, _ in lines] == list(kinds)
    first_audio = kinds.index("audio")
    assert [port != 0 for _, port in lines] == [i == first_audio for i in range(len(kinds))]
    assert lines[first_audio][1] == 30000


def test_rejected_lines_keep_proto_and_one_offered_format():
    sd, _ = build_answer(remote_audio(parse_sdp(offer_sdp("video", "audio", "application"))),
                         address="203.0.113.5", port=30000, session_id=1, version=1)
    video, audio, app = parse_sdp(bytes(sd)).media
    assert (video.proto, video.formats, video.lines) == ("RTP/AVP", ["96"], [])
    assert (app.proto, app.formats) == ("UDP/DTLS/SCTP", ["webrtc-datachannel"])
    assert audio.formats[0] == "8" and audio.attribute("rtpmap") == "8 PCMA/8000"


def test_the_relayed_stream_is_the_first_audio_line_with_a_port():
    offer = remote_audio(parse_sdp(offer_sdp("video", "audio", "audio", ports=(40000, 0, 40004))))
    assert (offer.index, offer.port) == (2, 40004)
    assert offer.slots == (MediaSlot("video", "RTP/AVP", "96"), MediaSlot("audio", "RTP/AVP", "8"),
                           MediaSlot("audio", "RTP/AVP", "8"))
    assert answer_for(offer_sdp("video", "audio", "audio", ports=(40000, 0, 40004))) == [
        ("video", 0), ("audio", 0), ("audio", 30000)]


def test_offer_without_audio_is_not_acceptable():
    with pytest.raises(NotAcceptable, match="^SDP has no audio stream$"):
        remote_audio(parse_sdp(offer_sdp("video", "application")))


def test_new_offer_is_audio_only_and_a_later_one_keeps_the_session_layout():
    sd, local = build_offer(address="203.0.113.5", port=30002, codecs=["PCMU"], telephone_event_pt=101,
                            session_id=1, version=1)
    assert [(m.media, m.port) for m in sd.media] == [("audio", 30002)]
    assert (local.layout, local.index) == ((MediaSlot("audio", "RTP/AVP", "0"),), 0)
    # RFC 3264 8: the session has [video, audio] (we answered a video-first offer): a new offer keeps both.
    layout = remote_audio(parse_sdp(offer_sdp("video", "audio"))).slots
    sd, local = build_offer(address="203.0.113.5", port=30002, codecs=["PCMA"], telephone_event_pt=101,
                            session_id=1, version=2, layout=layout, index=1)
    assert [(m.media, m.port, m.formats[0]) for m in sd.media] == [("video", 0, "96"), ("audio", 30002, "8")]
    assert local.index == 1 and [s.media for s in local.layout] == ["video", "audio"]
    # The answer's audio is read from the line we offered it on, not the first audio line anywhere.
    answer = parse_sdp(offer_sdp("video", "audio", ports=(0, 41000)))
    leg = leg_from_answer(local, remote_audio(answer, local.index))
    assert leg.remote_rtp == ("192.0.2.10", 41000) and leg.codec == "PCMA"


def test_an_answer_that_dropped_the_rejected_lines_is_read_leniently():
    answer = parse_sdp(offer_sdp("audio", ports=(41000,)))
    assert remote_audio(answer, 1).port == 41000  # no line 1: the first audio line
    answer = parse_sdp(offer_sdp("video", "audio", ports=(0, 41000)))
    assert remote_audio(answer, 0).port == 41000  # line 0 is not audio


def test_rejection_refuses_every_line():
    offer = remote_audio(parse_sdp(offer_sdp("audio", "video", "application")))
    sd = build_rejection(offer, address="203.0.113.5", session_id=1, version=1)
    assert [(m.media, m.port) for m in sd.media] == [("audio", 0), ("video", 0), ("application", 0)]


@pytest.mark.parametrize("conn, media_c, port, refused", [
    ("IN IP6 2001:db8::1", "", 40000, True),
    ("IN IP6 ::1", "", 40000, True),
    ("IN IP4 192.0.2.10", "c=IN IP6 2001:db8::1\r\n", 40000, True),  # media-level c= wins (RFC 4566 5.7)
    ("IN IP6 2001:db8::1", "c=IN IP4 192.0.2.10\r\n", 40000, False),
    ("IN IP6 2001:db8::1", "", 0, False),  # a rejected stream has nothing to reach
    ("IN IP4 192.0.2.10", "", 40000, False),
])
def test_ipv6_media_on_an_ipv4_relay_is_incompatible(conn, media_c, port, refused):
    raw = offer_sdp("audio", conn=conn, ports=(port,)).replace(b"a=rtpmap:8", media_c.encode() + b"a=rtpmap:8")
    audio = remote_audio(parse_sdp(raw))
    if not refused:
        check_address_family(audio, "203.0.113.5")
        return
    with pytest.raises(IncompatibleAddress, match="^SDP address family is incompatible$") as info:
        check_address_family(audio, "203.0.113.5")
    assert info.value.status == 488
    assert info.value.warning == (301, "Incompatible network address formats")  # RFC 3261 20.43
    check_address_family(audio, "2001:db8::5")  # an IPv6 relay could reach it


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(SECTIONS)), min_size=1, max_size=6).filter(lambda k: "audio" in k))
def test_any_layout_is_answered_line_for_line(kinds):
    lines = answer_for(offer_sdp(*kinds))
    assert [m for m, _ in lines] == kinds
    assert [i for i, (_, port) in enumerate(lines) if port] == [kinds.index("audio")]
