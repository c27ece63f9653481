"""RFC 3261 section 12 dialogs."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.message import SipRequest, build_response, parse_message
from tests.sip.fixtures import INVITE


def invite() -> SipRequest:
    raw = INVITE.replace(
        b"Contact:", b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nContact:"
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    return msg


def test_uas_dialog_and_in_dialog_request():
    req = invite()
    d = Dialog.as_uas(req, "gw1", "<sip:gw@198.51.100.1>")
    assert d.id == ("a84b4c76e66710@192.0.2.10", "gw1", "1928301774")
    assert d.remote_target == "sip:alice@192.0.2.10:5060"
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    bye = d.new_request("BYE", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKx")
    again = parse_message(bytes(bye))
    assert isinstance(again, SipRequest)
    assert again.uri == "sip:alice@192.0.2.10:5060"
    assert again.headers.get_all("Route") == d.route_set
    assert again.from_tag == "gw1" and again.to_tag == "1928301774"
    assert again.cseq == (1, "BYE")
    assert d.new_request("INFO", "SIP/2.0/UDP h;branch=z9hG4bKy").cseq == (2, "INFO")


def test_uac_dialog_reverses_record_route_and_acks_with_invite_cseq():
    req = invite()
    resp = build_response(req, 200, to_tag="b7", extra=[
        ("Record-Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
        ("Contact", "<sip:bob@192.0.2.20:5070>"),
    ])
    d = Dialog.as_uac(req, resp)
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert d.remote_target == "sip:bob@192.0.2.20:5070"
    ack = d.new_request("ACK", "SIP/2.0/UDP h;branch=z9hG4bKa", cseq=req.cseq[0])
    assert ack.cseq == (314159, "ACK") and d.local_seq == 314159
    assert d.new_request("BYE", "SIP/2.0/UDP h;branch=z9hG4bKb").cseq == (314160, "BYE")


def test_strict_route_goes_into_request_uri():
    d = Dialog("c", "l", "r", "<sip:a@x>", "<sip:b@y>", "sip:b@192.0.2.9", ["<sip:strict.example.com>"])
    req = d.new_request("BYE", "SIP/2.0/UDP h;branch=z9hG4bKs")
    assert req.uri == "sip:strict.example.com"
    assert req.headers.get_all("Route") == ["<sip:b@192.0.2.9>"]


def test_remote_cseq_must_increase_and_target_refresh():
    req = invite()
    d = Dialog.as_uas(req, "gw1", "")
    assert d.matches(req) is False  # the INVITE has no To tag yet
    reinvite = parse_message(bytes(req).replace(b"CSeq: 314159", b"CSeq: 314160").replace(
        b"sip:alice@192.0.2.10:5060>", b"sip:alice@192.0.2.99:5062>"))
    d.receive_request(reinvite)  # type: ignore[arg-type]
    assert d.remote_target == "sip:alice@192.0.2.99:5062"
    with pytest.raises(DialogError, match="^SIP CSeq is lower than the dialog's$"):
        d.receive_request(req)
