"""The B2BUA core: a call is two dialogs (caller leg UAS, agent leg UAC) and two media legs. Sans-IO.

Driven by: `receive(data, source, now)` for every datagram or framed stream
message, `handle_timer(now)` when `get_timer()` is due, `hangup(call_id,
reason, now)` from the edge (media timeout, API) and `transport_failed(peer,
now)` when the edge loses a connection or a send fails. Output:
`messages_to_send()` as (bytes, Peer) and `next_event()`. SDP is never relayed:
each leg gets the gateway's own SDP anchored on the media ports of `CallMedia`,
with PCMU/PCMA only and the telephone-event payload type of that leg. A peer that
answers the G.711 law it was not offered is accepted (RFC 3264 6.1 forbids it, common
peers do it): each leg keeps its own law and the relay converts; an answer without
G.711 is refused (fail closed). One audio stream is relayed: an answer has
every offered m= line in order, the others rejected with port 0 (RFC 3264 6), and
a later offer on a leg keeps that leg's lines (RFC 3264 8), so a video-first peer
never maps audio onto its video; media on an address family the relay lacks is
refused 488 with Warning 301. An offer
travels the way it came: an INVITE without SDP goes out without SDP, the 2xx's
offer is re-offered to the other side, and the ACKs carry the answers back
(initial INVITE and re-INVITE alike). One agent per call: a 2xx from another
fork is ACKed and BYEd. Safe state: any error in
one call ends that call (BYE/CANCEL both legs, media closed); a malformed
message is answered 400 (or dropped when it cannot be answered) and never
touches other calls. In-dialog requests go back over the flow the dialog was
set up on (symmetric signalling, as SBCs do), so NATed peers and TCP
connections work without DNS.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
import secrets
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Protocol, Union

from gateway.media.leg import Direction, LegMedia
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.message import (
    Headers,
    Limits,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    check_require,
    new_branch,
    parse_message,
    parse_name_addr,
    parse_uri,
)
from gateway.sip.sdp import (
    IncompatibleAddress,
    LocalOffer,
    MediaSlot,
    NotAcceptable,
    RemoteAudio,
    SdpParseError,
    SessionDescription,
    accepted_crypto,
    build_answer,
    build_offer,
    build_rejection,
    check_address_family,
    leg_from_answer,
    parse_sdp,
    remote_audio,
)
from gateway.sip.transaction import (
    AckTimedOut,
    Peer,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
    TransactionTimedOut,
    TransportFailed,
    TxKey,
)

__all__ = [
    "B2bua",
    "B2buaConfig",
    "Call",
    "CallAnswered",
    "CallEnded",
    "CallMedia",
    "CallStarted",
    "CallState",
    "InfoDtmfReceived",
    "LawsDiffered",
    "MediaController",
    "MessageRejected",
    "Peer",
    "UnofferedCodecAccepted",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
_INSPECTABLE = ("PCMU", "PCMA")
SUPPORTED = ("timer",)
_DTMF_INFO_FIELDS = {
    "application/dtmf-relay": "signal", "application/x-dtmf-relay": "signal",  # Signal=5 (Cisco's form)
    "application/vnd.nortelnetworks.digits": "d",  # d=5 (Nortel / Avaya)
    "application/dtmf": "", "application/x-dtmf": "",  # the digit alone
}
"""INFO bodies that carry a keypad digit, and the body field that holds it ("": the whole body)."""
_DTMF_DIGITS = set("0123456789*#ABCD")
_MULTIPART_DEPTH = 2
_CARRIED_TO_AGENT = ("Session-Expires", "Min-SE", "Subject", "P-Asserted-Identity", "P-Preferred-Identity", "Privacy",
                     "Authorization", "Proxy-Authorization", "Diversion", "History-Info", "User-to-User",
                     "Remote-Party-ID", "Alert-Info", "Call-Info", "Priority", "Organization")
"""Headers of the caller's INVITE the agent's INVITE carries, every line as written (plus X-*): the
caller's credentials for a next hop that challenges (RFC 3261 22.2-22.3), identity, redirection and
contact-centre (CTI) data."""
_CARRIED_TO_CALLER = ("WWW-Authenticate", "Proxy-Authenticate", "Min-SE", "Retry-After", "Warning", "Unsupported",
                      "Require", "Reason", "Accept", "Accept-Encoding", "Accept-Language", "Error-Info")
"""Headers of the agent's final refusal the caller's response carries: a 401/407 challenge the
caller answers by retrying (RFC 3261 8.1.3.5), 422's Min-SE (RFC 4028 6), 420's Unsupported,
421's Require (RFC 3261 21.4.16: it MUST name the extension), Retry-After and the like."""


class CallMedia(Protocol):
    """The media relay's handle on one call (implemented in gateway/media/relay.py)."""

    caller_port: int
    agent_port: int

    def configure(self, caller: LegMedia, agent: LegMedia) -> None: ...

    def close(self) -> None: ...


class MediaController(Protocol):
    """Allocates media for calls; `open_call` raises OSError when no ports are free (answered 503)."""

    media_address: str

    def open_call(self, call_id: str) -> CallMedia: ...


class CallState(Enum):
    TRYING = "trying"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


@dataclass(frozen=True)
class CallStarted:
    """A caller's INVITE created a call and the agent leg was sent."""

    call_id: str
    caller: str
    agent: str
    started_at: float


@dataclass(frozen=True)
class CallAnswered:
    call_id: str
    answered_at: float


@dataclass(frozen=True)
class CallEnded:
    """Both legs are being torn down; `reason` is a short fixed text."""

    call_id: str
    reason: str
    ended_at: float


@dataclass(frozen=True)
class InfoDtmfReceived:
    """A SIP INFO DTMF digit from the caller (RFC 6086 carrier); the digit is kept out of repr."""

    call_id: str
    digit: str = field(repr=False)
    forwarded: bool = False


@dataclass(frozen=True)
class MessageRejected:
    """A message was refused (answered with `status`) or dropped (`status` None)."""

    reason: str
    status: int | None


@dataclass(frozen=True)
class UnofferedCodecAccepted:
    """A peer answered with a G.711 law we did not offer (against RFC 3264 6.1, but common); accepted."""

    call_id: str
    leg: str
    """'caller' or 'agent': the leg whose peer answered."""
    codec: str


@dataclass(frozen=True)
class LawsDiffered:
    """The two legs now use different G.711 laws: the relay converts the audio between them."""

    call_id: str
    caller_codec: str
    agent_codec: str


B2buaEvent = Union[
    CallStarted, CallAnswered, CallEnded, InfoDtmfReceived, MessageRejected, UnofferedCodecAccepted, LawsDiffered
]


@dataclass(frozen=True)
class B2buaConfig:
    """Routing and behaviour of the B2BUA."""

    next_hop: str
    """SIP URI of the PBX/ACD or agent; ;transport= or sips: picks the transport; the caller's user is kept."""
    local_host: str = "127.0.0.1"
    """Host we put in Via and Contact."""
    local_ports: tuple[tuple[str, int], ...] = (("udp", 5060), ("tcp", 5060), ("tls", 5061))
    timers: TimerConfig = TimerConfig()
    agent_telephone_event_pt: int = 101
    """Payload type we offer the agent leg for telephone-event (the caller leg keeps the caller's)."""
    agent_srtp_suite: str | None = None
    """Offer SDES SRTP with this suite on the agent leg (None: plain RTP)."""
    ring_timeout_s: float = 180.0
    """No final answer from the agent leg within this of its last provisional response (or the INVITE):
    CANCEL it, 408 to the caller."""
    limits: Limits = Limits()
    user_agent: str = "Tonewall"
    dialog_source_check: bool = True
    """Accept in-dialog requests only from the host each leg's dialog was set up with (else 481)."""
    srtp_allowed: bool = True
    """False (config `media.srtp = "off"`): an offer of SRTP (RTP/SAVP) is refused with 488."""


class _Leg(Enum):
    CALLER = "caller"
    AGENT = "agent"

    __hash__ = object.__hash__  # Enum's hash is a Python call; legs key several dicts per message

    @property
    def other(self) -> _Leg:
        return _Leg.AGENT if self is _Leg.CALLER else _Leg.CALLER


@dataclass
class _Pending:
    """A client transaction we started, and what to do with its responses."""

    call: Call
    kind: str
    """invite, reinvite, relay, bye, cancel."""
    leg: _Leg
    """Leg the request went out on."""
    server_key: TxKey | None = None
    offer: LocalOffer | None = None
    remote_offer: RemoteAudio | None = None
    ack: bytes | None = None


@dataclass
class _LateOffer:
    """A peer's offer that came in its 2xx (its INVITE carried none, RFC 3264 / RFC 3261 13.2.1).

    We offered the other leg in our 2xx; that leg's ACK carries the answer, from
    which we build our answer for the ACK we still owe `offer_leg`.
    """

    offer_leg: _Leg
    their_offer: RemoteAudio
    our_offer: LocalOffer
    ack_cseq: int
    """CSeq number of our INVITE on `offer_leg`, reused by the ACK (RFC 3261 13.2.2.4)."""
    answer_cseq: int
    """CSeq number of the INVITE on the other leg, whose ACK carries the answer."""
    pending: _Pending | None = None
    """The initial INVITE's record, which keeps the ACK to repeat for 2xx retransmissions."""
    offer_key: TxKey | None = None
    """For a re-INVITE: its client transaction, whose 2xx retransmissions get the ACK again."""


