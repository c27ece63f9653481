"""Seeded generators of hostile input: SIP messages (whole and mutated), SDP, RTP/RTCP, HTTP requests.

Everything comes from one `random.Random(seed)`, so a failing run is replayed by its
seed (printed by the tests). Templates are valid messages; each mutation breaks one
thing the way real garbage does (RFC 3261 7.3 grammar edges, RFC 4566 SDP fields,
RFC 3550 header fields).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

CRLF = "\r\n"
MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length")
COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Content-Length": "l", "Content-Type": "c",
           "Contact": "m", "Supported": "k", "Subject": "s"}


@dataclass
class Dialog:
    """In-dialog identifiers of the live call, as the caller sees them."""

    call_id: str
    from_tag: str
    to_tag: str
    target: str
    cseq: int


def sdp(rng: random.Random, port: int = 40000) -> str:
    return (f"v=0\r\no=- {rng.randrange(1 << 31)} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n")


SDP_GARBAGE = [
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 99999999 RTP/AVP 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio -1 RTP/AVP 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/AVP"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000/99999 RTP/AVP 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/SAVP 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 0 RTP/AVP 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=video 40000 RTP/AVP 31"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/AVP 300 -5 abc"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/AVP 0\r\nm=audio 40002 RTP/AVP 8\r\nm=audio 1 X 1"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/AVP 96 97\r\na=rtpmap:96 opus/48000/2"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 UDP/TLS/RTP/SAVPF 0"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/SAVP 0\r\na=crypto:x AES_CM_128_HMAC_SHA1_80 inline:"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/SAVP 0\r\na=crypto:1 NOPE inline:AAAA|2^99|1:999"),
    ("m=audio 40000 RTP/AVP 0 8 101", "m=audio 40000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_32"),
    ("c=IN IP4 127.0.0.1\r\n", ""),
    ("c=IN IP4 127.0.0.1", "c=IN IP6 ::1"),
    ("c=IN IP4 127.0.0.1", "c=IN IP4 999.1.1.1"),
    ("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.0.1/127/3"),
    ("c=IN IP4 127.0.0.1", "c=IN IP4"),
    ("c=IN IP4 127.0.0.1", "c=IN IP6 [fe80::1%eth0]"),
    ("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0"),
    ("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/0"),
    ("a=rtpmap:0 PCMU/8000", "a=rtpmap:abc PCMU/8000"),
    ("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"),
    ("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 /////"),
    ("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/99999999999999999999999"),
    ("a=rtpmap:101 telephone-event/8000", "a=rtpmap:101 telephone-event/-8000"),
    ("a=fmtp:101 0-15", "a=fmtp:101 0-99999999999,x-,-"),
    ("a=sendrecv", "a=sendrecv\r\na=sendonly\r\na=inactive"),
    ("a=sendrecv", "a=ptime:0\r\na=maxptime:-1"),
    ("v=0", "v=1"),
    ("v=0\r\n", ""),
    ("t=0 0", "t=x y"),
    ("s=-", "s=" + "\xff" * 3),
]


class SipTemplates:
    """Valid requests and responses to the gateway; in-dialog ones carry the live call's identifiers."""

    def __init__(self, rng: random.Random, gateway_port: int, local_port: int, transport: str = "UDP") -> None:
        self.rng = rng
        self.gw = gateway_port
        self.local = local_port
        self.transport = transport
        self.last_cseq = 0
        """In-dialog CSeqs only go up (RFC 3261 12.2.2: a lower one is refused before anything else)."""

    def _branch(self) -> str:
        return "z9hG4bK" + "%012x" % self.rng.getrandbits(48)

    def _head(self, method: str, uri: str, call_id: str, from_tag: str, to: str, cseq: int,
              extra: list[tuple[str, str]] = (), body: str = "", ctype: str = "application/sdp") -> list:
        items = [("Via", f"SIP/2.0/{self.transport} 127.0.0.1:{self.local};branch={self._branch()};rport"),
                 ("Max-Forwards", "70"),
                 ("From", f"<sip:fuzz@127.0.0.1>;tag={from_tag}"),
                 ("To", to),
                 ("Call-ID", call_id),
                 ("CSeq", f"{cseq} {method}"),
                 ("Contact", f"<sip:fuzz@127.0.0.1:{self.local}>"),
                 *extra]
        if body:
            items.append(("Content-Type", ctype))
        items.append(("Content-Length", str(len(body.encode("utf-8", "surrogateescape")))))
        return [f"{method} {uri} SIP/2.0", items, body]

    def out_of_dialog(self, method: str) -> list:
        """A request that opens nothing the fuzzer cares about (OPTIONS, INVITE with SDP, INFO, ...)."""
        call_id = "%016x@fuzz" % self.rng.getrandbits(64)
        tag = "%08x" % self.rng.getrandbits(32)
        uri = f"sip:agent@127.0.0.1:{self.gw}"
        to = f"<sip:agent@127.0.0.1:{self.gw}>"
        body = sdp(self.rng) if method == "INVITE" else ""
        if method == "INFO":
            return self._head(method, uri, call_id, tag, to, 1, body="Signal=5\r\nDuration=160\r\n",
                              ctype="application/dtmf-relay")
        return self._head(method, uri, call_id, tag, to, 1, body=body)

    def in_dialog(self, method: str, dialog: Dialog) -> list:
        """A request inside the live call's caller-leg dialog (re-INVITE, INFO, BYE, ACK, CANCEL, OPTIONS)."""
        to = f"<sip:agent@127.0.0.1:{self.gw}>;tag={dialog.to_tag}"
        body, ctype = "", "application/sdp"
        if method == "INVITE":
            body = sdp(self.rng)
        elif method == "INFO":
            body, ctype = "Signal=5\r\nDuration=160\r\n", "application/dtmf-relay"
        self.last_cseq = max(self.last_cseq, dialog.cseq) + self.rng.randrange(1, 3)
        head = self._head(method, dialog.target, dialog.call_id, dialog.from_tag, to, self.last_cseq,
                          body=body, ctype=ctype)
        head[1][2] = ("From", f"<sip:caller@127.0.0.1>;tag={dialog.from_tag}")
        return head

    def response(self, dialog: Dialog | None) -> list:
        """A response for a transaction the gateway never started (or the live call's, with a made-up branch)."""
        status = self.rng.choice([100, 180, 183, 200, 202, 302, 401, 404, 481, 487, 500, 603])
        method = self.rng.choice(["INVITE", "BYE", "OPTIONS", "INFO", "CANCEL"])
        call_id = dialog.call_id if dialog and self.rng.random() < 0.5 else "%016x@fuzz" % self.rng.getrandbits(64)
        items = [("Via", f"SIP/2.0/{self.transport} 127.0.0.1:{self.gw};branch={self._branch()}"),
                 ("From", f"<sip:a@127.0.0.1>;tag={dialog.from_tag if dialog else 'x1'}"),
                 ("To", f"<sip:b@127.0.0.1>;tag={dialog.to_tag if dialog else 'y2'}"),
                 ("Call-ID", call_id), ("CSeq", f"{self.rng.randrange(1, 99)} {method}")]
        body = sdp(self.rng) if status == 200 and method == "INVITE" else ""
        if body:
            items.append(("Content-Type", "application/sdp"))
        items.append(("Content-Length", str(len(body))))
        return [f"SIP/2.0 {status} Whatever", items, body]


