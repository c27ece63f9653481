"""SIP text fixtures shared by the sip tests; modelled on RFC 4475 categories, written here."""

from __future__ import annotations


def crlf(text: str) -> bytes:
    """Turn a readable fixture ('\\n' line ends) into wire bytes with CRLF."""
    return text.replace("\n", "\r\n").encode()


INVITE = crlf(
    "INVITE sip:1234@gw.example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\n"
    "Max-Forwards: 70\n"
    "To: <sip:1234@gw.example.com>\n"
    'From: "Alice" <sip:alice@192.0.2.10>;tag=1928301774\n'
    "Call-ID: a84b4c76e66710@192.0.2.10\n"
    "CSeq: 314159 INVITE\n"
    "Contact: <sip:alice@192.0.2.10:5060>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: 5\n"
    "\n"
    "v=0\n"
)

# RFC 4475 3.1.1.1 style: folding, odd case, compact forms, multi-value Via split over lines.
TORTUOUS = crlf(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
    "TO :\n"
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\n'
    "  ;\n"
    "  tag = 98asjd8\n"
    "MaX-fOrWaRdS: 0068\n"
    "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
    "Content-Length   : 0\n"
    "cseq: 0009\n"
    "  INVITE\n"
    "Via  : SIP  /   2.0\n"
    " /UDP\n"
    "    192.0.2.2;branch=390skdjuw\n"
    "s :\n"
    "NewFangledHeader:   newfangled value\n"
    " continued newfangled value\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
    "Content-Type: application/sdp\n"
    "Route:\n"
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
    "  branch  =   z9hG4bK9ikj8  ,\n"
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
    " z9hG4bK30239\n"
    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\n"
    "      newvalue ;\n"
    "  secondparam ; q = 0.33\n"
    "\n"
)

RESPONSE_180 = crlf(
    "SIP/2.0 180 Ringing\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;received=192.0.2.10\n"
    "To: <sip:1234@gw.example.com>;tag=a6c85cf\n"
    'From: "Alice" <sip:alice@192.0.2.10>;tag=1928301774\n'
    "Call-ID: a84b4c76e66710@192.0.2.10\n"
    "CSeq: 314159 INVITE\n"
    "Content-Length: 0\n"
    "\n"
)

_BASE = (
    "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKbad\n"
    "Max-Forwards: 70\n"
    "To: <sip:bob@example.com>\n"
    "From: <sip:alice@example.com>;tag=1\n"
    "Call-ID: bad@192.0.2.10\n"
)

# (name, bytes, exact message, status)
MALFORMED: list[tuple[str, bytes, str, int]] = [
    ("empty", b"", "SIP message is empty", 400),
    ("crlf only", b"\r\n\r\n", "SIP message is empty", 400),
    ("no end of headers", b"OPTIONS sip:a@b SIP/2.0\r\nVia: x", "SIP message has no end of headers", 400),
    (
        "version 7 (RFC 4475 3.1.2.x badvers)",
        crlf("OPTIONS sip:bob@example.com SIP/7.0\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP version is not supported",
        505,
    ),
    (
        "multiple spaces in request line (lwsstart)",
        crlf("OPTIONS  sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP request line is malformed",
        400,
    ),
    (
        "trailing space in request line (trws)",
        crlf("OPTIONS sip:bob@example.com SIP/2.0 \n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP request line is malformed",
        400,
    ),
    (
        "LWS inside Request-URI (lwsruri)",
        crlf("OPTIONS sip:bob@example.com; lr SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP request line is malformed",
        400,
    ),
    (
        "<> around Request-URI (ltgtruri)",
        crlf("OPTIONS <sip:bob@example.com> SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP URI contains whitespace or brackets",
        400,
    ),
    (
        "CSeq method mismatch (mismatch01)",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 INVITE\n\n"),
        "SIP CSeq method does not match the request",
        400,
    ),
    (
        "CSeq too large (scalar02)",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 36893488147419103232 OPTIONS\n\n"),
        "SIP CSeq header is invalid",
        400,
    ),
    (
        "Max-Forwards 300 (scalar02)",
        crlf(
            "OPTIONS sip:bob@example.com SIP/2.0\n"
            + _BASE.replace("Max-Forwards: 70", "Max-Forwards: 300")
            + "CSeq: 1 OPTIONS\n\n"
        ),
        "SIP Max-Forwards is invalid",
        400,
    ),
    (
        "negative Content-Length (ncl)",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\nContent-Length: -999\n\n"),
        "SIP Content-Length is invalid",
        400,
    ),
    (
        "Content-Length larger than body (clerr)",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\nContent-Length: 9999\n\nv=0\n"),
        "SIP body is shorter than Content-Length",
        400,
    ),
    (
        "unterminated quoted display name (quotbal)",
        crlf(
            "OPTIONS sip:bob@example.com SIP/2.0\n"
            + _BASE.replace("From: <sip:alice@example.com>", 'From: "Alice <sip:alice@example.com>')
            + "CSeq: 1 OPTIONS\n\n"
        ),
        "SIP header has an unterminated quoted string",
        400,
    ),
    (
        "huge status code (bigcode)",
        crlf("SIP/2.0 4294967301 better not break the receiver\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP status code is invalid",
        400,
    ),
    (
        "no Call-ID",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE.replace("Call-ID: bad@192.0.2.10\n", "") + "CSeq: 1 OPTIONS\n\n"),
        "SIP message has no Call-ID",
        400,
    ),
    (
        "no Via",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE.replace("Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKbad\n", "") + "CSeq: 1 OPTIONS\n\n"),
        "SIP message has no Via",
        400,
    ),
    (
        "extraneous Via separators (badinv01)",
        crlf(
            "OPTIONS sip:bob@example.com SIP/2.0\n"
            + _BASE.replace("branch=z9hG4bKbad", "branch=z9hG4bKbad;;,;,,")
            + "CSeq: 1 OPTIONS\n\n"
        ),
        "SIP parameter list is malformed",
        400,
    ),
    (
        "header without colon",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\nNoColonHere\n\n"),
        "SIP header is malformed",
        400,
    ),
    (
        "two Call-IDs",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "i: other@x\nCSeq: 1 OPTIONS\n\n"),
        "SIP message has more than one Call-ID",
        400,
    ),
    (
        "escaped headers in Request-URI (escruri)",
        crlf("OPTIONS sip:bob@example.com?Route=%3Csip:example.com%3E SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\n\n"),
        "SIP Request-URI has headers",
        400,
    ),
    (
        "invalid UTF-8 in header",
        crlf("OPTIONS sip:bob@example.com SIP/2.0\n" + _BASE + "CSeq: 1 OPTIONS\n").replace(b"Max", b"\xff\xfeMax") + b"\r\n",
        "SIP header is not valid UTF-8",
        400,
    ),
]