class _RandomPool:
    """Hex digits from `secrets` drawn in bulk: tags, Call-IDs and branches stay unguessable
    (RFC 3261 19.3: tags cryptographically random) without one system call each."""

    def __init__(self, chunk_bytes: int = 2048):
        self._chunk = chunk_bytes
        self._hex = ""
        self._pos = 0

    def hex(self, n: int) -> str:
        if self._pos + n > len(self._hex):
            self._hex = secrets.token_hex(self._chunk)
            self._pos = 0
        out = self._hex[self._pos : self._pos + n]
        self._pos += n
        return out


class Call:
    """One call through the gateway; `call_id` is opaque and URL-safe (not a SIP Call-ID)."""

    def __init__(self, call_id: str, caller: str, agent: str, started_at: float, media: CallMedia):
        self.call_id = call_id
        self.caller = caller
        self.agent = agent
        self.started_at = started_at
        self.state = CallState.TRYING
        self.media = media
        self.sip_call_ids: dict[_Leg, str] = {}
        self.local_tags: dict[_Leg, str] = {}
        self.peers: dict[_Leg, Peer] = {}
        self.dialogs: dict[_Leg, Dialog] = {}
        self.legs: dict[_Leg, LegMedia] = {}
        self.srtp_suites: dict[_Leg, str | None] = {}
        self.te_pts: dict[_Leg, int | None] = {}
        self.sdp_versions: dict[_Leg, int] = {_Leg.CALLER: 0, _Leg.AGENT: 0}
        self.layouts: dict[_Leg, tuple[tuple[MediaSlot, ...], int]] = {}
        """Each leg's session m= lines and the index of the audio we relay: RFC 3264 8 keeps them in later offers."""
        self.session_id = 0
        self.invite: SipRequest | None = None
        self.invite_key: TxKey | None = None
        self.agent_invite: SipRequest | None = None
        self.agent_invite_key: TxKey | None = None
        self.caller_offer: RemoteAudio | None = None
        self.caller_answer: bytes | None = None
        self.reinvite_busy = False
        self.accepted: dict[TxKey, tuple[int, _Leg]] = {}
        """Server INVITE transactions we answered 2xx: their CSeq number and leg, to match the ACK."""
        self.session_interval_s: float | None = None
        self.session_token = ""
        self.ring_token = 0
        """Names the ring timer in force (a provisional response re-arms it)."""
        self.ring_armed_s = float("-inf")
        self.late: _LateOffer | None = None
        self.forks: dict[str, bytes] = {}
        """To tag -> ACK of an extra 2xx from another fork of the agent INVITE (re-sent on retransmission)."""
        self.pending_keys: set[TxKey] = set()
        self.acks: dict[TxKey, bytes] = {}
        """ACKs of answered re-INVITEs, re-sent when their 2xx is retransmitted."""
        self.reported: set[UnofferedCodecAccepted | LawsDiffered] = set()
        """Codec leniency already reported as an event (18x and 2xx repeat one answer)."""

    def __repr__(self) -> str:
        return f"Call({self.call_id!r}, state={self.state.value})"


