"""Stream framing: whole, byte at a time, several per chunk, keep-alives, exact errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.framing import StreamFramer
from gateway.sip.message import Limits, SipParseError
from tests.sip.fixtures import INVITE, RESPONSE_180


def test_whole_and_two_in_one_chunk():
    f = StreamFramer()
    msgs = f.feed(INVITE + RESPONSE_180)
    assert [bytes(m) for m in msgs] == [INVITE, RESPONSE_180]
    assert f.buffered_bytes == 0


def test_byte_at_a_time():
    f = StreamFramer()
    out = []
    stream = INVITE + RESPONSE_180 + INVITE
    for i in range(len(stream)):
        out.extend(f.feed(stream[i : i + 1]))
    assert [bytes(m) for m in out] == [INVITE, RESPONSE_180, INVITE]


def test_partial_body_waits_and_trailing_data_kept():
    f = StreamFramer()
    assert f.feed(INVITE[:-2]) == []
    msgs = f.feed(INVITE[-2:] + RESPONSE_180[:10])
    assert len(msgs) == 1 and msgs[0].body == b"v=0\r\n"
    assert f.buffered_bytes == 10


def test_keepalive_ping_answered_and_pong_ignored():
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == []
    assert f.take_pongs() == b"\r\n"
    assert f.take_pongs() == b""
    # A lone CRLF (a pong) before a message is ignored, byte at a time too.
    out = []
    for b in b"\r\n" + INVITE:
        out.extend(f.feed(bytes([b])))
    assert len(out) == 1 and f.take_pongs() == b""
    assert f.feed(b"\r\n\r\n\r\n\r\n") == [] and f.take_pongs() == b"\r\n\r\n"


def test_missing_content_length_is_400_and_poisons():
    f = StreamFramer()
    bad = INVITE.replace(b"Content-Length: 5\r\n", b"")
    with pytest.raises(SipParseError) as info:
        f.feed(bad)
    assert (str(info.value), info.value.status) == ("SIP stream message has no Content-Length", 400)
    with pytest.raises(SipParseError):
        f.feed(RESPONSE_180)


def test_garbage_raises():
    with pytest.raises(SipParseError, match="^SIP request line is malformed$"):
        StreamFramer().feed(b"\x16\x03\x01 hello\r\n\r\n")


def test_oversize_header_and_body():
    f = StreamFramer(Limits(max_message_bytes=200))
    with pytest.raises(SipParseError) as info:
        f.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: " + b"a" * 300)
    assert info.value.status == 513
    f = StreamFramer(Limits(max_body_bytes=4))
    with pytest.raises(SipParseError) as info:
        f.feed(INVITE)
    assert (str(info.value), info.value.status) == ("SIP body is too large", 413)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_chunks_raise_only_value_errors(chunks):
    f = StreamFramer()
    try:
        for c in chunks:
            f.feed(c)
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(INVITE) * 2), max_size=10))
def test_any_split_gives_same_messages(cuts):
    stream = INVITE + RESPONSE_180
    points = sorted({c % len(stream) for c in cuts})
    f = StreamFramer()
    out = []
    prev = 0
    for p in points + [len(stream)]:
        out.extend(f.feed(stream[prev:p]))
        prev = p
    assert [bytes(m) for m in out] == [INVITE, RESPONSE_180]
