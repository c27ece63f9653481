"""SIP transactions (RFC 3261 section 17, with RFC 6026 Accepted states), sans-IO.

Driven by: `receive(msg, source, now)` for every parsed message, `send_request`
and `send_response` from the transaction user (the B2BUA), and `handle_timer(now)`
when `get_timer()` is due. Output: `messages_to_send()` as (bytes, Peer) and
`next_event()`. Safe state: a transaction that times out is removed and reported
once (`TransactionTimedOut`, `AckTimedOut`); nothing is retransmitted after that.
Reliable transports (TCP/TLS) skip the retransmission timers and the wait states
(RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Union

from gateway.sip.message import (
    BRANCH_MAGIC,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    build_response,
)


class Peer(NamedTuple):
    """Where a message came from or goes to; `connection_id` pins stream transports to a connection."""

    transport: str
    """"udp", "tcp" or "tls"."""
    host: str
    port: int
    connection_id: object | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 17.1.1.1 timer base values, in seconds."""

    t1_s: float = 0.5
    t2_s: float = 4.0
    t4_s: float = 5.0


class TxState(Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


TxKey = tuple


@dataclass(frozen=True)
class RequestReceived:
    """A new request (not a retransmission); `key` is None for an ACK to a 2xx, which has no transaction."""

    request: SipRequest
    source: Peer
    key: TxKey | None


@dataclass(frozen=True)
class ResponseReceived:
    """A response for one of our client transactions (2xx retransmissions included, for re-ACKing)."""

    response: SipResponse
    key: TxKey
    retransmission: bool = False


@dataclass(frozen=True)
class TransactionTimedOut:
    """Timer B/F fired (no final response) or timer H fired (no ACK for our error response)."""

    key: TxKey
    method: str
    server: bool


@dataclass(frozen=True)
class AckTimedOut:
    """Our 2xx to an INVITE was never ACKed within 64*T1 (RFC 3261 13.3.1.4): the TU should BYE."""

    key: TxKey


@dataclass(frozen=True)
class TransportFailed:
    """The edge could not deliver this transaction's messages (RFC 3261 17.1.4, 17.2.4); it has ended.

    A client transaction's TU treats it as a 503 from the next hop (RFC 3261 8.1.3.1).
    """

    key: TxKey
    method: str
    server: bool


TransactionEvent = Union[RequestReceived, ResponseReceived, TransactionTimedOut, AckTimedOut, TransportFailed]

# States in which a transaction still has something to deliver: a request awaiting its
# final response, or a response being (re)sent. Wait states only absorb retransmissions.
_DELIVERING = frozenset((TxState.CALLING, TxState.TRYING, TxState.PROCEEDING))
_SERVER_DELIVERING = frozenset((TxState.TRYING, TxState.PROCEEDING, TxState.COMPLETED, TxState.ACCEPTED))


def same_flow(failed: Peer, peer: Peer) -> bool:
    """Whether `peer` is reached over the flow that failed: same address, and the same connection
    when both name one (a transaction to a host without a pinned connection rides whichever is open).
    A pinned connection is the flow whatever port the peer falls back to (see B2bua._stream_fallback)."""
    if failed.connection_id is not None and failed.connection_id == peer.connection_id:
        return failed.transport == peer.transport
    if (failed.transport, failed.host, failed.port) != (peer.transport, peer.host, peer.port):
        return False
    return failed.connection_id is None or peer.connection_id is None or failed.connection_id == peer.connection_id


class _Tx:
    """State shared by the four transaction kinds."""

    __slots__ = (
        "key", "request", "method", "peer", "state", "timers", "interval_s", "last", "invite", "server", "confirmed",
    )

    def __init__(self, key: TxKey, request: SipRequest, peer: Peer, invite: bool, server: bool):
        self.key = key
        self.request: SipRequest | None = request
        """Dropped once the final response is settled: tens of thousands of transactions sit in
        32 s wait states, and only their last bytes are needed there."""
        self.method = request.method
        self.peer = peer
        self.invite = invite
        self.server = server
        self.state = TxState.PROCEEDING if server and invite else (TxState.TRYING if server or not invite else TxState.CALLING)
        self.timers: dict[str, float] = {}
        self.interval_s = 0.0
        self.last: bytes | None = None
        self.confirmed = False


def server_key(request: SipRequest) -> TxKey:
    """RFC 3261 17.2.3 matching key; ACK maps onto its INVITE; RFC 2543 fallback without the cookie."""
    via = request.first_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(BRANCH_MAGIC):
        return ("s", branch, via.host, via.port, method)
    num, _ = request.cseq
    to_tag = request.to_tag if request.method != "ACK" else None
    return ("s2543", request.uri, request.from_tag, request.call_id, num, str(via), to_tag, method)


def client_key(msg: SipRequest | SipResponse) -> TxKey:
    """RFC 3261 17.1.3: top Via branch plus CSeq method."""
    branch = msg.first_via.params.get("branch")
    if not branch:
        raise SipParseError("SIP Via header has no branch")
    return ("c", branch, msg.cseq[1])


def response_destination(request: SipRequest, source: Peer) -> Peer:
    """Where responses to `request` go: the connection on streams, else RFC 3581 rport / RFC 3261 18.2.2."""
    if source.reliable:
        return source
    via = request.first_via
    if "rport" in via.params:
        return source
    return Peer(source.transport, source.host, via.port or 5060)


def stamp_via(request: SipRequest, source: Peer) -> None:
    """Add received= and rport= to the top Via (RFC 3261 18.2.1, RFC 3581 4)."""
    try:
        top = request.first_via
    except SipParseError:
        return
    rport = "rport" in top.params
    if top.host == source.host and not rport:
        return
    via = Via(top.transport, top.host, top.port, dict(top.params))
    if via.host != source.host:
        via.params["received"] = source.host
    if rport:
        via.params["received"] = source.host
        via.params["rport"] = str(source.port)
    request.replace_top_via(via)


def ack_for(request: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response (RFC 3261 17.1.1.3): same branch, To from the response."""
    h = Headers()
    h.add("Via", request.headers.get_all("Via")[0])
    for name in ("Max-Forwards", "From"):
        v = request.headers.get(name)
        if v is not None:
            h.add(name, v)
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", request.call_id)
    h.add("CSeq", f"{request.cseq[0]} ACK")
    for route in request.headers.values("Route"):
        h.add("Route", route)
    return SipRequest("ACK", request.uri, h)


class TransactionLayer:
    """All client and server transactions of one SIP endpoint."""

    def __init__(self, timers: TimerConfig = TimerConfig()):
        self.timers = timers
        self._txs: dict[TxKey, _Tx] = {}
        self._heap: list[tuple[float, int, TxKey, str]] = []
        self._seq = 0
        self._out: list[tuple[bytes, Peer]] = []
        self._events: deque[TransactionEvent] = deque()

    # ------------------------------------------------------------ draining

    def messages_to_send(self) -> list[tuple[bytes, Peer]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> TransactionEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """Earliest deadline of any transaction timer, or None."""
        heap = self._heap
        while heap:
            deadline, _, key, name = heap[0]
            tx = self._txs.get(key)
            if tx is not None and tx.timers.get(name) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        return len(self._txs)

    def state(self, key: TxKey) -> TxState:
        tx = self._txs.get(key)
        return tx.state if tx else TxState.TERMINATED

    def request(self, key: TxKey) -> SipRequest | None:
        """The request of a live transaction still awaiting its final response; else None."""
        tx = self._txs.get(key)
        return tx.request if tx else None

    def peer(self, key: TxKey) -> Peer | None:
        tx = self._txs.get(key)
        return tx.peer if tx else None

    # ------------------------------------------------------------ TU commands

    def send_request(self, request: SipRequest, dest: Peer, now: float) -> TxKey:
        """Start a client transaction for `request` (not ACK) and send it."""
        if request.method == "ACK":
            raise ValueError("ACK is sent without a transaction")
        key = client_key(request)
        invite = request.method == "INVITE"
        tx = _Tx(key, request, dest, invite, server=False)
        self._txs[key] = tx
        tx.last = bytes(request)
        self._out.append((tx.last, dest))
        t1 = self.timers.t1_s
        if not dest.reliable:
            tx.interval_s = t1
            self._arm(tx, "A" if invite else "E", now + t1)  # RFC 3261 17.1.1.2 / 17.1.2.2
        self._arm(tx, "B" if invite else "F", now + 64 * t1)
        return key

    def send_stateless(self, data: bytes, dest: Peer) -> None:
        """Send without a transaction: ACK for 2xx, or a response when no transaction exists."""
        self._out.append((data, dest))

    def send_response(self, key: TxKey, response: SipResponse, now: float) -> None:
        """Send a response through server transaction `key`; ignored if it has ended."""
        tx = self._txs.get(key)
        if tx is None or not tx.server or tx.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.TERMINATED):
            return
        if tx.state is TxState.ACCEPTED:
            if 200 <= response.status < 300:
                tx.last = bytes(response)  # a new 2xx (e.g. another fork) replaces the one we retransmit
                self._out.append((tx.last, tx.peer))
            return
        tx.last = bytes(response)
        self._out.append((tx.last, tx.peer))
        t1, reliable = self.timers.t1_s, tx.peer.reliable
        if response.status < 200:
            tx.state = TxState.PROCEEDING
            return
        tx.request = None
        if tx.invite:
            if response.status < 300:
                # RFC 3261 13.3.1.4 / RFC 6026 7.1: retransmit the 2xx until ACK, give up at 64*T1.
                tx.state = TxState.ACCEPTED
                tx.interval_s = t1
                self._arm(tx, "G2xx", now + t1)
                self._arm(tx, "L", now + 64 * t1)
            else:
                tx.state = TxState.COMPLETED
                if not reliable:
                    tx.interval_s = t1
                    self._arm(tx, "G", now + t1)  # RFC 3261 17.2.1
                self._arm(tx, "H", now + 64 * t1)
        else:
            tx.state = TxState.COMPLETED
            if reliable:
                self._terminate(tx)  # RFC 3261 17.2.2: timer J is zero on reliable transports
            else:
                self._arm(tx, "J", now + 64 * t1)

    def confirm(self, key: TxKey) -> None:
        """The ACK for our 2xx arrived: stop retransmitting it (keep absorbing INVITE retransmissions)."""
        tx = self._txs.get(key)
        if tx is not None and tx.state is TxState.ACCEPTED:
            tx.confirmed = True
            tx.timers.pop("G2xx", None)

    def server_invite_for_cancel(self, cancel: SipRequest) -> TxKey | None:
        """The INVITE server transaction a CANCEL refers to (RFC 3261 9.2), if still alive."""
        key = server_key(cancel)
        key = key[:-1] + ("INVITE",)
        return key if key in self._txs else None

    def transport_failed(self, peer: Peer, now: float) -> None:
        """The edge reports a dead TCP/TLS connection or a failed send (e.g. ICMP unreachable) to `peer`.

        RFC 3261 17.1.4 / 17.2.4: every transaction still delivering over that flow
        ends at once and the TU hears `TransportFailed` (a client treats it as 503).
        """
        failed = [
            tx
            for tx in self._txs.values()
            if same_flow(peer, tx.peer)
            and tx.state in (_SERVER_DELIVERING if tx.server else _DELIVERING)
            and not (tx.server and tx.confirmed)
        ]
        for tx in failed:
            self._terminate(tx)
            self._events.append(TransportFailed(tx.key, tx.method, tx.server))

    def terminate(self, key: TxKey) -> None:
        """Drop a transaction silently (e.g. its call was torn down)."""
        tx = self._txs.get(key)
        if tx is not None:
            self._terminate(tx)

    # ------------------------------------------------------------ input

    def receive(self, msg: SipRequest | SipResponse, source: Peer, now: float) -> None:
        """Feed one parsed message received from `source`."""
        if isinstance(msg, SipResponse):
            self._receive_response(msg, now)
        else:
            self._receive_request(msg, source, now)

    def _receive_request(self, req: SipRequest, source: Peer, now: float) -> None:
        stamp_via(req, source)
        key = server_key(req)
        tx = self._txs.get(key)
        if req.method == "ACK":
            if tx is not None and tx.state is TxState.COMPLETED:
                tx.state = TxState.CONFIRMED  # RFC 3261 17.2.1: absorb, wait timer I
                tx.timers.pop("G", None)
                tx.timers.pop("H", None)
                if tx.peer.reliable:
                    self._terminate(tx)
                else:
                    self._arm(tx, "I", now + self.timers.t4_s)
            elif tx is None or tx.state is TxState.ACCEPTED:
                self._events.append(RequestReceived(req, source, None))
            return
        if tx is not None:
            # A retransmission never reaches the TU; answer it with the last response (17.2.1, 17.2.2).
            # RFC 6026 8.7: in Accepted it is absorbed, the 2xx has its own retransmission timer.
            if tx.last is not None and tx.state not in (TxState.ACCEPTED, TxState.CONFIRMED):
                self._out.append((tx.last, tx.peer))
            return
        invite = req.method == "INVITE"
        tx = _Tx(key, req, response_destination(req, source), invite, server=True)
        self._txs[key] = tx
        if invite:
            # RFC 3261 17.2.1: answer 100 Trying at once so the caller stops retransmitting.
            tx.last = bytes(build_response(req, 100))
            self._out.append((tx.last, tx.peer))
        self._events.append(RequestReceived(req, source, key))

    def _receive_response(self, resp: SipResponse, now: float) -> None:
        key = client_key(resp)
        tx = self._txs.get(key)
        if tx is None:
            return  # stray response: RFC 3261 18.1.2 says discard
        status = resp.status
        reliable = tx.peer.reliable
        if tx.invite:
            if tx.state in (TxState.CALLING, TxState.PROCEEDING):
                tx.timers.pop("A", None)
                if status < 200:
                    tx.state = TxState.PROCEEDING
                    tx.timers.pop("B", None)
                    self._events.append(ResponseReceived(resp, key))
                elif status < 300:
                    # RFC 6026 7.2: Accepted, timer M absorbs 2xx retransmissions and forks for the TU.
                    tx.state = TxState.ACCEPTED
                    tx.request = None
                    tx.timers.pop("B", None)
                    self._arm(tx, "M", now + 64 * self.timers.t1_s)
                    self._events.append(ResponseReceived(resp, key))
                else:
                    tx.state = TxState.COMPLETED
                    tx.timers.pop("B", None)
                    assert tx.request is not None
                    tx.last = bytes(ack_for(tx.request, resp))
                    tx.request = None
                    self._out.append((tx.last, tx.peer))
                    self._events.append(ResponseReceived(resp, key))
                    if reliable:
                        self._terminate(tx)
                    else:
                        self._arm(tx, "D", now + 32.0)  # RFC 3261 17.1.1.2: at least 32 s
            elif tx.state is TxState.ACCEPTED and 200 <= status < 300:
                self._events.append(ResponseReceived(resp, key, retransmission=True))
            elif tx.state is TxState.COMPLETED and status >= 300 and tx.last is not None:
                self._out.append((tx.last, tx.peer))  # re-ACK a retransmitted final response
            return
        if tx.state in (TxState.TRYING, TxState.PROCEEDING):
            if status < 200:
                if tx.state is TxState.TRYING and "E" in tx.timers:
                    tx.interval_s = self.timers.t2_s  # RFC 3261 17.1.2.2: T2 in Proceeding
                tx.state = TxState.PROCEEDING
                self._events.append(ResponseReceived(resp, key))
                return
            tx.state = TxState.COMPLETED
            tx.request = None
            tx.timers.pop("E", None)
            tx.timers.pop("F", None)
            self._events.append(ResponseReceived(resp, key))
            if reliable:
                self._terminate(tx)
            else:
                self._arm(tx, "K", now + self.timers.t4_s)

    # ------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at or before `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key, name = heapq.heappop(heap)
            tx = self._txs.get(key)
            if tx is None or tx.timers.get(name) != deadline:
                continue
            del tx.timers[name]
            self._fire(tx, name, deadline, now)

    def _fire(self, tx: _Tx, name: str, deadline: float, now: float) -> None:
        t2 = self.timers.t2_s
        if name in ("A", "E", "G", "G2xx"):
            if tx.last is not None:
                self._out.append((tx.last, tx.peer))
            # RFC 3261 17.1.1.2: A doubles without cap; E and G double up to T2.
            tx.interval_s = tx.interval_s * 2 if name == "A" else min(tx.interval_s * 2, t2)
            if name == "E" and tx.state is TxState.PROCEEDING:
                tx.interval_s = t2
            self._arm(tx, name, deadline + tx.interval_s)
        elif name in ("B", "F"):
            self._events.append(TransactionTimedOut(tx.key, tx.method, server=False))
            self._terminate(tx)
        elif name == "H":
            self._events.append(TransactionTimedOut(tx.key, tx.method, server=True))
            self._terminate(tx)
        elif name == "L":
            if not tx.confirmed:
                self._events.append(AckTimedOut(tx.key))
            self._terminate(tx)
        else:  # D, I, J, K, M: wait states over
            self._terminate(tx)

    def _arm(self, tx: _Tx, name: str, deadline: float) -> None:
        tx.timers[name] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, tx.key, name))

    def _terminate(self, tx: _Tx) -> None:
        tx.state = TxState.TERMINATED
        tx.timers.clear()
        self._txs.pop(tx.key, None)


__all__ = [
    "AckTimedOut",
    "Peer",
    "RequestReceived",
    "ResponseReceived",
    "TimerConfig",
    "TransactionEvent",
    "TransactionLayer",
    "TransactionTimedOut",
    "TransportFailed",
    "TxKey",
    "TxState",
    "ack_for",
    "client_key",
    "response_destination",
    "same_flow",
    "server_key",
    "stamp_via",
]