class B2bua:
    """The sans-IO back-to-back user agent."""

    def __init__(
        self,
        config: B2buaConfig,
        media: MediaController,
        info_policy: Callable[[str, bytes, str | None], bool] | None = None,
    ):
        self.config = config
        self.media = media
        self.info_policy = info_policy
        """info_policy(call_id, body, content_type) -> forward? (the capture sets it; default forwards)."""
        self._tx = TransactionLayer(config.timers)
        self._out: list[tuple[bytes, Peer]] = []
        self._events: deque[B2buaEvent] = deque()
        self._calls: dict[str, Call] = {}
        self._by_sip: dict[str, tuple[Call, _Leg]] = {}
        self._pending: dict[TxKey, _Pending] = {}
        self._by_server_key: dict[TxKey, Call] = {}
        self._acks: dict[TxKey, tuple[bytes, Peer]] = {}
        self._timers: list[tuple[float, int, str, str]] = []
        self._timer_seq = 0
        self._lingering: deque[tuple[float, TxKey]] = deque()
        """Cancelled agent INVITEs awaiting a final answer; dropped after 64*T1 (RFC 3261 9.1)."""
        self._random = _RandomPool()
        self._agent_uris: dict[tuple[str, bool], str] = {}
        self._challenged: dict[str, tuple[str, str, int, float]] = {}
        """Caller's Call-ID -> (agent leg's Call-ID, From tag, CSeq, until when) of an INVITE the next
        hop challenged: the caller's retry (same Call-ID, RFC 3261 22.2) goes out as the same one's."""
        self._via_heads = {
            t: f"SIP/2.0/{t.upper()} {config.local_host}:{port};branch={new_branch('')}" for t, port in config.local_ports
        }
        self._ports = dict(config.local_ports)
        hop = parse_uri(config.next_hop)
        if not hop.is_sip:
            raise ValueError("next hop is not a SIP URI")
        self._hop = hop
        default_port = 5061 if hop.transport == "tls" else 5060
        self._hop_peer = Peer(hop.transport, hop.host.strip("[]"), hop.port or default_port)

    # ------------------------------------------------------------ edge API

    @property
    def calls(self) -> list[Call]:
        """Calls not yet ended."""
        return list(self._calls.values())

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def messages_to_send(self) -> list[tuple[bytes, Peer]]:
        """Everything to send, in order; ACKs for 2xx (sent outside transactions) come first, so an
        ACK we owed precedes the BYE that follows it."""
        self._drain_tx()
        out, self._out = self._out, []
        out.extend(self._tx.messages_to_send())
        return out

    @property
    def pending_transactions(self) -> int:
        """Requests we sent that still wait for a final response (or linger after a CANCEL)."""
        return len(self._pending)

    def next_event(self) -> B2buaEvent | None:
        self._drain_tx()
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        heap = self._timers
        while heap and heap[0][2] not in self._calls:
            heapq.heappop(heap)
        mine = heap[0][0] if heap else None
        if self._lingering and (mine is None or self._lingering[0][0] < mine):
            mine = self._lingering[0][0]
        tx = self._tx.get_timer()
        if mine is None:
            return tx
        return mine if tx is None else min(mine, tx)

    def handle_timer(self, now: float) -> None:
        self._tx.handle_timer(now)
        self._drain_tx(now)
        while self._lingering and self._lingering[0][0] <= now:
            _, key = self._lingering.popleft()
            p = self._untrack(key)
            if p is not None:
                # RFC 3261 9.1: no final response 64*T1 after the CANCEL: consider it cancelled.
                self._tx.terminate(key)
        while self._timers and self._timers[0][0] <= now:
            _, _, call_id, kind = heapq.heappop(self._timers)
            call = self._calls.get(call_id)
            if call is None:
                continue
            if kind == f"ring:{call.ring_token}" and call.state in (CallState.TRYING, CallState.RINGING):
                self._end_unanswered(call, 408, "ring timeout", now)
            elif kind.startswith("session:") and call.state is CallState.ANSWERED:
                if kind == f"session:{call.session_token}":
                    self.hangup(call_id, "session expired", now)

    def receive(self, data: bytes | SipRequest | SipResponse, source: Peer, now: float) -> None:
        """Feed one datagram (or one message already framed from a stream)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                msg = parse_message(bytes(data), self.config.limits)
            except SipParseError as exc:
                self._reject_unparsable(bytes(data), exc, source)
                return
        else:
            msg = data
        try:
            self._tx.receive(msg, source, now)
        except SipParseError as exc:
            self._events.append(MessageRejected(str(exc), None))
            return
        self._drain_tx(now)

    def transport_failed(self, peer: Peer, now: float) -> None:
        """The edge reports a dead TCP/TLS connection, or a send that failed (ICMP unreachable), to `peer`.

        RFC 3261 17.1.4 / 8.1.3.1: transactions over that flow end; a request we sent
        counts as answered 503, a response we could not deliver ends its call.
        """
        self._tx.transport_failed(peer, now)
        self._drain_tx(now)

    def hangup(self, call_id: str, reason: str, now: float) -> None:
        """End a call from outside (media timeout, API): BYE both legs, or CANCEL/480 if unanswered."""
        call = self._calls.get(call_id)
        if call is None:
            return
        if call.state is CallState.ANSWERED:
            for leg in _Leg:
                self._send_in_dialog(call, leg, "BYE", now, kind="bye")
            self._end(call, reason, now)
        else:
            self._end_unanswered(call, 480, reason, now)

    # ------------------------------------------------------------ dispatch

    def _drain_tx(self, now: float | None = None) -> None:
        while (ev := self._tx.next_event()) is not None:
            t = now if now is not None else 0.0
            try:
                if isinstance(ev, RequestReceived):
                    self._on_request(ev, t)
                elif isinstance(ev, ResponseReceived):
                    self._on_response(ev, t)
                elif isinstance(ev, TransactionTimedOut):
                    self._on_timeout(ev, t)
                elif isinstance(ev, AckTimedOut):
                    found = self._by_server_key.get(ev.key)
                    if found is not None:
                        self.hangup(found.call_id, "no ACK", t)
                elif isinstance(ev, TransportFailed):
                    self._on_transport_failed(ev, t)
            except (SipParseError, SdpParseError, DialogError) as exc:
                self._events.append(MessageRejected(str(exc), getattr(exc, "status", 400)))
                if isinstance(ev, RequestReceived) and ev.key is not None:
                    self._respond(ev.key, ev.request, getattr(exc, "status", 400), t)
            except Exception as exc:  # noqa: BLE001 - one message must never take down the loop
                self._events.append(MessageRejected(f"internal error: {type(exc).__name__}", 500))
                if isinstance(ev, RequestReceived) and ev.key is not None:
                    self._respond(ev.key, ev.request, 500, t)

    def _on_request(self, ev: RequestReceived, now: float) -> None:
        req, key = ev.request, ev.key
        if req.method == "ACK":
            self._on_ack(req, now)
            return
        assert key is not None
        found = self._by_sip.get(req.call_id)
        if req.method == "CANCEL":
            self._on_cancel(req, key, found, now)
            return
        mf = req.max_forwards
        if mf is not None and mf == 0 and req.method != "OPTIONS":
            # RFC 3261 16.3: OPTIONS at Max-Forwards 0 is answered here (an SBC's keep-alive probe).
            self._respond(key, req, 483, now)  # RFC 3261 16.3 / 8.2: Too Many Hops
            self._events.append(MessageRejected("SIP Max-Forwards is zero", 483))
            return
        try:
            check_require(req, SUPPORTED)
        except SipParseError as exc:
            self._respond(key, req, 420, now, extra=[("Unsupported", ", ".join(exc.unsupported))])
            self._events.append(MessageRejected(str(exc), 420))
            return
        if req.method == "OPTIONS":
            self._respond(key, req, 200, now, extra=self._capabilities())
            return
        if req.method == "REFER":
            # A transfer would take the caller off the inspected media path: refuse it by policy.
            self._respond(key, req, 403, now, reason="Transfer Not Allowed Through Gateway")
            return
        if req.to_tag is None:
            if req.method == "INVITE":
                if found is not None:
                    self._respond(key, req, 482, now)  # RFC 3261 8.2.2.2 merged request
                    return
                self._new_call(req, key, ev.source, now)
            elif req.method in ALLOW:
                self._respond(key, req, 481, now)
            else:
                self._respond(key, req, 501, now, extra=[("Allow", ALLOW)])
            return
        if found is None:
            self._respond(key, req, 481, now)  # RFC 3261 12.2.2
            return
        call, leg = found
        dialog = call.dialogs.get(leg)
        if (dialog is None and leg is _Leg.CALLER and req.method in ("BYE", "UPDATE")
                and call.state in (CallState.TRYING, CallState.RINGING)
                and call.invite is not None and req.from_tag == call.invite.from_tag
                and req.to_tag == call.local_tags[_Leg.CALLER]
                and (not self.config.dialog_source_check or self._from_leg_host(call, leg, ev.source))):
            if req.method == "BYE":
                # RFC 3261 15: the caller hangs up in the early dialog our 18x made: 200 to the BYE,
                # 487 to its INVITE (15.1.2), the agent's INVITE cancelled.
                self._respond(key, req, 200, now)
                self._end_unanswered(call, 487, "caller hangup", now)
            elif req.body:
                # RFC 3311 5.2: the INVITE's offer/answer is not complete (our 18x are unreliable).
                self._respond(key, req, 500, now, extra=[("Retry-After", "1")])
            else:
                self._respond(key, req, 200, now, extra=[("Contact", self._contact(_Leg.CALLER, call))])
            return
        if dialog is None or not dialog.matches(req):
            self._respond(key, req, 481, now)
            return
        if self.config.dialog_source_check and not self._from_leg_host(call, leg, ev.source):
            # Call-ID and tags travel in clear text: anyone who saw them could BYE the call, or
            # re-INVITE its media elsewhere, leaving the real peer on a dead half-call. Only
            # the leg's own host may speak in its dialog (ports may change: RFC 3261 18.2.1).
            self._respond(key, req, 481, now)
            self._events.append(MessageRejected("SIP in-dialog request from a foreign host", 481))
            return
        dialog.receive_request(req)
        if req.method == "BYE":
            self._respond(key, req, 200, now)
            # RFC 3326: the release cause (Q.850 from ISUP interworking, or SIP) goes on with the BYE.
            self._send_in_dialog(call, leg.other, "BYE", now, kind="bye", extra=_reasons(req) or None)
            self._end(call, f"{leg.value} hangup", now)
        elif req.method in ("INVITE", "UPDATE"):
            self._on_reoffer(call, leg, req, key, now)
        elif req.method == "INFO":
            self._on_info(call, leg, req, key, now)
        elif req.method in ALLOW:
            self._relay(call, leg, req, key, now)
        else:
            self._respond(key, req, 501, now, extra=[("Allow", ALLOW)])

    # ------------------------------------------------------------ new call

    def _new_call(self, req: SipRequest, key: TxKey, source: Peer, now: float) -> None:
        ruri = req.request_uri
        user = ruri.user or ""
        offer: RemoteAudio | None = None
        if req.body:
            sdp_body = _sdp_body(req.body, req.headers.get("Content-Type"))
            if sdp_body is None:
                self._respond(key, req, 415, now, extra=[("Accept", "application/sdp")])
                return
            try:
                offer = self._audio(sdp_body)
                if not any(c.name in ("PCMU", "PCMA") for c in offer.codecs):
                    raise NotAcceptable("SDP offer has no acceptable codec")
                if offer.secure and not self.config.srtp_allowed:
                    raise NotAcceptable("SRTP refused by policy")
            except NotAcceptable as exc:
                self._refuse(key, req, exc, now)
                return
        rnd = self._random
        call_id = rnd.hex(24)
        try:
            media = self.media.open_call(call_id)
        except OSError:
            self._respond(key, req, 503, now, reason="No Media Ports")
            self._events.append(MessageRejected("no media ports free", 503))
            return
        caller_addr = req.from_addr
        call = Call(call_id, caller_addr.uri.user or "", user, now, media)
        call.session_id = int(rnd.hex(7), 16)
        call.invite, call.invite_key, call.caller_offer = req, key, offer
        self._by_server_key[key] = call
        call.peers[_Leg.CALLER] = source
        call.peers[_Leg.AGENT] = self._hop_peer
        call.local_tags[_Leg.CALLER] = rnd.hex(12)
        call.local_tags[_Leg.AGENT] = rnd.hex(12)
        call.sip_call_ids[_Leg.CALLER] = req.call_id
        call.sip_call_ids[_Leg.AGENT] = rnd.hex(24) + "@tonewall"
        agent_cseq = 1
        prior = self._challenged.pop(req.call_id, None)
        if prior is not None and prior[3] >= now and prior[0] not in self._by_sip:
            # The retry of a challenged INVITE: the next hop sees its own challenge answered in the
            # same call (RFC 3261 22.2: same Call-ID and From tag, CSeq one more).
            call.sip_call_ids[_Leg.AGENT], call.local_tags[_Leg.AGENT], agent_cseq = prior[0], prior[1], prior[2] + 1
        # The suite our answer takes, which our own offers to the caller (re-INVITEs) must use too.
        chosen = accepted_crypto(offer) if offer is not None and offer.secure else None
        call.srtp_suites[_Leg.CALLER] = chosen.suite if chosen is not None else None
        call.srtp_suites[_Leg.AGENT] = self.config.agent_srtp_suite
        call.te_pts[_Leg.CALLER] = offer.telephone_event.pt if offer and offer.telephone_event else 101
        call.te_pts[_Leg.AGENT] = self.config.agent_telephone_event_pt
        self._calls[call_id] = call
        self._by_sip[req.call_id] = (call, _Leg.CALLER)
        self._by_sip[call.sip_call_ids[_Leg.AGENT]] = (call, _Leg.AGENT)

        agent_uri = self._agent_uri(user, ruri.params.get("user") == "phone")
        mf = req.max_forwards
        caller_addr.params = {"tag": call.local_tags[_Leg.AGENT]}
        items = [
            ("Via", self._via(_Leg.AGENT, call)),
            ("Max-Forwards", str(mf - 1 if mf is not None else 70)),
            ("From", str(caller_addr)),
            ("To", f"<{agent_uri}>"),
            ("Call-ID", call.sip_call_ids[_Leg.AGENT]),
            ("CSeq", f"{agent_cseq} INVITE"),
            ("Contact", self._contact(_Leg.AGENT, call)),
            ("Allow", ALLOW),
            ("User-Agent", self.config.user_agent),
        ]
        for name, value in req.headers:
            if name.lower().startswith("x-"):
                items.append((name, value))
        for name in _CARRIED_TO_AGENT:
            items.extend((name, v) for v in req.headers.values(name))
        if req.headers.get("Session-Expires") is not None:
            items.append(("Supported", "timer"))
        local: LocalOffer | None = None
        sd = b""
        if offer is not None:
            sd, local = self._offer(call, _Leg.AGENT, [c.name for c in offer.codecs], offer.direction)
            items.append(("Content-Type", "application/sdp"))
        # else: late offer (RFC 3261 13.2.1): the agent offers in its 2xx, we relay it to the caller.
        invite = SipRequest("INVITE", agent_uri, Headers(items), sd)
        call.agent_invite = invite
        akey = self._tx.send_request(invite, self._hop_peer, now)
        call.agent_invite_key = akey
        self._track(akey, _Pending(call, "invite", _Leg.AGENT, key, local, offer))
        self._arm_ring(call, now)
        self._events.append(CallStarted(call_id, call.caller, call.agent, now))

    # ------------------------------------------------------------ responses

    def _on_response(self, ev: ResponseReceived, now: float) -> None:
        p = self._pending.get(ev.key)
        if p is None:
            if ev.retransmission and ev.key in self._acks:
                self._out.append(self._acks[ev.key])  # RFC 3261 13.2.2.4: ACK every 2xx retransmission
            return
        resp, call = ev.response, p.call
        if p.kind == "invite":
            self._on_invite_response(p, ev, now)
        elif p.kind in ("reinvite", "relay"):
            if resp.status < 200:
                return
            self._untrack(ev.key)
            if p.kind == "reinvite":
                self._on_reinvite_response(p, ev.key, resp, now)
            elif p.server_key is not None and call.invite is not None:
                req = self._tx.request(p.server_key)
                if req is not None:
                    extra = [("Content-Type", resp.headers.get("Content-Type") or "")] if resp.body else []
                    se = resp.headers.get("Session-Expires")
                    if 200 <= resp.status < 300:
                        extra += self._refresh_answer_headers(call, p.leg.other, req, resp, se)
                    self._respond(p.server_key, req, resp.status, now, reason=resp.reason, body=resp.body, extra=extra)
                    if 200 <= resp.status < 300 and (se or req.headers.get("Session-Expires")):
                        # RFC 4028 10: a 2xx to a refresh (an UPDATE without SDP, as PJSIP and
                        # Asterisk send) restarts the session timer.
                        self._session_refreshed(call, se or req.headers.get("Session-Expires"), now)
        elif resp.status >= 200:
            self._untrack(ev.key)

    def _on_invite_response(self, p: _Pending, ev: ResponseReceived, now: float) -> None:
        resp, call = ev.response, p.call
        status = resp.status
        if 200 <= status < 300:
            dialog = call.dialogs.get(_Leg.AGENT)
            if dialog is not None:
                if resp.to_tag == dialog.remote_tag:
                    if p.ack is not None:  # else the ACK waits for the caller's answer (late offer)
                        self._out.append((p.ack, call.peers[_Leg.AGENT]))
                else:
                    self._on_forked_2xx(call, resp, now)
                return
            assert call.agent_invite is not None
            dialog = Dialog.as_uac(call.agent_invite, resp)
            dialog.local_contact = self._contact(_Leg.AGENT, call)
            call.dialogs[_Leg.AGENT] = dialog
            if call.state is CallState.ENDED or call.call_id not in self._calls:
                # Answered after CANCEL/timeout: ACK (with an answer if it offered) and BYE it.
                p.ack = self._ack_2xx(call, _Leg.AGENT, dialog, call.agent_invite.cseq[0], self._fallback_answer(call, resp))
                self._send_bye_on(call, _Leg.AGENT, now)
                return
            if p.offer is None:
                self._on_late_offer_2xx(call, p, resp, now)
                return
            p.ack = self._ack_2xx(call, _Leg.AGENT, dialog, call.agent_invite.cseq[0], None)
            try:
                if _message_sdp(resp) or call.caller_answer is None:  # RFC 3261 13.2.1: else the 18x held the answer
                    self._media_from_agent(call, p, resp)
            except (SdpParseError, NotAcceptable) as exc:
                self._send_bye_on(call, _Leg.AGENT, now)
                self._refuse(p.server_key, call.invite, exc, now, to_tag=call.local_tags[_Leg.CALLER])
                self._end(call, _end_reason(exc), now)
                return
            self._accept_caller(call, resp, call.caller_answer or b"", now)
            return
        if status == 100:
            return
        if call.state is CallState.ENDED:
            if status >= 200:
                self._untrack(ev.key)
            return
        if status < 200:
            call.state = CallState.RINGING
            if now - call.ring_armed_s >= 1.0:  # at most one timer entry a second, however many 18x come
                self._arm_ring(call, now)  # RFC 3261 16.6 Timer C: each provisional restarts it (queues, early media)
            body = b""
            if p.offer is not None and _message_sdp(resp):
                # Early media (RFC 3960): an answer in an unreliable 18x is a preview of the 2xx's.
                try:
                    self._media_from_agent(call, p, resp)
                    body = call.caller_answer or b""
                except (SdpParseError, NotAcceptable) as exc:
                    self._events.append(MessageRejected(str(exc), 488))
            self._answer_caller(call, status, resp.reason, now, body=body)
            return
        self._untrack(ev.key)
        # RFC 3261 16.7-style relay of the agent's final refusal (status kept; 6xx too).
        extra = [(name, v) for name in _CARRIED_TO_CALLER for v in resp.headers.values(name)]
        if 300 <= status < 400:
            extra += self._redirect_contacts(call, resp)
        if status in (401, 407) and call.agent_invite is not None:
            if len(self._challenged) >= 1024:
                self._challenged = {k: v for k, v in self._challenged.items() if v[3] >= now}
            if len(self._challenged) < 1024:
                self._challenged[call.sip_call_ids[_Leg.CALLER]] = (
                    call.sip_call_ids[_Leg.AGENT], call.local_tags[_Leg.AGENT], call.agent_invite.cseq[0],
                    now + 64 * self.config.timers.t1_s)
        self._respond(call.invite_key, call.invite, status, now, reason=resp.reason, to_tag=call.local_tags[_Leg.CALLER],
                      extra=extra)
        self._end(call, f"rejected {status}", now)

    def _redirect_contacts(self, call: Call, resp: SipResponse) -> list[tuple[str, str]]:
        """A 3xx's targets, at the gateway with their user kept (a tel: number as user=phone), over
        the transport the caller came on: the redirected call comes back through the gateway to
        the next hop (as REFER is refused, no call leaves the inspected path)."""
        out = []
        for value in resp.headers.get_all("Contact"):
            try:
                target = parse_name_addr(value)
            except SipParseError:
                continue
            uri = target.uri
            phone = uri.params.get("user") == "phone"
            user = uri.user or ""
            if uri.raw is not None and uri.raw[:4].lower() == "tel:":
                user, phone = uri.raw[4:].split(";")[0], True
            if not user:
                continue
            out.append(("Contact", self._contact(_Leg.CALLER, call, user + ("", ";user=phone")[phone])))
        return out

    def _accept_caller(self, call: Call, resp: SipResponse, body: bytes, now: float) -> None:
        """Our 2xx to the caller: the caller's dialog is set up and the call is answered."""
        assert call.invite is not None and call.invite_key is not None
        call.dialogs[_Leg.CALLER] = Dialog.as_uas(
            call.invite, call.local_tags[_Leg.CALLER], self._contact(_Leg.CALLER, call)
        )
        extra = self._session_timer_headers(call, resp, now)
        self._answer_caller(call, 200, resp.reason, now, extra, body=body)
        call.accepted[call.invite_key] = (call.invite.cseq[0], _Leg.CALLER)
        self._stream_fallback(call, _Leg.CALLER, call.invite)
        call.state = CallState.ANSWERED
        self._events.append(CallAnswered(call.call_id, now))

    def _on_forked_2xx(self, call: Call, resp: SipResponse, now: float) -> None:
        """RFC 3261 13.2.2.4: a 2xx from another fork gets its own ACK, then a BYE: one agent per call."""
        tag = resp.to_tag or ""
        ack = call.forks.get(tag)
        if ack is not None:
            self._out.append((ack, call.peers[_Leg.AGENT]))  # a retransmission of that fork's 2xx
            return
        assert call.agent_invite is not None
        fork = Dialog.as_uac(call.agent_invite, resp)
        call.forks[tag] = self._ack_2xx(call, _Leg.AGENT, fork, call.agent_invite.cseq[0], self._fallback_answer(call, resp))
        req = fork.new_request("BYE", self._via(_Leg.AGENT, call))
        self._track(self._tx.send_request(req, call.peers[_Leg.AGENT], now), _Pending(call, "bye", _Leg.AGENT))

    def _ack_2xx(self, call: Call, leg: _Leg, dialog: Dialog, cseq: int, body: bytes | None) -> bytes:
        """Send the ACK for a 2xx (end to end, no transaction: RFC 3261 13.2.2.4); returns its bytes."""
        extra = [("Content-Type", "application/sdp")] if body else None
        ack = dialog.new_request("ACK", self._via(leg, call), cseq=cseq, body=body or b"", extra=extra)
        data = bytes(ack)
        self._out.append((data, call.peers[leg]))
        return data

    def _fallback_answer(self, call: Call, resp: SipResponse, leg: _Leg = _Leg.AGENT) -> bytes | None:
        """An answer refusing the offer in a 2xx we hang up on (RFC 3261 13.2.2.4: the ACK must answer)."""
        sdp = _message_sdp(resp)
        if not sdp or resp.cseq[1] != "INVITE":
            return None
        try:
            offer = remote_audio(parse_sdp(sdp))
        except SdpParseError:
            return None
        if call.agent_invite is not None and call.agent_invite.body and resp.cseq[0] == call.agent_invite.cseq[0]:
            return None  # our INVITE offered: its 2xx holds an answer, not an offer
        return bytes(build_rejection(offer, address=self.media.media_address, session_id=call.session_id,
                                     version=self._next_version(call, leg)))

    def _on_late_offer_2xx(self, call: Call, p: _Pending, resp: SipResponse, now: float) -> None:
        """The agent offered in its 2xx: offer the caller the same in our 2xx; the ACKs carry the answers."""
        assert call.agent_invite is not None and call.invite is not None
        try:
            sdp = _message_sdp(resp)
            if not sdp:
                raise NotAcceptable("SDP offer is missing from the 2xx")
            their = self._audio(sdp)
            codecs = [c.name for c in their.codecs if c.name in _INSPECTABLE]
            if not codecs:
                raise NotAcceptable("SDP offer has no acceptable codec")
        except (SdpParseError, NotAcceptable) as exc:
            p.ack = self._ack_2xx(call, _Leg.AGENT, call.dialogs[_Leg.AGENT], call.agent_invite.cseq[0],
                                  self._fallback_answer(call, resp))
            self._send_bye_on(call, _Leg.AGENT, now)
            self._refuse(call.invite_key, call.invite, exc, now, to_tag=call.local_tags[_Leg.CALLER])
            self._end(call, _end_reason(exc), now)
            return
        body, ours = self._offer(call, _Leg.CALLER, codecs, their.direction)
        call.late = _LateOffer(_Leg.AGENT, their, ours, call.agent_invite.cseq[0], call.invite.cseq[0], p)
        call.reinvite_busy = True  # RFC 3264 4: no new offer until this one is answered
        self._accept_caller(call, resp, body, now)

    def _on_late_answer(self, call: Call, ack: SipRequest, now: float) -> None:
        """The ACK that answers our late offer: answer the offering leg in the ACK we owe it."""
        late = call.late
        assert late is not None
        call.late = None
        call.reinvite_busy = False
        answer_leg, offer_leg = late.offer_leg.other, late.offer_leg
        dialog = call.dialogs[offer_leg]
        try:
            sdp = _message_sdp(ack)
            if not sdp:
                raise NotAcceptable("SDP answer is missing from the ACK")
            sd, new_answer_leg, new_offer_leg = self._bridge_answer(
                call, answer_leg, late.our_offer, sdp, late.their_offer)
        except (SdpParseError, NotAcceptable) as exc:
            # RFC 3261 13.2.2.4: still ACK with a valid answer, then hang up.
            self._events.append(MessageRejected(str(exc), 488))
            body = bytes(build_rejection(late.their_offer, address=self.media.media_address,
                                         session_id=call.session_id, version=self._next_version(call, offer_leg)))
            data = self._ack_2xx(call, offer_leg, dialog, late.ack_cseq, body)
            self._remember_ack(call, late, data)
            self.hangup(call.call_id, _end_reason(exc), now)
            return
        data = self._ack_2xx(call, offer_leg, dialog, late.ack_cseq, bytes(sd))
        self._remember_ack(call, late, data)
        call.legs[answer_leg] = new_answer_leg
        call.legs[offer_leg] = new_offer_leg
        call.te_pts[offer_leg] = new_offer_leg.telephone_event_pt
        self._configure_media(call)

    def _bridge_answer(self, call: Call, answered: _Leg, our_offer: LocalOffer, answer: bytes,
                       their_offer: RemoteAudio) -> tuple[SessionDescription, LegMedia, LegMedia]:
        """One leg answered our offer: its media, and our answer to the other leg's offer (same law if it can)."""
        answered_media = self._leg_from_answer(call, answered, our_offer, answer)
        other = answered.other
        sd, other_media = build_answer(
            their_offer,
            address=self.media.media_address,
            port=self._port(call, other),
            session_id=call.session_id,
            version=self._next_version(call, other),
            prefer=answered_media.codec,
        )
        call.layouts[other] = (their_offer.slots, their_offer.index)
        chosen = accepted_crypto(their_offer) if their_offer.secure else None
        call.srtp_suites[other] = chosen.suite if chosen is not None else None
        return sd, answered_media, other_media

    def _remember_ack(self, call: Call, late: _LateOffer, data: bytes) -> None:
        if late.pending is not None:
            late.pending.ack = data
        elif late.offer_key is not None:
            self._keep_ack(call, late.offer_key, data, late.offer_leg)

    def _keep_ack(self, call: Call, key: TxKey, data: bytes, leg: _Leg) -> None:
        call.acks[key] = data
        self._acks[key] = (data, call.peers[leg])

    def _owed_ack(self, call: Call) -> None:
        """Hanging up while a late offer waits for its answer: the offering leg still gets its ACK first."""
        late = call.late
        if late is None:
            return
        call.late = None
        body = bytes(build_rejection(late.their_offer, address=self.media.media_address,
                                     session_id=call.session_id, version=self._next_version(call, late.offer_leg)))
        data = self._ack_2xx(call, late.offer_leg, call.dialogs[late.offer_leg], late.ack_cseq, body)
        self._remember_ack(call, late, data)

    def _media_from_agent(self, call: Call, p: _Pending, resp: SipResponse) -> None:
        """The agent's answer (in a 18x or the 2xx) sets up both legs; a later one updates the agent leg."""
        assert p.offer is not None
        agent_leg = replace(self._leg_from_answer(call, _Leg.AGENT, p.offer, _message_sdp(resp)),
                            fork_tag=resp.to_tag, early=resp.status < 200)
        if call.caller_offer is None:
            return
        if call.caller_answer is None:
            # The caller keeps its own law when it did not offer the agent's; the relay converts.
            sd, caller_leg = build_answer(
                call.caller_offer,
                address=self.media.media_address,
                port=call.media.caller_port,
                session_id=call.session_id,
                version=self._next_version(call, _Leg.CALLER),
                prefer=agent_leg.codec,
            )
            call.caller_answer = bytes(sd)
            call.legs[_Leg.CALLER] = caller_leg
            call.layouts[_Leg.CALLER] = (call.caller_offer.slots, call.caller_offer.index)
        # A 2xx whose law differs from the 18x's changes only the agent leg: the caller keeps
        # the answer it has, and the relay converts between the laws.
        if call.legs.get(_Leg.AGENT) != agent_leg:
            call.legs[_Leg.AGENT] = agent_leg
            call.te_pts[_Leg.AGENT] = agent_leg.telephone_event_pt
            self._configure_media(call)

    def _answer_caller(
        self, call: Call, status: int, reason: str, now: float, extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        assert call.invite is not None and call.invite_key is not None
        # RFC 3261 12.1.1: a response that makes the dialog copies the INVITE's Record-Route, in order,
        # so that the caller's in-dialog requests take the proxies' path too.
        hdrs = [("Record-Route", v) for v in call.invite.headers.values("Record-Route")]
        hdrs += [("Contact", self._contact(_Leg.CALLER, call)), ("Allow", ALLOW)] + (extra or [])
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        self._respond(call.invite_key, call.invite, status, now, reason=reason, to_tag=call.local_tags[_Leg.CALLER],
                      body=body, extra=hdrs)

    def _session_timer_headers(self, call: Call, resp: SipResponse, now: float) -> list[tuple[str, str]]:
        """RFC 4028: the session interval (the agent's 2xx's, else the caller's request's), and the
        call ends if no refresh arrives in time.

        The gateway itself never refreshes, and may not reach the caller with the agent's refreshes
        (a caller without UPDATE), so the caller's leg names the caller as its refresher when it
        supports timers (section 9); a caller that does not is told of no timer, which then runs
        only while the agent's side refreshes."""
        value = resp.headers.get("Session-Expires")
        asked = call.invite.headers.get("Session-Expires") if call.invite is not None else None
        caller_times = self._caller_supports_timer(call)
        if not value and (not asked or not caller_times):
            return []
        secs = _interval(value or asked)
        if secs is None:
            return []
        call.session_interval_s = float(secs)
        self._arm_session(call, now)
        return _caller_timer_headers(secs) if caller_times else []

    @staticmethod
    def _caller_supports_timer(call: Call) -> bool:
        return call.invite is not None and "timer" in [v.strip().lower() for v in call.invite.headers.get_all("Supported")]

    def _refresh_answer_headers(self, call: Call, origin: _Leg, req: SipRequest, resp: SipResponse,
                                se: str | None) -> list[tuple[str, str]]:
        """Session-timer headers of our 2xx to a relayed request, whose interval `_session_refreshed`
        arms next. To the caller: the interval with the caller as refresher (see
        `_session_timer_headers`), also when the agent's side runs no timer (RFC 4028 7.4: a 2xx
        without Session-Expires would tell the caller to stop refreshing). To the agent: its peer's."""
        if origin is _Leg.CALLER:
            secs = _interval(se or req.headers.get("Session-Expires"))
            if secs is None and call.session_interval_s and req.headers.get("Session-Expires"):
                secs = int(call.session_interval_s)
            return _caller_timer_headers(secs) if secs is not None and self._caller_supports_timer(call) \
                else []
        if se:
            return [("Session-Expires", se)] + ([("Require", "timer")] if "timer" in resp.headers.get_all("Require")
                                                 else [])
        return []

    def _session_refreshed(self, call: Call, value: str | None, now: float) -> None:
        """A refresh succeeded: the timer restarts, on the interval it names when it names one."""
        secs = _interval(value)
        if secs is not None:
            call.session_interval_s = float(secs)
        self._arm_session(call, now)

    def _arm_session(self, call: Call, now: float) -> None:
        interval = call.session_interval_s
        if not interval:
            return
        token = secrets.token_hex(4)
        call.session_token = token
        # RFC 4028 10: without a refresh, BYE at expiry minus min(32 s, interval / 3).
        self._arm(call, f"session:{token}", now + interval - min(32.0, interval / 3))

    # ------------------------------------------------------------ CANCEL, ACK, timeouts

    def _on_cancel(self, req: SipRequest, key: TxKey, found: tuple[Call, _Leg] | None, now: float) -> None:
        invite_key = self._tx.server_invite_for_cancel(req)
        if invite_key is None or found is None:
            self._respond(key, req, 481, now)  # RFC 3261 9.2
            return
        self._respond(key, req, 200, now)
        call, _ = found
        if call.state in (CallState.TRYING, CallState.RINGING) and invite_key == call.invite_key:
            # RFC 3326: "Call completed elsewhere" on the caller's CANCEL keeps agents' phones
            # from logging a missed call; it goes on with our CANCEL.
            self._end_unanswered(call, 487, "cancelled", now, reasons=_reasons(req))

    def _end_unanswered(self, call: Call, status: int, reason: str, now: float,
                        reasons: list[tuple[str, str]] | None = None) -> None:
        """Caller leg gets `status`; the agent INVITE is cancelled (RFC 3261 9.1)."""
        if call.invite is not None and call.invite_key is not None:
            self._respond(call.invite_key, call.invite, status, now, to_tag=call.local_tags[_Leg.CALLER])
        inv = call.agent_invite
        akey = call.agent_invite_key
        if inv is not None and akey is not None and akey in self._pending:
            items = [("Via", inv.headers.get_all("Via")[0])]
            for name in ("Max-Forwards", "From", "To", "Call-ID"):
                items.append((name, inv.headers.get(name) or ""))
            items.append(("CSeq", f"{inv.cseq[0]} CANCEL"))
            items += reasons or []
            cancel = SipRequest("CANCEL", inv.uri, Headers(items))
            ckey = self._tx.send_request(cancel, call.peers[_Leg.AGENT], now)
            self._track(ckey, _Pending(call, "cancel", _Leg.AGENT))
        self._end(call, reason, now)

    def _on_ack(self, req: SipRequest, now: float) -> None:
        found = self._by_sip.get(req.call_id)
        if found is None:
            return
        call, leg = found
        num = req.cseq[0]
        for key, (cseq, accepted_leg) in call.accepted.items():
            if cseq == num and accepted_leg is leg:
                self._tx.confirm(key)
        late = call.late
        if late is not None and late.offer_leg is not leg and late.answer_cseq == num:
            self._on_late_answer(call, req, now)

    def _on_timeout(self, ev: TransactionTimedOut, now: float) -> None:
        if ev.server:
            found = self._by_server_key.get(ev.key)
            if found is not None and found.state is CallState.ANSWERED:
                self.hangup(found.call_id, "no ACK", now)
            return
        p = self._untrack(ev.key)
        if p is None:
            return
        if p.kind == "invite" and p.call.state in (CallState.TRYING, CallState.RINGING):
            # RFC 3261 8.1.3.1: timer B expiry is treated as a 408 from the next hop.
            call = p.call
            self._respond(call.invite_key, call.invite, 408, now, to_tag=call.local_tags[_Leg.CALLER])
            self._end(call, "agent timeout", now)
        elif p.kind in ("reinvite", "relay") and p.server_key is not None:
            req = self._tx.request(p.server_key)
            if req is not None:
                self._respond(p.server_key, req, 408, now)
            if p.kind == "reinvite":
                p.call.reinvite_busy = False
                self.hangup(p.call.call_id, "re-INVITE timeout", now)

    def _on_transport_failed(self, ev: TransportFailed, now: float) -> None:
        """RFC 3261 17.1.4 / 17.2.4: what a flow failure means for the call using it."""
        if ev.server:
            call = self._by_server_key.get(ev.key)
            if call is None or call.call_id not in self._calls:
                return
            if call.state is CallState.ANSWERED:
                self.hangup(call.call_id, "caller unreachable", now)
            elif ev.key == call.invite_key:
                self._end_unanswered(call, 503, "caller unreachable", now)
            return
        p = self._untrack(ev.key)
        if p is None:
            return
        call = p.call
        reason = f"{p.leg.value} unreachable"
        if p.kind == "invite" and call.state in (CallState.TRYING, CallState.RINGING):
            # RFC 3261 8.1.3.1: a transport error counts as a 503 from the next hop.
            self._respond(call.invite_key, call.invite, 503, now, to_tag=call.local_tags[_Leg.CALLER])
            self._end(call, reason, now)
        elif p.kind in ("reinvite", "relay") and p.server_key is not None:
            req = self._tx.request(p.server_key)
            if req is not None:
                self._respond(p.server_key, req, 503, now)
            if p.kind == "reinvite":
                call.reinvite_busy = False
                self.hangup(call.call_id, reason, now)

    # ------------------------------------------------------------ re-INVITE / UPDATE / INFO

    def _on_reoffer(self, call: Call, leg: _Leg, req: SipRequest, key: TxKey, now: float) -> None:
        if call.reinvite_busy:
            self._respond(key, req, 491, now)  # RFC 3261 14.2 glare
            return
        other = leg.other
        se = req.headers.get("Session-Expires")
        # RFC 3311 5.1: no UPDATE to a caller that did not list it in Allow: an offer goes as a
        # re-INVITE, a refresh without one is answered here.
        method = "INVITE" if req.method == "UPDATE" and other is _Leg.CALLER and not self._caller_allows_update(call) \
            else req.method
        if not req.body:
            if req.method == "UPDATE" and method == "INVITE":
                extra = [("Contact", self._contact(leg, call))]
                if se:
                    extra += [("Session-Expires", se), ("Require", "timer")]
                self._respond(key, req, 200, now, extra=extra)
                self._session_refreshed(call, se, now)
                return
            if req.method == "UPDATE":
                self._relay(call, leg, req, key, now)
                return
            # Offerless re-INVITE (RFC 3261 14.1): relay it offerless; the other leg offers in its
            # 2xx, we offer the same in ours, and the ACKs carry the answers back.
            out = call.dialogs[other].new_request("INVITE", self._via(other, call),
                                                  extra=self._refresh_request_headers(call, other, req))
            ckey = self._tx.send_request(out, call.peers[other], now)
            self._track(ckey, _Pending(call, "reinvite", other, key))
            call.reinvite_busy = True
            return
        sdp_body = _sdp_body(req.body, req.headers.get("Content-Type"))
        if sdp_body is None:
            self._respond(key, req, 415, now, extra=[("Accept", "application/sdp")])
            return
        try:
            offer = self._audio(sdp_body)
            codecs = [c.name for c in offer.codecs if c.name in _INSPECTABLE]
            if not codecs:
                raise NotAcceptable("SDP offer has no acceptable codec")
        except SdpParseError as exc:
            self._refuse(key, req, exc, now)
            return
        codecs = self._reoffer_codecs(call, other, codecs)
        body, local = self._offer(call, other, codecs, _reoffer_direction(offer))
        extra = [("Content-Type", "application/sdp")] + self._refresh_request_headers(call, other, req)
        out = call.dialogs[other].new_request(method, self._via(other, call), body=body, extra=extra)
        ckey = self._tx.send_request(out, call.peers[other], now)
        self._track(ckey, _Pending(call, "reinvite", other, key, local, offer))
        call.reinvite_busy = True

    def _refresh_request_headers(self, call: Call, to: _Leg, req: SipRequest) -> list[tuple[str, str]]:
        """Session-timer headers of a request relayed to leg `to` (RFC 4028 7.1: a refresh says it
        supports timers). To the caller the refresher stays the caller (refresher=uas of our
        request; see `_session_timer_headers`), and a caller without timers hears of none."""
        se = req.headers.get("Session-Expires")
        if not se:
            return []
        if to is _Leg.CALLER:
            secs = _interval(se)
            if secs is None or not self._caller_supports_timer(call):
                return []
            return [("Session-Expires", f"{secs};refresher=uas"), ("Supported", "timer")]
        extra = [("Session-Expires", se)] + [("Min-SE", v) for v in req.headers.values("Min-SE")]
        return extra + [("Supported", "timer")]

    @staticmethod
    def _caller_allows_update(call: Call) -> bool:
        allow = call.invite.headers.get_all("Allow") if call.invite is not None else []
        return "UPDATE" in (m.strip().upper() for m in allow)

    def _on_reinvite_response(self, p: _Pending, ckey: TxKey, resp: SipResponse, now: float) -> None:
        call = p.call
        call.reinvite_busy = False
        origin = p.leg.other
        req = self._tx.request(p.server_key) if p.server_key is not None else None
        dialog = call.dialogs[p.leg]
        late = 200 <= resp.status < 300 and resp.cseq[1] == "INVITE" and p.offer is None
        if 200 <= resp.status < 300:
            if resp.cseq[1] == "INVITE" and not late:
                self._keep_ack(call, ckey, self._ack_2xx(call, p.leg, dialog, resp.cseq[0], None), p.leg)
            dialog.refresh_target(resp)
        if late:
            self._on_late_reoffer_2xx(call, p, ckey, resp, req, now)
            return
        if req is None:
            return
        if resp.status >= 300:
            self._respond(p.server_key, req, resp.status, now, reason=resp.reason)
            return
        try:
            assert p.offer is not None and p.remote_offer is not None
            sd, new_other, new_origin = self._bridge_answer(call, p.leg, p.offer, _message_sdp(resp), p.remote_offer)
        except (SdpParseError, NotAcceptable) as exc:
            self._refuse(p.server_key, req, exc, now)
            return
        call.legs[p.leg] = new_other
        call.legs[origin] = new_origin
        call.te_pts[p.leg] = new_other.telephone_event_pt or call.te_pts.get(p.leg)
        self._configure_media(call)
        self._accept_reoffer(call, p, req, resp, bytes(sd), now)

    def _accept_reoffer(self, call: Call, p: _Pending, req: SipRequest, resp: SipResponse, body: bytes,
                        now: float) -> None:
        origin = p.leg.other
        extra = [("Contact", self._contact(origin, call)), ("Content-Type", "application/sdp")]
        se = resp.headers.get("Session-Expires") or req.headers.get("Session-Expires")
        extra += self._refresh_answer_headers(call, origin, req, resp, resp.headers.get("Session-Expires"))
        self._respond(p.server_key, req, 200, now, body=body, extra=extra)
        if req.method == "INVITE" and p.server_key is not None:
            call.accepted[p.server_key] = (req.cseq[0], origin)
            self._by_server_key[p.server_key] = call
        self._session_refreshed(call, se, now)

    def _on_late_reoffer_2xx(self, call: Call, p: _Pending, ckey: TxKey, resp: SipResponse,
                             req: SipRequest | None, now: float) -> None:
        """The other leg offered in the 2xx to our offerless re-INVITE: relay the offer to the origin."""
        origin = p.leg.other
        try:
            if req is None:
                raise NotAcceptable("SDP offer has nowhere to go")
            sdp = _message_sdp(resp)
            if not sdp:
                raise NotAcceptable("SDP offer is missing from the 2xx")
            their = self._audio(sdp)
            codecs = [c.name for c in their.codecs if c.name in _INSPECTABLE]
            if not codecs:
                raise NotAcceptable("SDP offer has no acceptable codec")
        except (SdpParseError, NotAcceptable) as exc:
            # Still ACK the 2xx with a valid answer (RFC 3261 13.2.2.4); the old media stays.
            body = self._fallback_answer(call, resp, p.leg)
            self._keep_ack(call, ckey, self._ack_2xx(call, p.leg, call.dialogs[p.leg], resp.cseq[0], body), p.leg)
            if req is not None:
                self._refuse(p.server_key, req, exc, now)
            else:
                self._events.append(MessageRejected(str(exc), 488))
            if body is not None:
                self.hangup(call.call_id, _end_reason(exc), now)  # we refused that leg's media
            return
        codecs = self._reoffer_codecs(call, origin, codecs)
        body, ours = self._offer(call, origin, codecs, _reoffer_direction(their))
        call.late = _LateOffer(p.leg, their, ours, resp.cseq[0], req.cseq[0], offer_key=ckey)
        call.reinvite_busy = True
        self._accept_reoffer(call, p, req, resp, body, now)

    def _on_info(self, call: Call, leg: _Leg, req: SipRequest, key: TxKey, now: float) -> None:
        ctype = req.content_type
        digit = _info_digit(req.body, req.headers.get("Content-Type")) if leg is _Leg.CALLER else None
        # The capture's policy governs the caller's INFO only; the agent's reaches the caller.
        forward = True if self.info_policy is None or leg is not _Leg.CALLER else \
            bool(self.info_policy(call.call_id, req.body, ctype))
        if digit is not None:
            self._events.append(InfoDtmfReceived(call.call_id, digit, forward))
        if forward:
            self._relay(call, leg, req, key, now)
        else:
            self._respond(key, req, 200, now)  # RFC 6086: answered, not forwarded (capture in progress)

    def _relay(self, call: Call, leg: _Leg, req: SipRequest, key: TxKey, now: float) -> None:
        """Relay a non-SDP in-dialog request to the other leg; its final response comes back."""
        other = leg.other
        extra = []
        if req.body and req.headers.get("Content-Type"):
            extra.append(("Content-Type", req.headers.get("Content-Type") or ""))
        for name in ("Info-Package", "Event", "Subscription-State"):
            v = req.headers.get(name)
            if v is not None:
                extra.append((name, v))
        extra += self._refresh_request_headers(call, other, req)
        out = call.dialogs[other].new_request(req.method, self._via(other, call), body=req.body, extra=extra)
        ckey = self._tx.send_request(out, call.peers[other], now)
        self._track(ckey, _Pending(call, "relay", other, key))

    # ------------------------------------------------------------ building blocks

    def _reoffer_codecs(self, call: Call, leg: _Leg, codecs: list[str]) -> list[str]:
        """The laws to offer `leg` when the other leg re-offers `codecs` (inspectable, in its order).

        One law on both legs passes bit-exact: `leg`'s current law goes first when offered.
        On a call already converting between laws, `leg`'s current law is added last, so that
        a peer supporting only that law can answer a refresh instead of refusing it.
        """
        current = call.legs.get(leg)
        if current is None:
            return codecs
        if current.codec in codecs:
            return [current.codec] + [c for c in codecs if c != current.codec]
        other = call.legs.get(leg.other)
        if other is not None and other.codec != current.codec:
            return codecs + [current.codec]
        return codecs

    def _leg_from_answer(self, call: Call, leg: _Leg, offer: LocalOffer, body: bytes) -> LegMedia:
        """A leg's media from its peer's answer to our offer; an unoffered G.711 law is reported."""
        media = leg_from_answer(offer, self._audio(body, offer.index))
        if media.codec not in offer.codecs:
            self._report(call, UnofferedCodecAccepted(call.call_id, leg.value, media.codec))
        return media

    def _configure_media(self, call: Call) -> None:
        """Hand both legs to the relay; legs on different laws are reported (the relay converts)."""
        caller, agent = call.legs[_Leg.CALLER], call.legs[_Leg.AGENT]
        call.media.configure(caller, agent)
        if caller.codec != agent.codec:
            self._report(call, LawsDiffered(call.call_id, caller.codec, agent.codec))

    def _report(self, call: Call, event: UnofferedCodecAccepted | LawsDiffered) -> None:
        if event not in call.reported:
            call.reported.add(event)
            self._events.append(event)

    def _audio(self, body: bytes, index: int | None = None) -> RemoteAudio:
        """A peer's offer (or, with `index`, its answer to ours) on a media path the relay can reach."""
        audio = remote_audio(parse_sdp(body), index)
        check_address_family(audio, self.media.media_address)
        return audio

    def _refuse(self, key: TxKey | None, req: SipRequest | None, exc: SdpParseError, now: float, *,
                to_tag: str | None = None) -> None:
        """488 for SDP we cannot use (RFC 3264 6), with a Warning when one says why (RFC 3261 20.43)."""
        self._events.append(MessageRejected(str(exc), 488))
        warning = getattr(exc, "warning", None)
        extra = [("Warning", f'{warning[0]} {self.config.local_host} "{warning[1]}"')] if warning else None
        self._respond(key, req, 488, now, to_tag=to_tag, extra=extra)

    def _offer(self, call: Call, leg: _Leg, codecs: list[str], direction: Direction) -> tuple[bytes, LocalOffer]:
        """Our offer on `leg`, keeping that leg's session layout: its other m= lines stay, port 0."""
        layout, index = call.layouts.get(leg, ((), 0))
        sd, local = build_offer(
            address=self.media.media_address,
            port=self._port(call, leg),
            codecs=codecs,
            telephone_event_pt=call.te_pts.get(leg),
            direction=direction,
            srtp_suite=call.srtp_suites.get(leg),
            session_id=call.session_id,
            version=self._next_version(call, leg),
            layout=layout,
            index=index,
        )
        call.layouts[leg] = (local.layout, local.index)
        return bytes(sd), local

    def _port(self, call: Call, leg: _Leg) -> int:
        return call.media.caller_port if leg is _Leg.CALLER else call.media.agent_port

    def _next_version(self, call: Call, leg: _Leg) -> int:
        call.sdp_versions[leg] += 1  # RFC 4566 5.2: o= version increases with each change
        return call.sdp_versions[leg]

    def _via(self, leg: _Leg, call: Call) -> str:
        transport = call.peers[leg].transport
        head = self._via_heads.get(transport)
        if head is None:
            head = f"SIP/2.0/{transport.upper()} {self.config.local_host}:5060;branch={new_branch('')}"
        return f"{head}{self._random.hex(16)};rport"

    def _agent_uri(self, user: str, phone: bool = False) -> str:
        """The next hop's URI with the caller's Request-URI user (DESIGN: the user is kept), and its
        `user=phone` (RFC 3261 19.1.1: the user part is a telephone number) when it had one."""
        cached = self._agent_uris.get((user, phone))
        if cached is None:
            uri = parse_uri(str(self._hop))
            uri.user = user or None
            if phone and uri.user:
                uri.params = {**uri.params, "user": "phone"}
            cached = str(uri)
            if len(self._agent_uris) >= 4096:  # called numbers repeat; bound the memory anyway
                self._agent_uris.clear()
            self._agent_uris[(user, phone)] = cached
        return cached

    def _track(self, key: TxKey, pending: _Pending) -> None:
        self._pending[key] = pending
        pending.call.pending_keys.add(key)

    def _untrack(self, key: TxKey) -> _Pending | None:
        p = self._pending.pop(key, None)
        if p is not None:
            p.call.pending_keys.discard(key)
        return p

    def _contact(self, leg: _Leg, call: Call, user: str = "") -> str:
        """The gateway's URI on `leg`'s transport; `user` may end in URI parameters (";user=phone")."""
        transport = call.peers[leg].transport
        port = self._ports.get(transport, 5060)
        name, _, params = user.partition(";")
        at = f"{name}@" if name else ""
        scheme_param = ("" if transport == "udp" else f";transport={transport}") + (f";{params}" if params else "")
        return f"<sip:{at}{self.config.local_host}:{port}{scheme_param}>"

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", ", ".join(SUPPORTED))]

    @staticmethod
    def _stream_fallback(call: Call, leg: _Leg, request: SipRequest) -> None:
        """Requests to a TCP/TLS peer keep its connection while it lasts; once it closes they go over
        a new one to the port its Contact names (RFC 3261 18.1.1), on the same host (a Contact
        naming another host is behind a NAT: only its own connection reaches it)."""
        peer = call.peers[leg]
        if peer.transport not in ("tcp", "tls"):
            return
        try:
            contact = request.contact
        except SipParseError:
            return
        if contact is None or contact.uri.host != peer.host:
            return
        port = contact.uri.port or (5061 if peer.transport == "tls" else 5060)
        call.peers[leg] = Peer(peer.transport, peer.host, port, peer.connection_id)

    def _from_leg_host(self, call: Call, leg: _Leg, source: Peer) -> bool:
        """Whether `source` is the host of `leg`'s peer; a next hop named by DNS name is not checked."""
        host = call.peers[leg].host
        if leg is _Leg.AGENT and not _is_ip_literal(host):
            return True
        return source.host == host

    def _respond(
        self,
        key: TxKey | None,
        req: SipRequest | None,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if key is None or req is None:
            return
        if to_tag is None and status > 100 and req.to_tag is None:
            to_tag = secrets.token_hex(6)
        resp = build_response(req, status, reason, to_tag=to_tag, body=body, extra=extra or ())
        self._tx.send_response(key, resp, now)

    def _send_in_dialog(self, call: Call, leg: _Leg, method: str, now: float, kind: str,
                        extra: list[tuple[str, str]] | None = None) -> None:
        dialog = call.dialogs.get(leg)
        if dialog is None:
            return
        if method == "BYE":
            self._owed_ack(call)  # an ACK we still owe for a 2xx goes before the BYE
        req = dialog.new_request(method, self._via(leg, call), extra=extra)
        ckey = self._tx.send_request(req, call.peers[leg], now)
        self._track(ckey, _Pending(call, kind, leg))

    def _send_bye_on(self, call: Call, leg: _Leg, now: float) -> None:
        self._send_in_dialog(call, leg, "BYE", now, kind="bye")

    def _end(self, call: Call, reason: str, now: float) -> None:
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        self._calls.pop(call.call_id, None)
        self._forget(call)
        akey = call.agent_invite_key
        for key in list(call.pending_keys):
            if key != akey:
                p = self._untrack(key)  # responses to our BYE/CANCEL/relays of an ended call change nothing
                if p is not None and p.kind in ("reinvite", "relay") and p.server_key is not None:
                    # RFC 3261 15.1.2: the request we were relaying (a re-INVITE crossing the BYE)
                    # still gets its final response.
                    self._respond(p.server_key, self._tx.request(p.server_key), 487, now)
        if akey is not None and akey in self._pending:
            if _Leg.AGENT in call.dialogs:
                self._untrack(akey)  # answered: the BYE ends it; nothing more to do for its 2xx
            else:
                # The agent INVITE may still see a late 2xx (ACK and BYE it) or its 487. RFC 3261 9.1:
                # without a final response 64*T1 after the CANCEL, it is forgotten.
                self._lingering.append((now + 64 * self.config.timers.t1_s, akey))
        try:
            call.media.close()
        finally:
            self._events.append(CallEnded(call.call_id, reason, now))

    def _forget(self, call: Call) -> None:
        for sip_id in call.sip_call_ids.values():
            self._by_sip.pop(sip_id, None)
        if call.invite_key is not None:
            self._by_server_key.pop(call.invite_key, None)
        for key in call.accepted:
            self._by_server_key.pop(key, None)
        for key in call.acks:
            self._acks.pop(key, None)

    def _arm_ring(self, call: Call, now: float) -> None:
        """The caller is answered within `ring_timeout_s` of the last sign of progress, or given 408."""
        call.ring_token += 1
        call.ring_armed_s = now
        self._arm(call, f"ring:{call.ring_token}", now + self.config.ring_timeout_s)

    def _arm(self, call: Call, kind: str, deadline: float) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, call.call_id, kind))

    def _reject_unparsable(self, data: bytes, exc: SipParseError, source: Peer) -> None:
        """Answer a malformed request when the headers needed for a response can be salvaged."""
        self._events.append(MessageRejected(str(exc), None))
        resp = _salvage_response(data, exc.status)
        if resp is not None:
            self._events[-1] = MessageRejected(str(exc), exc.status)
            self._out.append((resp, source))


