"""The asyncio edge around the sans-IO SIP core: UDP, TCP and TLS (RFC 3261 section 18).

It feeds the core with `receive(data, source, now)`, sends what `messages_to_send()`
returns, drains `next_event()` into a callback and re-arms one timer from
`get_timer()`. Every exception raised while handling one message is caught, counted
by reason, and the loop carries on: one bad packet never stops the gateway.

Stream connections are bounded so that a peer cannot hold the gateway's sockets or
memory: a cap on inbound connections (in all and per remote address), a deadline for
each message once its first byte arrived (and for the first message after connecting:
slowloris), an idle timeout, and a cap on bytes queued for a peer that does not read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import re
import ssl
from collections import Counter
from typing import Any, Callable, NamedTuple, Protocol

log = logging.getLogger("tonewall.sip")


RESOLVE_TTL_S = 60.0
"""How long a UDP next hop's resolved address is used before it is looked up again."""
RESOLVE_QUEUE = 32
"""Datagrams kept for a name not yet resolved (a stuck resolver must not grow memory)."""


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Peer(NamedTuple):
    """Where a message came from or goes to; connection_id pins a TCP/TLS connection."""

    transport: str
    host: str
    port: int
    connection_id: int | None = None


class SipCore(Protocol):
    """What the edge needs from the B2BUA (gateway/b2bua.py)."""

    def receive(self, data: bytes, source: Any, now: float) -> None: ...
    def messages_to_send(self) -> list[tuple[bytes, Any]]: ...
    def next_event(self) -> Any: ...
    def handle_timer(self, now: float) -> None: ...
    def get_timer(self) -> float | None: ...


class Framer(Protocol):
    """gateway.sip.framing.StreamFramer: bytes in, whole messages (bytes or parsed) out."""

    def feed(self, data: bytes) -> list[Any]: ...


REASON_PHRASES = {400: "Bad Request", 413: "Request Entity Too Large", 420: "Bad Extension",
                  505: "Version Not Supported", 513: "Message Too Large"}

_HEADER_ALIASES = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
_ANSWER_HEADERS = ("via", "from", "to", "call-id", "cseq")


def error_response(data: bytes, status: int) -> bytes | None:
    """A stateless error response to a request the parser refused, or None if unanswerable.

    RFC 3261 8.2.6.2 / 18.2.2: copy Via, From, To, Call-ID and CSeq; without a
    parsable Via there is nowhere to send it, so the caller counts a drop instead.
    """
    try:
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = head.split("\r\n")
    request_line = re.fullmatch(r"([A-Z]+) \S+ SIP/\d\.\d", lines[0])
    if not request_line or request_line.group(1) == "ACK":  # RFC 3261 17.2.1: never answer ACK
        return None
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            continue
        key = _HEADER_ALIASES.get(name.lower(), name.lower())
        if key in _ANSWER_HEADERS:
            found.setdefault(key, []).append(f"{name}:{value}")
    if any(key not in found for key in _ANSWER_HEADERS):
        return None
    if not re.match(r"\s*SIP/2\.0/[A-Za-z]+\s+\S+;.*branch=", found["via"][0].partition(":")[2]):
        return None
    if not re.fullmatch(r"\s*\d+\s+[A-Za-z]+\s*", found["cseq"][0].partition(":")[2]):
        return None
    phrase = REASON_PHRASES.get(status, "Bad Request")
    out = [f"SIP/2.0 {status} {phrase}"]
    for key in _ANSWER_HEADERS:
        out.extend(found[key] if key == "via" else found[key][:1])
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")


KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE",
                           "PRACK", "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH"})


def message_label(message: Any) -> tuple[str, str]:
    """("request", METHOD) or ("response", "2xx") for counting; unknown methods fold into "other"."""
    if isinstance(message, (bytes, bytearray)):
        if message.startswith(b"SIP/2.0 "):
            return "response", chr(message[8]) + "xx" if len(message) > 8 and 49 <= message[8] <= 54 else "invalid"
        method = bytes(message[:message.find(b" ")]).decode("ascii", "replace")
    elif hasattr(message, "method"):
        method = message.method
    else:
        return "response", f"{int(getattr(message, 'status', 0)) // 100}xx"
    return "request", method if method in KNOWN_METHODS else "other"


