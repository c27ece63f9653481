"""A UDP socket that records every RTP packet it gets, for bit-exact checks of relayed audio."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """RFC 3550 5.1 fixed header (CSRCs and extension skipped); None for non-RTP."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data) - (data[-1] if b0 & 0x20 and data else 0)
    return RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[offset:end])


class RtpSink:
    """Records packets on 127.0.0.1:port in a thread; `audio(pt)` joins payloads in sequence order."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[RtpPacket, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            packet = parse_rtp(data)
            if packet is not None:
                self.packets.append((packet, addr))

    def audio(self, payload_type: int = 0) -> bytes:
        """Payloads of one payload type in RTP sequence order (wrap-safe for short captures)."""
        chosen = [p for p, _ in self.packets if p.payload_type == payload_type]
        if not chosen:
            return b""
        first = chosen[0].sequence
        chosen.sort(key=lambda p: (p.sequence - first) & 0xFFFF)
        return b"".join(p.payload for p in chosen)

    def wait_for(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.packets) >= count:
                return True
            time.sleep(0.02)
        return len(self.packets) >= count

    def __enter__(self) -> RtpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