def _caller_timer_headers(secs: int) -> list[tuple[str, str]]:
    """Our answer's session timer on the caller's leg: the caller refreshes (RFC 4028 9)."""
    return [("Session-Expires", f"{secs};refresher=uac"), ("Require", "timer")]


def _interval(session_expires: str | None) -> int | None:
    """The delta-seconds of a Session-Expires value (RFC 4028 4); None when absent or malformed."""
    secs = (session_expires or "").split(";")[0].strip()
    return int(secs) if secs.isascii() and secs.isdigit() and 0 < int(secs) < 2**31 else None


def _end_reason(exc: Exception) -> str:
    """CallEnded reason for SDP the gateway could not use."""
    return "incompatible address" if isinstance(exc, IncompatibleAddress) else "no common codec"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _info_digit(body: bytes, content_type: str | None, depth: int = 0) -> str | None:
    """The keypad digit an INFO body carries (`content_type`: the raw header): each form of
    `_DTMF_INFO_FIELDS`, or the first such part of a multipart body (RFC 2046 5.1)."""
    if not content_type or not body:
        return None
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type.startswith("multipart/"):
        return _multipart_digit(body, params, depth) if depth < _MULTIPART_DEPTH else None
    field = _DTMF_INFO_FIELDS.get(media_type)
    if field is None:
        return None
    text = body.decode("ascii", "replace").strip()
    if field:
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == field:
                text = value.strip()
                break
        else:
            return None
    text = text.upper()
    return text if len(text) == 1 and text in _DTMF_DIGITS else None