def _exception_reason(exc: BaseException) -> str:
    return type(exc).__name__


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.drops["udp_socket_error"] += 1


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection with its own framer (RFC 3261 18.3: Content-Length frames)."""

    def __init__(self, owner: SipTransport, kind: str, outbound_key: tuple[str, str, int] | None = None) -> None:
        self.owner = owner
        self.kind = kind
        self.connection_id = owner._new_connection_id()
        self.framer = owner.framer_factory()
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.outbound_key = outbound_key
        self.pending: list[bytes] = []
        self.closed = False
        now = owner._loop.time()
        self.last_activity_at = now
        """Loop time of the last byte received or sent (idle timeout)."""
        self.message_since: float | None = None if outbound_key else now
        """Loop time since which a message is incomplete; an inbound peer owes its first one from connect."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername") or ("", 0)
        self.remote = (peername[0], peername[1])
        if self.outbound_key is None and not self.owner._admit(self):
            self.closed = True
            transport.abort()
            return
        self.owner._connection_opened(self)
        for data in self.pending:
            self.send(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self.owner._loop.time()
        self.last_activity_at = now
        try:
            messages = self.framer.feed(data)
        except ValueError as exc:
            self.owner.drops[f"{self.kind}_framing:{_exception_reason(exc)}"] += 1
            self.close()
            return
        buffered = getattr(self.framer, "buffered_bytes", 0)
        if messages or not buffered:
            self.message_since = now if buffered else None
        elif self.message_since is None:
            self.message_since = now
        pongs = self.framer.take_pongs() if hasattr(self.framer, "take_pongs") else b""
        if pongs:
            self.send(pongs)
        for message in messages:
            if self.closed:
                return
            self.owner._stream_message(self, message)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner._connection_closed(self)
        if self.remote[1] and not self.owner._closed:
            # RFC 3261 17.1.4: transactions riding this flow learn it is gone.
            self.owner._report_transport_failure(self.kind, self.remote[0], self.remote[1], self.connection_id)

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)
            self.last_activity_at = self.owner._loop.time()
            if self.transport.get_write_buffer_size() > self.owner.max_write_buffer_bytes:
                # A peer that does not read would make us buffer without bound.
                self.owner.drops[f"{self.kind}_write_backlog"] += 1
                self.abort()
        else:
            self.owner.drops["send_on_closed_connection"] += 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding what is queued for it."""
        if self.transport is not None:
            self.transport.abort()


class SipTransport:
    """SIP over UDP, TCP and TLS for one core; `drops` counts every refused input by reason."""

    def __init__(
        self,
        core: SipCore,
        *,
        framer_factory: Callable[[], Framer],
        max_message_bytes: int = 65535,
        on_event: Callable[[Any], None] | None = None,
        client_ssl: ssl.SSLContext | None = None,
        server_ssl: ssl.SSLContext | None = None,
        peer_type: Callable[..., Any] = Peer,
        max_connections: int = 1024,
        max_connections_per_host: int = 256,
        message_timeout_s: float = 32.0,
        idle_timeout_s: float | None = 600.0,
        max_write_buffer_bytes: int = 1 << 20,
    ) -> None:
        self.core = core
        self.framer_factory = framer_factory
        self.max_message_bytes = max_message_bytes
        self.on_event = on_event or (lambda event: None)
        self.client_ssl = client_ssl
        self.server_ssl = server_ssl
        self.peer_type = peer_type
        self.max_connections = max_connections
        """Inbound TCP/TLS connections open at once; more are refused."""
        self.max_connections_per_host = max_connections_per_host
        """Inbound connections from one remote address."""
        self.message_timeout_s = message_timeout_s
        """A started message (and an inbound peer's first one) must be whole within this (64*T1)."""
        self.idle_timeout_s = idle_timeout_s
        """A connection with no byte either way for this long is closed; None keeps it."""
        self.max_write_buffer_bytes = max_write_buffer_bytes
        """Bytes queued for a peer that does not read before its connection is dropped."""
        self.drops: Counter[str] = Counter()
        """Refused input and failed sends by reason; read by the metrics exporter."""
        self.received = 0
        self.sent = 0
        self.messages: Counter[tuple[str, str, str]] = Counter()
        """(direction "in"|"out", "request"|"response", method or status class) -> count."""
        self._loop = asyncio.get_event_loop()
        self._udp: _Datagram | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: dict[int, _Stream] = {}
        self._by_remote: dict[tuple[str, str, int], _Stream] = {}
        self._next_connection_id = 0
        self._inbound_by_host: Counter[str] = Counter()
        self._sweeper: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._resolved: dict[str, tuple[str, float]] = {}
        """UDP next hops named by a DNS name: name -> (IPv4 address, expiry on the loop clock)."""
        self._resolving: dict[tuple[str, int], list[bytes]] = {}
        """Datagrams waiting for their destination name to resolve."""
        self._resolve_tasks: set[asyncio.Task[None]] = set()
        self.addresses: dict[str, tuple[str, int]] = {}
        """Bound addresses by transport, for logs and tests (port 0 resolved)."""

    # ---- lifecycle

    async def start(self, udp: tuple[str, int] | None = None, tcp: tuple[str, int] | None = None,
                    tls: tuple[str, int] | None = None) -> None:
        """Bind the listeners that are given; port 0 picks a free port."""
        loop = self._loop
        if udp is not None:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Datagram(self), local_addr=udp)
            self._udp = protocol
            self.addresses["udp"] = transport.get_extra_info("sockname")[:2]
        if tcp is not None:
            server = await loop.create_server(lambda: _Stream(self, "tcp"), tcp[0], tcp[1],
                                              reuse_address=True)
            self._servers.append(server)
            self.addresses["tcp"] = server.sockets[0].getsockname()[:2]
        if tls is not None:
            if self.server_ssl is None:
                raise ValueError("TLS listener needs a server SSL context")
            server = await loop.create_server(lambda: _Stream(self, "tls"), tls[0], tls[1],
                                              ssl=self.server_ssl, reuse_address=True,
                                              ssl_handshake_timeout=self.message_timeout_s)
            self._servers.append(server)
            self.addresses["tls"] = server.sockets[0].getsockname()[:2]
        if self._servers:
            self._arm_sweeper()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        resolving = list(self._resolve_tasks)
        for task in resolving:
            task.cancel()
        await asyncio.gather(*resolving, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            conn.close()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, OSError):
                pass

    # ---- input

    def _feed(self, data: Any, source: Any) -> None:
        """Hand one message to the core; any exception is one counted drop, never a crash."""
        self.received += 1
        self.messages[("in", *message_label(data))] += 1
        try:
            self.core.receive(data, source, self._loop.time())
        except ValueError as exc:
            status = getattr(exc, "status", None) or 400
            answer = error_response(data, status) if isinstance(data, bytes) else None
            if answer is not None:
                self.drops[f"{source.transport}_answered_{status}"] += 1
                self._send(answer, source)
            else:
                self.drops[f"{source.transport}_malformed"] += 1
        except Exception as exc:  # one message must never take the loop down
            self.drops[f"core_error:{_exception_reason(exc)}"] += 1
            log.warning("SIP core raised %s handling a message from %s", _exception_reason(exc), source.transport)
        self.pump()

    def _datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = self.peer_type("udp", addr[0], addr[1], None)
        if data.strip(b"\r\n") == b"":  # RFC 5626 3.5.1: CRLF keep-alive
            return
        if len(data) > self.max_message_bytes:
            answer = error_response(data, 513)
            self.drops["udp_oversized"] += 1
            if answer is not None:
                self._send(answer, source)
            return
        self._feed(data, source)

    def _stream_message(self, conn: _Stream, message: Any) -> None:
        """A framed message goes to the core as the framer gave it (parsed once, not re-serialised)."""
        self._feed(message, self.peer_type(conn.kind, conn.remote[0], conn.remote[1], conn.connection_id))

    # ---- output

    def pump(self) -> None:
        """Send what the core has queued, hand its events out and re-arm its timer."""
        if self._closed:
            return
        try:
            for data, destination in self.core.messages_to_send():
                self._send(data, destination)
            while (event := self.core.next_event()) is not None:
                try:
                    self.on_event(event)
                except Exception as exc:
                    self.drops[f"event_handler_error:{_exception_reason(exc)}"] += 1
                    # The type only: events carry caller keys, and a message or traceback could repeat them.
                    log.warning("event handler raised %s", _exception_reason(exc))
        except Exception as exc:
            self.drops[f"core_error:{_exception_reason(exc)}"] += 1
            log.warning("SIP core raised %s while draining", _exception_reason(exc))
        self._arm_timer()

    def _arm_timer(self) -> None:
        try:
            when = self.core.get_timer()
        except Exception as exc:
            self.drops[f"core_error:{_exception_reason(exc)}"] += 1
            when = None
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self._loop.time())
        except Exception as exc:
            self.drops[f"core_error:{_exception_reason(exc)}"] += 1
            log.warning("SIP core raised %s in a timer", _exception_reason(exc))
        self.pump()

    def _send(self, data: bytes, destination: Any) -> None:
        kind, host, port = destination[0], destination[1], destination[2]
        connection_id = destination[3] if len(destination) > 3 else None
        self.sent += 1
        self.messages[("out", *message_label(data))] += 1
        if kind == "udp":
            if self._udp is None or self._udp.transport is None:
                self.drops["send_no_udp"] += 1
                return
            if not _is_ip_literal(host):
                address = self._resolved.get(host)
                if address is None or address[1] < self._loop.time():
                    # Expired: refresh in the background, keep sending to the last address meanwhile.
                    self._send_udp_resolving(None if address is not None else data, host, port)
                    if address is None:
                        return
                host = address[0]
            self._udp.transport.sendto(data, (host, port))
            return
        conn = self._connections.get(connection_id) if connection_id is not None else None
        if conn is None or conn.closed:
            conn = self._by_remote.get((kind, host, port))
        if conn is None or conn.closed:
            conn = self._connect(kind, host, port)
            if conn is None:
                return
        conn.send(data)

    def _send_udp_resolving(self, data: bytes | None, host: str, port: int) -> None:
        """RFC 3263 4.2: a UDP destination named by a host name goes to its address record.

        The datagram endpoint takes addresses only; names resolve off the loop and are
        cached for RESOLVE_TTL_S (an expired address is used while it is refreshed). Until a
        first answer, at most RESOLVE_QUEUE datagrams wait (retransmissions repeat them
        anyway). A name that does not resolve, with no address known, is a transport error (503).
        """
        waiting = self._resolving.get((host, port))
        if waiting is not None:
            if data is not None:
                if len(waiting) < RESOLVE_QUEUE:
                    waiting.append(data)
                else:
                    self.drops["resolve_queue_full"] += 1
            return
        self._resolving[(host, port)] = [] if data is None else [data]

        async def resolve() -> None:
            try:
                infos = await self._loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
                address = infos[0][4][0]
            except (OSError, IndexError, UnicodeError) as exc:
                self.drops[f"resolve_failed:{_exception_reason(exc)}"] += 1
                queued = self._resolving.pop((host, port), [])
                if host not in self._resolved or queued:
                    self._report_transport_failure("udp", host, port)
                return
            self._resolved[host] = (address, self._loop.time() + RESOLVE_TTL_S)
            for datagram in self._resolving.pop((host, port), ()):
                if self._udp is not None and self._udp.transport is not None:
                    self._udp.transport.sendto(datagram, (address, port))

        task = self._loop.create_task(resolve())
        self._resolve_tasks.add(task)
        task.add_done_callback(self._resolve_tasks.discard)

    def _connect(self, kind: str, host: str, port: int) -> _Stream | None:
        """RFC 3261 18.1.1: open a connection for a request when none is open to that peer."""
        if kind == "tls" and self.client_ssl is None:
            self.drops["send_no_tls_context"] += 1
            return None
        if kind not in ("tcp", "tls"):
            self.drops["send_unknown_transport"] += 1
            return None
        conn = _Stream(self, kind, outbound_key=(kind, host, port))
        self._by_remote[(kind, host, port)] = conn

        async def open_connection() -> None:
            try:
                await self._loop.create_connection(
                    lambda: conn, host, port,
                    ssl=self.client_ssl if kind == "tls" else None,
                    server_hostname=host if kind == "tls" else None)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                self.drops[f"connect_failed:{_exception_reason(exc)}"] += 1
                conn.closed = True
                if self._by_remote.get((kind, host, port)) is conn:
                    del self._by_remote[(kind, host, port)]
                self._report_transport_failure(kind, host, port)

        self._loop.create_task(open_connection())
        return conn

    def _report_transport_failure(self, kind: str, host: str, port: int, connection_id: int | None = None) -> None:
        """RFC 3261 8.1.3.1: a transport error on a request is an immediate 503, not a 32 s Timer B."""
        fail = getattr(self.core, "transport_failed", None)
        if fail is None:
            return
        try:
            fail(self.peer_type(kind, host, port, connection_id), self._loop.time())
        except Exception as exc:  # one failure report must never take the loop down
            self.drops[f"core_error:{_exception_reason(exc)}"] += 1
        self.pump()

    # ---- connection registry and limits

    def _new_connection_id(self) -> int:
        self._next_connection_id += 1
        return self._next_connection_id

    def _admit(self, conn: _Stream) -> bool:
        """Whether an inbound connection fits under the caps; counts a drop when it does not."""
        host = conn.remote[0]
        inbound = sum(self._inbound_by_host.values())
        if inbound >= self.max_connections:
            self.drops[f"{conn.kind}_connection_limit"] += 1
            return False
        if self._inbound_by_host[host] >= self.max_connections_per_host:
            self.drops[f"{conn.kind}_host_connection_limit"] += 1
            return False
        self._inbound_by_host[host] += 1
        return True

    def _connection_opened(self, conn: _Stream) -> None:
        self._connections[conn.connection_id] = conn
        self._by_remote.setdefault((conn.kind, conn.remote[0], conn.remote[1]), conn)

    def _connection_closed(self, conn: _Stream) -> None:
        if self._connections.pop(conn.connection_id, None) is not None and conn.outbound_key is None:
            host = conn.remote[0]
            self._inbound_by_host[host] -= 1
            if self._inbound_by_host[host] <= 0:
                del self._inbound_by_host[host]
        for key in [key for key, value in self._by_remote.items() if value is conn]:
            del self._by_remote[key]

    def sweep(self, now: float) -> None:
        """Close connections past their message deadline or idle timeout (the periodic timer calls this)."""
        for conn in list(self._connections.values()):
            if conn.closed:
                continue
            if conn.message_since is not None and now - conn.message_since >= self.message_timeout_s:
                self.drops[f"{conn.kind}_message_timeout"] += 1
                conn.abort()
            elif self.idle_timeout_s is not None and now - conn.last_activity_at >= self.idle_timeout_s:
                self.drops[f"{conn.kind}_idle_timeout"] += 1
                conn.close()

    def _arm_sweeper(self) -> None:
        period_s = max(0.5, self.message_timeout_s / 4)
        self._sweeper = self._loop.call_later(period_s, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweeper = None
        if self._closed:
            return
        try:
            self.sweep(self._loop.time())
        finally:
            self._arm_sweeper()

    @property
    def connection_count(self) -> int:
        return len(self._connections)
