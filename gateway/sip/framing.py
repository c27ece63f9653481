"""SIP over a byte stream (TCP/TLS): cut the stream into messages (RFC 3261 18.3).

Drives: `feed()` with whatever the socket delivered. Safe state: after a
`SipParseError` the framer is poisoned (the stream has lost its framing) and
the edge must close the connection; every later `feed` raises again.
"""

from __future__ import annotations

import re

from gateway.sip.message import (
    DEFAULT_LIMITS,
    Limits,
    SipParseError,
    SipRequest,
    SipResponse,
    content_length,
    parse_head,
)

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_PING = b"\r\n\r\n"


class StreamFramer:
    """Receive buffer for one stream connection: bytes in, whole SIP messages out."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits
        self._buf = bytearray()
        self._scan_from = 0
        self._pending: SipRequest | SipResponse | None = None
        self._body_len = 0
        self._error: SipParseError | None = None
        self._pongs = 0

    def take_pongs(self) -> bytes:
        """CRLF replies owed for CRLFCRLF keep-alive pings (RFC 5626 3.5.1); empty when none."""
        n, self._pongs = self._pongs, 0
        return b"\r\n" * n

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[SipRequest | SipResponse]:
        """Add received bytes; return every message completed by them, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[SipRequest | SipResponse] = []
        try:
            while True:
                msg = self._next()
                if msg is None:
                    return out
                out.append(msg)
        except SipParseError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _next(self) -> SipRequest | SipResponse | None:
        buf = self._buf
        if self._pending is None:
            # Between messages: CRLFCRLF is a ping, a lone CRLF a pong (RFC 5626 3.5.1).
            while buf[:1] in (b"\r", b"\n"):
                if buf.startswith(_PING):
                    del buf[:4]
                    self._pongs += 1
                elif buf.startswith(b"\r\n"):
                    if len(buf) < 4 and _PING.startswith(bytes(buf)):
                        return None  # may still become a ping
                    del buf[:2]
                elif buf.startswith(b"\n"):
                    del buf[:1]
                else:
                    return None  # lone CR: wait for its LF
                self._scan_from = 0
            if not buf:
                return None
            m = _HEADER_END.search(buf, max(0, self._scan_from - 3))
            if m is None:
                self._scan_from = len(buf)
                head_limit = self.limits.max_header_line_bytes * (self.limits.max_headers + 1)
                if len(buf) > min(self.limits.max_message_bytes, head_limit):
                    raise SipParseError("SIP message header is too large", 513)
                return None
            msg = parse_head(bytes(buf[: m.start()]), self.limits)
            length = content_length(msg.headers)
            if length is None:
                raise SipParseError("SIP stream message has no Content-Length")  # RFC 3261 18.3
            if length > self.limits.max_body_bytes:
                raise SipParseError("SIP body is too large", 413)
            del buf[: m.end()]
            self._scan_from = 0
            self._pending = msg
            self._body_len = length
        if len(buf) < self._body_len:
            return None
        msg = self._pending
        msg.body = bytes(buf[: self._body_len])
        del buf[: self._body_len]
        self._pending = None
        return msg