def _multipart_digit(body: bytes, params: str, depth: int) -> str | None:
    for headers, content in _multipart_parts(body, params):
        digit = _info_digit(content, headers.get("content-type"), depth + 1)
        if digit is not None:
            return digit
    return None


def _multipart_parts(body: bytes, params: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body (RFC 2046 5.1): each one's headers (lower-case names) and content."""
    boundary = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return []
    parts = []
    # RFC 2046 5.1.1: a delimiter is "--boundary" at the start of a line (CRLF before it, or the body's start).
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("ascii", "replace")))
    for part in delimiter.split(body)[1:]:
        if part.startswith(b"--"):
            break  # the close delimiter
        head, sep, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = part.lstrip(b"\n").partition(b"\n\n")
        headers = {}
        for line in head.decode("ascii", "replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers["content-type" if name == "c" else name] = value.strip()
        parts.append((headers, content))
    return parts


def _reoffer_direction(offer: RemoteAudio) -> Direction:
    """The direction a re-offer asks for, passed on to the other leg. RFC 3264 8.4: in a re-offer,
    c=0.0.0.0 is an RFC 2543-style hold ("do not send to me") whatever a= says, and the other side
    must hear of it as a hold; in an initial offer it means the address is not known yet."""
    if offer.address in ("0.0.0.0", "::") and offer.port:
        return {Direction.SENDRECV: Direction.SENDONLY, Direction.RECVONLY: Direction.INACTIVE}.get(
            offer.direction, offer.direction)
    return offer.direction


def _reasons(req: SipRequest) -> list[tuple[str, str]]:
    """A BYE's or CANCEL's Reason header lines (RFC 3326), as written, to carry to the other leg."""
    return [("Reason", v) for v in req.headers.values("Reason")][:4]


def _message_sdp(msg: SipRequest | SipResponse) -> bytes:
    """The SDP an answer or 2xx/ACK offer carries: the body, or its application/sdp part when it is
    multipart (a SIP-I/SIP-T peer answers as it offers, RFC 5621); b"" when there is none. A body
    without Content-Type is taken as SDP, as before."""
    if not msg.body:
        return b""
    content_type = msg.headers.get("Content-Type")
    if content_type is None:
        return msg.body
    return _sdp_body(msg.body, content_type) or b""


def _sdp_body(body: bytes, content_type: str | None) -> bytes | None:
    """The SDP of an offer: the body, or its application/sdp part when it is multipart (RFC 5621:
    SIP-I/SIP-T put ISUP beside it); None when there is none or a part the gateway cannot drop
    is marked handling=required."""
    media_type, _, params = (content_type or "").partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/sdp":
        return body
    if not media_type.startswith("multipart/"):
        return None
    sdp = None
    for headers, content in _multipart_parts(body, params):
        part_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if part_type == "application/sdp" and sdp is None:
            sdp = content
        elif "handling=required" in headers.get("content-disposition", "").replace(" ", "").lower():
            return None
    return sdp


def _salvage_response(data: bytes, status: int) -> bytes | None:
    """A bare error response built from the raw Via/From/To/Call-ID/CSeq lines of a request we could not parse."""
    try:
        text = data[:8192].decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - decode with replace does not raise in practice
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].startswith("SIP/") or " SIP/" not in lines[0].upper():
        return None
    wanted = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
              "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}
    found: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            break
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if colon and key in wanted and "\r" not in value and "\x00" not in value:
            found.append((wanted[key], value.strip()))
    names = {n for n, _ in found}
    if not {"Via", "From", "To", "Call-ID", "CSeq"} <= names:
        return None
    if lines[0].split(" ", 1)[0] == "ACK":
        return None  # RFC 3261 17: never answer an ACK
    reason = {400: "Bad Request", 413: "Request Entity Too Large", 505: "Version Not Supported",
              513: "Message Too Large", 420: "Bad Extension"}.get(status, "Bad Request")
    out = [f"SIP/2.0 {status} {reason}"] + [f"{n}: {v}" for n, v in found] + ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()