def render(start: str, items: list[tuple[str, str]], body: str, eol: str = CRLF) -> bytes:
    text = start + eol + "".join(f"{n}: {v}{eol}" for n, v in items) + eol + body
    return text.encode("utf-8", "surrogateescape")


WEIRD_URIS = ["sip:", "sip:@", "sip:[::1]", "sip:agent@[::1]:5060", "sip:agent@[fe80::1%25lo]:5060",
              "sip:agent@[::1", "tel:+15551234567", "sips:agent@127.0.0.1:0", "sip:agent@127.0.0.1:99999",
              "sip:agent@127.0.0.1;transport=", "sip:%00%ff@127.0.0.1", "<sip:agent@127.0.0.1>", "*",
              "sip:" + "a" * 3000 + "@127.0.0.1", "sip:agent@127.0.0.1;" + ";".join(["x"] * 500),
              "sip:agent@127.0.0.1?Route=%3Csip:evil%3E", "http://127.0.0.1/", "sip:agent@-bad-.host",
              "SIP:AGENT@127.0.0.1", "sip:agent@127.0.0.1:5060:5060", "sip:agent@ 127.0.0.1"]
WEIRD_VALUES = {
    "Via": ["SIP/2.0/UDP 127.0.0.1:5060", "SIP/2.0/XYZ 127.0.0.1;branch=z9hG4bKx", "SIP/2.0/UDP [::1]:5060;branch=z9",
            "SIP/2.0/UDP [::1;branch=z9hG4bKa", "SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bKa", "SIP/2.0/UDP ;branch=",
            "SIP/2.0/UDP 127.0.0.1;rport=abc;branch=z9hG4bKa;received=::", "SIP/3.0/UDP h;branch=z9hG4bKb", "",
            "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa, , ,", "SIP/2.0/UDP 127.0.0.1;branch=" + "b" * 5000,
            "SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKc"],
    "CSeq": ["abc INVITE", "1 BYE", "4294967296 INVITE", "-1 INVITE", "", "1", "99999999999999999999999 INVITE",
             "1 INVITE extra", "0 INVITE", " 1  INVITE "],
    "From": ["<sip:@>", "<<<", '"unterminated <sip:a@b>;tag=1', "sip:a@b;tag=1;tag=2", "<sip:a@b>", "", "<>;tag=",
             "<sip:a@[::1]>;tag=1", "<tel:123>;tag=9"],
    "To": ["<sip:@>", ">>>", "<sip:a@b>;tag=", "<sip:a@b>;tag=1;tag=2", "", '"\\"<sip:x@y>'],
    "Call-ID": ["", " ", "a" * 10000, "\xc3\x28", "x@y@z", "\x00"],
    "Max-Forwards": ["0", "-1", "abc", "999999999999999999", ""],
    "Content-Length": ["-1", "abc", "99999999999999999999", "", "1 2", "0x10", "+5"],
}


