"""Message layer: whole, trailing data, round trip, exact errors, hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.message import (
    Headers,
    Limits,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    check_require,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
)
from tests.sip.fixtures import INVITE, MALFORMED, RESPONSE_180, TORTUOUS


def test_invite_fields():
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:1234@gw.example.com"
    assert msg.request_uri.user == "1234"
    assert msg.call_id == "a84b4c76e66710@192.0.2.10"
    assert msg.cseq == (314159, "INVITE")
    assert msg.from_tag == "1928301774"
    assert msg.to_tag is None
    assert msg.from_addr.display_name == '"Alice"'
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.top_via.params["rport"] is None
    assert msg.top_via.sent_by == ("192.0.2.10", 5060)
    assert msg.max_forwards == 70
    assert msg.content_type == "application/sdp"
    assert msg.body == b"v=0\r\n"


def test_round_trip_identical_bytes():
    for raw in (INVITE, RESPONSE_180):
        assert bytes(parse_message(raw)) == raw


def test_trailing_data_beyond_content_length_is_discarded():
    # RFC 4475 3.1.1.8 (dblreq): a second message in the same datagram is ignored.
    msg = parse_message(INVITE + b"INVITE sip:x@y SIP/2.0\r\n\r\n")
    assert msg.body == b"v=0\r\n"


def test_leading_crlf_ignored_and_bare_lf_accepted():
    head, body = INVITE.split(b"\r\n\r\n", 1)
    msg = parse_message(b"\r\n\r\n" + head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert msg.cseq == (314159, "INVITE")
    assert msg.body == body


def test_tortuous_invite():
    msg = parse_message(TORTUOUS)
    assert isinstance(msg, SipRequest)
    assert msg.to_tag == "1918181833n"
    assert msg.from_tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq == (9, "INVITE")
    vias = msg.vias
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Subject") == ""
    contact = msg.contact
    assert contact is not None and contact.params["q"] == "0.33"
    assert contact.uri.user == "jdrosen"
    # names kept as written
    assert [n for n, _ in msg.headers][:3] == ["TO", "from", "MaX-fOrWaRdS"]


def test_response_fields_and_empty_reason():
    msg = parse_message(RESPONSE_180)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason, msg.to_tag) == (180, "Ringing", "a6c85cf")
    noreason = parse_message(RESPONSE_180.replace(b"180 Ringing", b"100 "))
    assert (noreason.status, noreason.reason) == (100, "")


def test_compact_and_case_insensitive_lookup():
    h = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"), ("VIA", "SIP/2.0/TCP c")])
    assert len(h.get_all("Via")) == 3
    assert h.get("via") == h.get("v")
    assert h.pop_first("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("v")[0] == "SIP/2.0/UDP b;branch=z9hG4bK2"
    h.add("Via", "SIP/2.0/UDP top;branch=z9hG4bKt", first=True)
    assert parse_via(h.get_all("Via")[0]).host == "top"


def test_split_list_respects_quotes_and_angles():
    assert split_list('"a, b" <sip:x@y;p=1,2>, <sip:z@w>') == ['"a, b" <sip:x@y;p=1,2>', "<sip:z@w>"]
    with pytest.raises(SipParseError, match="^SIP header has an unterminated quoted string$"):
        split_list('"abc, d')


def test_content_length_recomputed_and_names_as_written():
    msg = parse_message(INVITE)
    msg.body = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"
    out = bytes(msg)
    assert b"Content-Length: 29\r\n" in out
    assert parse_message(out).body == msg.body
    msg.headers.remove("Content-Length")
    msg.headers.add("l", "999")
    assert b"l: 29\r\n" in bytes(msg)


def test_uri_parsing():
    u = parse_uri("sips:agent7:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "agent7", "pw", "[2001:db8::1]", 5061)
    assert u.transport == "tls"
    assert u.params == {"transport": "tcp", "lr": None}
    assert parse_uri("sip:pbx.example.com;transport=TCP").transport == "tcp"
    assert parse_uri("sip:pbx.example.com").transport == "udp"
    assert str(parse_uri("sip:1000@10.0.0.1:5080;transport=udp")) == "sip:1000@10.0.0.1:5080;transport=udp"
    tel = parse_uri("tel:+1-201-555-0123")
    assert not tel.is_sip and str(tel) == "tel:+1-201-555-0123"
    for bad, msg in [
        ("nocolon", "SIP URI has no scheme"),
        ("sip:a@b c", "SIP URI contains whitespace or brackets"),
        ("sip:a@bad_host!", "SIP URI has an invalid host"),
        ("sip:a@host:99999", "SIP URI has an invalid port"),
        ("sip:@host", "SIP URI has an empty user part"),
    ]:
        with pytest.raises(SipParseError, match=f"^{msg}$"):
            parse_uri(bad)


def test_name_addr_forms():
    a = parse_name_addr("caller<sip:caller@example.com>;tag=323")  # RFC 4475 lwsdisp
    assert (a.display_name, a.tag, a.uri.user) == ("caller", "323", "caller")
    b = parse_name_addr("sip:bob@example.com;tag=9")  # addr-spec: ;tag is a header param
    assert b.tag == "9" and b.uri.params == {}
    assert str(parse_name_addr('"Bob" <sip:bob@b.com>;tag=1')) == '"Bob" <sip:bob@b.com>;tag=1'


def test_wide_range_of_method_characters():
    # RFC 4475 3.1.1.2 (intmeth): any token is a method.
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    raw = (
        f"{method} sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n"
    )
    raw = raw.replace("?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)", "")
    text = raw.encode() + INVITE.split(b"\r\n", 1)[1].replace(b"314159 INVITE", f"1 {method}".encode())
    msg = parse_message(text)
    assert msg.method == method and msg.cseq == (1, method)


@pytest.mark.parametrize("name,raw,message,status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_exact_error(name, raw, message, status):
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    assert str(info.value) == message
    assert info.value.status == status


def test_limits():
    small = Limits(max_message_bytes=100)
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE, small)
    assert (str(info.value), info.value.status) == ("SIP message is too large", 513)
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE, Limits(max_body_bytes=2))
    assert info.value.status == 413
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE, Limits(max_headers=3))
    assert (str(info.value), info.value.status) == ("SIP message has too many headers", 513)
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE, Limits(max_header_line_bytes=20))
    assert info.value.status == 513


def test_require_unsupported_is_420():
    msg = parse_message(INVITE.replace(b"Content-Type", b"Require: 100rel, foo\r\nContent-Type"))
    check_require(msg, ["100rel", "FOO", "timer"])  # type: ignore[arg-type]
    with pytest.raises(SipParseError) as info:
        check_require(msg, ["timer"])  # type: ignore[arg-type]
    assert info.value.status == 420 and info.value.unsupported == ("100rel", "foo")


def test_build_response_copies_and_tags():
    req = parse_message(INVITE)
    assert isinstance(req, SipRequest)
    resp = build_response(req, 486, to_tag="xyz")
    assert (resp.status, resp.reason, resp.to_tag) == (486, "Busy Here", "xyz")
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.headers.get("Contact") is None
    again = parse_message(bytes(resp))
    assert isinstance(again, SipResponse) and again.top_via.branch == "z9hG4bK776asdhds"
    assert build_response(req, 100, to_tag="xyz").to_tag is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_value_errors(data):
    try:
        parse_message(data)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(INVITE)), st.binary(min_size=1, max_size=8))
def test_mutated_invite_raises_only_value_errors(pos, junk):
    try:
        msg = parse_message(INVITE[:pos] + junk + INVITE[pos:])
        bytes(msg)
    except ValueError:
        pass


def test_header_end_is_the_first_blank_line_whatever_the_line_ends():
    """RFC 3261 7.5: the first empty line ends the headers, even a bare-LF one just before a CRLF CRLF."""
    head, body = INVITE.split(b"\r\n\r\n", 1)
    msg = parse_message(head.replace(b"Content-Length: 5", b"Content-Length: 4") + b"\n\r\n\r\nab")
    assert msg.body == b"\r\nab"
    msg = parse_message(head + b"\r\n\n" + body)
    assert msg.body == body
