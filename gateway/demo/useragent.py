"""A minimal SIP user agent for the demo's caller and agent endpoints. Sans-IO.

Driven by: `receive(data, source, now)` for every datagram, `invite`/`bye` from
the story, and `handle_timer(now)` when `get_timer()` is due. Output:
`messages_to_send()` as (bytes, Peer) and `next_event()`. Transactions
(retransmissions, timers) come from gateway.sip.transaction, dialogs from
gateway.sip.dialog, SDP offer/answer from gateway.sip.sdp. One call at a time:
a second INVITE gets 486. Safe state: no call; anything malformed is dropped.
It speaks UDP only and offers PCMU plus telephone-event, which is all the demo needs.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from enum import Enum

from gateway.media.leg import LegMedia
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    build_response,
    new_branch,
    parse_message,
    parse_uri,
)
from gateway.sip.sdp import (
    LocalOffer,
    SdpParseError,
    build_answer,
    build_offer,
    leg_from_answer,
    parse_sdp,
    remote_audio,
)
from gateway.sip.transaction import (
    Peer,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTimedOut,
    TxKey,
)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
TELEPHONE_EVENT_PT = 101


class CallPhase(Enum):
    IDLE = "idle"
    CALLING = "calling"
    ESTABLISHED = "established"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(frozen=True)
class CallEstablished:
    """The call is up (the caller got a 2xx and ACKed it, or the agent answered)."""

    sip_call_id: str
    media: LegMedia
    """Where to send RTP and which payload types the peer uses."""


@dataclass(frozen=True)
class CallFailed:
    """The INVITE got a final error response or timed out."""

    status: int
    """SIP status, or 408 when no final response came."""
    reason: str


@dataclass(frozen=True)
class CallEnded:
    """The call is over; `by_peer` tells who sent the BYE."""

    by_peer: bool


UaEvent = CallEstablished | CallFailed | CallEnded


class UserAgent:
    """One UDP SIP user agent with at most one call."""

    def __init__(self, *, user: str, host: str, sip_port: int, rtp_port: int) -> None:
        self.user = user
        self.host = host
        self.sip_port = sip_port
        self.rtp_port = rtp_port
        self.phase = CallPhase.IDLE
        self.dialog: Dialog | None = None
        self.peer: Peer | None = None
        self.media: LegMedia | None = None
        self._tx = TransactionLayer()
        self._events: deque[UaEvent] = deque()
        self._out: list[tuple[bytes, Peer]] = []
        self._invite: SipRequest | None = None
        self._invite_key: TxKey | None = None
        self._offer: LocalOffer | None = None
        self._ack: bytes | None = None
        self._bye_key: TxKey | None = None
        self._session_id = secrets.randbelow(2**31)
        self._session_version = 1
        self.dropped = 0
        """Datagrams that did not parse or fit no transaction (counted, never raised)."""

    # ------------------------------------------------------------ draining

    def messages_to_send(self) -> list[tuple[bytes, Peer]]:
        out = self._tx.messages_to_send() + self._out
        self._out = []
        return out

    def next_event(self) -> UaEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self._tx.get_timer()

    def handle_timer(self, now: float) -> None:
        self._tx.handle_timer(now)
        self._drain(now)

    # ------------------------------------------------------------ commands

    def invite(self, target: str, dest: Peer, now: float) -> None:
        """Call `target` (a SIP URI) through `dest`, offering PCMU and telephone-event."""
        if self.phase is not CallPhase.IDLE:
            raise RuntimeError("user agent already has a call")
        sd, offer = build_offer(address=self.host, port=self.rtp_port, codecs=["PCMU"],
                                telephone_event_pt=TELEPHONE_EVENT_PT, session_id=self._session_id, version=1)
        h = Headers()
        h.add("Via", self._via())
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.user}@{self.host}>;tag={secrets.token_hex(6)}")
        h.add("To", f"<{target}>")
        h.add("Call-ID", f"{secrets.token_hex(10)}@{self.host}")
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact())
        h.add("Allow", ALLOW)
        h.add("Content-Type", "application/sdp")
        self._invite = SipRequest("INVITE", target, h, bytes(sd))
        self._offer = offer
        self.peer = dest
        self._invite_key = self._tx.send_request(self._invite, dest, now)
        self.phase = CallPhase.CALLING

    def bye(self, now: float) -> None:
        """Hang up an established call (RFC 3261 15.1.1)."""
        if self.phase is not CallPhase.ESTABLISHED or self.dialog is None or self.peer is None:
            return
        self._bye_key = self._tx.send_request(self.dialog.new_request("BYE", self._via()), self.peer, now)
        self.phase = CallPhase.ENDING

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        try:
            msg = parse_message(data)
            self._tx.receive(msg, source, now)
        except ValueError:
            self.dropped += 1
            return
        self._drain(now)

    def _drain(self, now: float) -> None:
        while (ev := self._tx.next_event()) is not None:
            try:
                if isinstance(ev, RequestReceived):
                    self._on_request(ev, now)
                elif isinstance(ev, ResponseReceived):
                    self._on_response(ev)
                elif isinstance(ev, TransactionTimedOut):
                    self._on_timeout(ev)
            except (SipParseError, SdpParseError, DialogError):
                self.dropped += 1

    def _on_request(self, ev: RequestReceived, now: float) -> None:
        req, key = ev.request, ev.key
        if req.method == "ACK":
            if self._invite_key is not None and self.dialog is not None and self.dialog.matches(req):
                self._tx.confirm(self._invite_key)  # RFC 3261 13.3.1.4: stop retransmitting the 2xx
            return
        assert key is not None
        if req.method == "INVITE" and req.to_tag is None:
            self._on_invite(req, key, ev.source, now)
        elif req.method == "INVITE":
            self._on_reinvite(req, key, now)
        elif req.method == "BYE":
            if self.dialog is None or not self.dialog.matches(req):
                self._tx.send_response(key, build_response(req, 481), now)
                return
            self._tx.send_response(key, build_response(req, 200), now)
            self._end(by_peer=True)
        elif req.method == "OPTIONS":
            self._tx.send_response(key, build_response(req, 200, extra=[("Allow", ALLOW)]), now)
        elif req.method == "CANCEL":
            self._tx.send_response(key, build_response(req, 481), now)
        else:
            self._tx.send_response(key, build_response(req, 405, extra=[("Allow", ALLOW)]), now)

    def _on_invite(self, req: SipRequest, key: TxKey, source: Peer, now: float) -> None:
        """Answer at once (the agent endpoint is an auto-answering softphone)."""
        if self.phase is not CallPhase.IDLE:
            self._tx.send_response(key, build_response(req, 486, to_tag=secrets.token_hex(6)), now)
            return
        tag = secrets.token_hex(6)
        try:
            offer = remote_audio(parse_sdp(req.body))
            sd, leg = build_answer(offer, address=self.host, port=self.rtp_port,
                                   session_id=self._session_id, version=1, allowed_codecs=("PCMU", "PCMA"))
        except SdpParseError:
            self._tx.send_response(key, build_response(req, 488, to_tag=tag), now)
            return
        extra = [("Contact", self._contact()), ("Allow", ALLOW), ("Content-Type", "application/sdp")]
        self._tx.send_response(key, build_response(req, 200, to_tag=tag, body=bytes(sd), extra=extra), now)
        self.dialog = Dialog.as_uas(req, tag, self._contact())
        self.peer = source  # RFC 3581: answer where it came from; the gateway signals symmetrically
        self.media = leg
        self._invite_key = key
        self.phase = CallPhase.ESTABLISHED
        self._events.append(CallEstablished(req.call_id, leg))

    def _on_reinvite(self, req: SipRequest, key: TxKey, now: float) -> None:
        """Session refresh or hold: answer with our media unchanged (RFC 3264 8)."""
        if self.dialog is None or not self.dialog.matches(req):
            self._tx.send_response(key, build_response(req, 481), now)
            return
        self.dialog.receive_request(req)
        self._session_version += 1
        body = b""
        if req.body:
            sd, _ = build_answer(remote_audio(parse_sdp(req.body)), address=self.host, port=self.rtp_port,
                                 session_id=self._session_id, version=self._session_version)
            body = bytes(sd)
        extra = [("Contact", self._contact())] + ([("Content-Type", "application/sdp")] if body else [])
        self._tx.send_response(key, build_response(req, 200, body=body, extra=extra), now)

    def _on_response(self, ev: ResponseReceived) -> None:
        resp = ev.response
        if ev.key == self._invite_key and self._invite is not None:
            if resp.status < 200:
                return
            if resp.status >= 300:
                self.phase = CallPhase.ENDED
                self._events.append(CallFailed(resp.status, resp.reason))
                return
            if ev.retransmission or self._ack is not None:
                if self._ack is not None and self.peer is not None:
                    self._out.append((self._ack, self.peer))  # RFC 3261 13.2.2.4: ACK every 2xx
                return
            self.dialog = Dialog.as_uac(self._invite, resp)
            self.dialog.local_contact = self._contact()
            ack = self.dialog.new_request("ACK", self._via(), cseq=self._invite.cseq[0])
            self._ack = bytes(ack)
            assert self.peer is not None
            self._out.append((self._ack, self.peer))
            assert self._offer is not None
            self.media = leg_from_answer(self._offer, remote_audio(parse_sdp(resp.body)))
            self.phase = CallPhase.ESTABLISHED
            self._events.append(CallEstablished(self._invite.call_id, self.media))
        elif ev.key == self._bye_key and resp.status >= 200:
            self._end(by_peer=False)

    def _on_timeout(self, ev: TransactionTimedOut) -> None:
        if ev.key == self._invite_key and self.phase is CallPhase.CALLING:
            self.phase = CallPhase.ENDED
            self._events.append(CallFailed(408, "Request Timeout"))
        elif ev.key == self._bye_key:
            self._end(by_peer=False)  # RFC 3261 15.1.1: the session ends even without an answer

    def _end(self, *, by_peer: bool) -> None:
        if self.phase is CallPhase.ENDED:
            return
        self.phase = CallPhase.ENDED
        self._events.append(CallEnded(by_peer))

    # ------------------------------------------------------------ headers

    def _via(self) -> str:
        # RFC 3581: ask for rport so answers come back to the port we sent from
        return f"SIP/2.0/UDP {self.host}:{self.sip_port};branch={new_branch(secrets.token_hex(8))};rport"

    def _contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.sip_port}>"


def peer_of(uri: str) -> Peer:
    """Where to send requests for a SIP URI (UDP, default port 5060, RFC 3263 without DNS)."""
    parsed = parse_uri(uri)
    return Peer("udp", parsed.host, parsed.port or 5060)
