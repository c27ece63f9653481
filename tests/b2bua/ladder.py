"""A fake network for ladder tests: real SIP text in and out of the B2BUA core, a fake clock, fake media."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.b2bua import B2bua, B2buaConfig, Peer
from gateway.media.leg import LegMedia
from gateway.sip.message import SipRequest, SipResponse, build_response, parse_message

CALLER = Peer("udp", "192.0.2.10", 5060)
PBX = Peer("udp", "pbx.example.com", 5080)
MEDIA_ADDRESS = "198.51.100.1"


@dataclass
class FakeCallMedia:
    caller_port: int
    agent_port: int
    configured: list[tuple[LegMedia, LegMedia]] = field(default_factory=list)
    closed: bool = False

    def configure(self, caller: LegMedia, agent: LegMedia) -> None:
        self.configured.append((caller, agent))

    def close(self) -> None:
        self.closed = True


class FakeMediaController:
    media_address = MEDIA_ADDRESS

    def __init__(self, free_calls: int = 100):
        self.free_calls = free_calls
        self.opened: dict[str, FakeCallMedia] = {}
        self._port = 30000

    def open_call(self, call_id: str) -> FakeCallMedia:
        if self.free_calls == 0:
            raise OSError("no RTP ports free")
        self.free_calls -= 1
        media = FakeCallMedia(self._port, self._port + 2)
        self._port += 4
        self.opened[call_id] = media
        return media


def sdp(port: int, fmts: str = "0 8 101", te_pt: int = 101, direction: str = "sendrecv", extra: str = "",
        proto: str = "RTP/AVP", host: str = "192.0.2.10") -> bytes:
    return (
        f"v=0\r\no=ua 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} {proto} {fmts}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:{te_pt} telephone-event/8000\r\na=fmtp:{te_pt} 0-16\r\na=ptime:20\r\n{extra}a={direction}\r\n"
    ).encode()


def request(method: str, *, call_id: str = "call-1@192.0.2.10", cseq: int = 1, branch: str = "z9hG4bKc1",
            to_tag: str | None = None, from_tag: str = "caller1", body: bytes = b"", uri: str = "sip:1234@gw.example.com",
            extra: str = "", max_forwards: int = 70, from_user: str = "alice", via_host: str = "192.0.2.10:5060") -> bytes:
    to = "<sip:1234@gw.example.com>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp\r\n" if body and method in ("INVITE", "UPDATE", "ACK") else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: \"Alice\" <sip:{from_user}@192.0.2.10>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{from_user}@192.0.2.10:5060>\r\n"
        f"{ctype}{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Net:
    """The B2BUA between a fake caller and a fake PBX; `now` only moves by timers or `advance`."""

    def __init__(self, config: B2buaConfig | None = None, policy=None, media: FakeMediaController | None = None):
        self.media = media or FakeMediaController()
        self.gw = B2bua(config or B2buaConfig(next_hop="sip:pbx.example.com:5080"), self.media, policy)
        self.now = 0.0
        self.events: list = []

    def send(self, data: bytes, source: Peer = CALLER) -> list[tuple[SipRequest | SipResponse, Peer]]:
        self.gw.receive(data, source, self.now)
        return self.flush()

    def flush(self) -> list[tuple[SipRequest | SipResponse, Peer]]:
        while (e := self.gw.next_event()) is not None:
            self.events.append(e)
        return [(parse_message(d), p) for d, p in self.gw.messages_to_send()]

    def advance(self, to: float) -> list[tuple[SipRequest | SipResponse, Peer]]:
        out = []
        while (t := self.gw.get_timer()) is not None and t <= to:
            self.now = t
            self.gw.handle_timer(t)
            out.extend(self.flush())
        self.now = to
        return out

    def answer(self, req: SipRequest, status: int, *, tag: str = "agent1", body: bytes = b"",
               extra: list[tuple[str, str]] | None = None) -> bytes:
        """The PBX's response to a request the gateway sent it."""
        hdrs = [("Contact", "<sip:1234@pbx.example.com:5080>")] + (extra or [])
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        return bytes(build_response(req, status, to_tag=tag, body=body, extra=hdrs))


def only(msgs, peer: Peer):
    return [m for m, p in msgs if p == peer]


def statuses(msgs, peer: Peer) -> list:
    return [m.status if isinstance(m, SipResponse) else m.method for m in only(msgs, peer)]


def sip_t_body(sdp_body: bytes, boundary: str = "t") -> bytes:
    """An SDP as a SIP-T/SIP-I peer sends it: multipart beside an optional ISUP part (RFC 5621)."""
    b = boundary.encode()
    return (b"--" + b + b"\r\nContent-Type: application/sdp\r\n\r\n" + sdp_body +
            b"\r\n--" + b + b"\r\nContent-Type: application/isup;version=itu-t92+\r\n"
            b"Content-Disposition: signal;handling=optional\r\n\r\n\x06\x00\r\n--" + b + b"--\r\n")


def as_multipart(raw: bytes, boundary: str = "t") -> bytes:
    """A message built with an SDP body, relabelled multipart/mixed (its body from `sip_t_body`)."""
    return raw.replace(b"Content-Type: application/sdp", f"Content-Type: multipart/mixed;boundary={boundary}".encode(), 1)