class Mutator:
    """One seeded mutation of a template; `name` says which (for failure reports)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def mutate(self, start: str, items: list[tuple[str, str]], body: str) -> tuple[str, bytes]:
        r = self.rng
        items = list(items)
        kind = r.choice(["bitflip", "truncate", "duplicate", "remove", "huge", "many", "length", "weird", "uri",
                         "nonutf8", "fold", "compact", "lf", "sdp", "method", "insert", "clean", "sdp", "weird"])
        if kind == "bitflip":
            data = bytearray(render(start, items, body))
            for _ in range(r.randrange(1, 8)):
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
            return kind, bytes(data)
        if kind == "truncate":
            data = render(start, items, body)
            cuts = [i + 2 for i in range(len(data)) if data[i:i + 2] == b"\r\n"] + [r.randrange(len(data))]
            return kind, data[:r.choice(cuts)]
        if kind == "duplicate":
            name = r.choice(MANDATORY)
            pool = WEIRD_VALUES.get(name, ["x"]) + [v for n, v in items if n == name]
            items.insert(r.randrange(len(items) + 1), (name, r.choice(pool)))
        elif kind == "remove":
            name = r.choice(MANDATORY)
            items = [(n, v) for n, v in items if n != name]
        elif kind == "huge":
            items.insert(r.randrange(len(items) + 1), ("X-Huge", "h" * r.choice([1000, 4000, 9000, 70000])))
        elif kind == "many":
            items[1:1] = [(f"X-{i}", "v") for i in range(r.choice([200, 1000, 5000]))]
        elif kind == "length":
            n = len(body.encode("utf-8", "surrogateescape"))
            value = r.choice([str(n + r.randrange(1, 500)), str(max(0, n - r.randrange(1, 50))), "0",
                              *WEIRD_VALUES["Content-Length"]])
            items = [(nm, value if nm == "Content-Length" else v) for nm, v in items]
        elif kind == "weird":
            name = r.choice(list(WEIRD_VALUES))
            value = r.choice(WEIRD_VALUES[name])
            items = [(nm, value if nm == name else v) for nm, v in items]
        elif kind == "uri" and not start.startswith("SIP/"):
            method, _, rest = start.partition(" ")
            start = f"{method} {r.choice(WEIRD_URIS)} {rest.rpartition(' ')[2]}"
        elif kind == "nonutf8":
            data = bytearray(render(start, items, body))
            for _ in range(r.randrange(1, 4)):
                data[r.randrange(len(data)):0] = bytes([r.randrange(0x80, 0x100)]) * r.randrange(1, 3)
            return kind, bytes(data)
        elif kind == "fold":
            i = r.randrange(len(items))
            n, v = items[i]
            cut = r.randrange(len(v) + 1)
            items[i] = (n, v[:cut] + CRLF + r.choice([" ", "\t", "  "]) + v[cut:])
        elif kind == "compact":
            items = [(COMPACT.get(n, n) if r.random() < 0.7 else n.lower(), v) for n, v in items]
        elif kind == "lf":
            return kind, render(start, items, body, eol="\n")
        elif kind == "sdp" and body.startswith("v=0"):
            old, new = r.choice(SDP_GARBAGE)
            body = body.replace(old, new, 1)
            if r.random() < 0.3:
                body = body * r.randrange(2, 30)
            items = [(n, str(len(body.encode("utf-8", "surrogateescape"))) if n == "Content-Length" else v)
                     for n, v in items]
        elif kind == "method" and not start.startswith("SIP/"):
            method, _, rest = start.partition(" ")
            start = r.choice([method.lower(), "FOO", "X" * 300, "INV ITE", "", "ACK", "BYE", "PRACK",
                              "SUBSCRIBE"]) + " " + rest
        elif kind == "insert":
            data = bytearray(render(start, items, body))
            i = r.randrange(len(data) + 1)
            data[i:i] = r.choice([b"\r\n", b"\r\n\r\n", b":", b";", b"\x00", b" ", b"<", b"\t", b"%"]) * r.randrange(1, 4)
            return kind, bytes(data)
        return kind, render(start, items, body)


# ---- RTP / RTCP

def rtp_garbage(rng: random.Random, ssrc: int, seq: int, ts: int) -> tuple[str, bytes]:
    """One hostile RTP or RTCP datagram; the name says what is wrong with it."""
    kind = rng.choice(["random", "short", "version", "pt", "ssrc", "padding", "extension", "csrc", "oversized",
                       "rtcp", "rtcp_len", "rtcp_short", "marker_burst", "empty", "te"])
    payload = bytes(rng.getrandbits(8) for _ in range(160))
    if kind == "random":
        return kind, bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400)))
    if kind == "short":
        return kind, bytes([0x80, 0]) + bytes(rng.randrange(10))
    if kind == "empty":
        return kind, b""
    if kind == "version":
        return kind, struct.pack("!BBHII", rng.choice([0x00, 0x40, 0xC0]), 0, seq, ts, ssrc) + payload
    if kind == "pt":
        return kind, struct.pack("!BBHII", 0x80, rng.choice([3, 9, 18, 34, 72, 77, 96, 100, 127]), seq, ts, ssrc) + payload
    if kind == "ssrc":
        return kind, struct.pack("!BBHII", 0x80, rng.choice([13, 19, 126]), seq, ts, rng.getrandbits(32)) + payload
    if kind == "padding":
        pad = rng.choice([0, 1, 161, 255, 200])
        return kind, struct.pack("!BBHII", 0xA0, 0, seq, ts, ssrc) + payload[:rng.randrange(0, 160)] + bytes([pad])
    if kind == "extension":
        words = rng.choice([0, 1, 40, 0xFFFF])
        return kind, struct.pack("!BBHIIHH", 0x90, 0, seq, ts, ssrc, 0xBEDE, words) + payload[:rng.randrange(0, 50)]
    if kind == "csrc":
        cc = rng.randrange(1, 16)
        return kind, struct.pack("!BBHII", 0x80 | cc, 0, seq, ts, ssrc) + payload[:rng.randrange(0, 4 * cc + 4)]
    if kind == "oversized":
        return kind, struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + b"\x55" * rng.choice([1500, 9000, 65000])
    if kind == "te":
        event = bytes([rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(256)])
        return kind, struct.pack("!BBHII", 0x80, 101, seq, ts, ssrc) + event[:rng.randrange(0, 5)]
    if kind == "marker_burst":
        return kind, struct.pack("!BBHII", 0x80, 0x80 | rng.choice([3, 13]), rng.randrange(1 << 16),
                                 rng.getrandbits(32), ssrc) + payload
    if kind == "rtcp":
        pt = rng.choice([200, 201, 202, 203, 204, 205, 206, 207])
        body = bytes(rng.getrandbits(8) for _ in range(4 * rng.randrange(0, 20)))
        return kind, struct.pack("!BBH", 0x80 | rng.randrange(32), pt, len(body) // 4 + 1) + struct.pack("!I", ssrc) + body
    if kind == "rtcp_len":
        return kind, struct.pack("!BBHI", 0x81, 200, rng.choice([0, 0xFFFF, 100]), ssrc) + bytes(20)
    return kind, struct.pack("!BB", 0x80, 200) + bytes(rng.randrange(3))
