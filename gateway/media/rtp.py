"""RTP and RTCP packets (RFC 3550): parse, serialise, sequence-number arithmetic.

The relay's hot path never builds an `RtpPacket`: it reads the fixed header with
`RTP_HEADER` and `rtp_payload_bounds`, and rewrites one byte for a payload-type
remap. `RtpPacket` is the full, checked model for tests, the capture path and tools.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_HEADER = struct.Struct("!BBHII")
"""Fixed 12-byte RTP header: V/P/X/CC, M/PT, sequence, timestamp, SSRC."""
RTCP_HEADER = struct.Struct("!BBH")
"""First word of every RTCP packet: V/P/count, packet type, length in words minus one."""

RTP_VERSION = 2
SEQ_MODULO = 1 << 16
TS_MODULO = 1 << 32


class RtpError(ValueError):
    """Malformed RTP; `reason` is a short fixed label the relay counts drops by."""

    reason = "malformed"


class RtpTooShort(RtpError):
    reason = "short"

    def __init__(self) -> None:
        super().__init__("RTP packet is too short")


class RtpBadVersion(RtpError):
    reason = "version"

    def __init__(self) -> None:
        super().__init__("RTP packet has invalid version")


class RtpBadPadding(RtpError):
    reason = "padding"

    def __init__(self) -> None:
        super().__init__("RTP packet has invalid padding")


class RtpBadExtension(RtpError):
    reason = "extension"

    def __init__(self) -> None:
        super().__init__("RTP header extension is truncated")


class RtcpError(ValueError):
    """Malformed RTCP compound packet."""

    reason = "rtcp"

    def __init__(self, message: str = "RTCP packet is malformed") -> None:
        super().__init__(message)


def rtp_payload_bounds(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Start and end offsets of the payload, validating the header (RFC 3550 5.1)."""
    n = len(data)
    if n < 12:
        raise RtpTooShort()
    b0 = data[0]
    if b0 >> 6 != RTP_VERSION:
        raise RtpBadVersion()
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        # RFC 3550 5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the words.
        if n < start + 4:
            raise RtpBadExtension()
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    if start > n:
        raise RtpTooShort() if not b0 & 0x10 else RtpBadExtension()
    end = n
    if b0 & 0x20:
        # RFC 3550 5.1: the last octet counts the padding octets, itself included.
        pad = data[n - 1]
        if pad == 0 or start + pad > n:
            raise RtpBadPadding()
        end = n - pad
    return start, end


@dataclass
class RtpPacket:
    """One RTP packet (RFC 3550 5.1); `bytes(packet)` serialises it."""

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    """Header-extension profile word; None when the X bit is clear."""
    extension_data: bytes = b""
    """Header-extension body, a multiple of 4 bytes."""
    padding_size: int = 0
    """Padding octets appended (RFC 3550 5.1), the count octet included."""

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse a whole datagram; raises an `RtpError` subclass when malformed."""
        start, end = rtp_payload_bounds(data)
        b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
        cc = b0 & 0x0F
        csrc = list(struct.unpack_from(f"!{cc}I", data, 12)) if cc else []
        profile = None
        ext = b""
        if b0 & 0x10:
            offset = 12 + 4 * cc
            profile = (data[offset] << 8) | data[offset + 1]
            ext = bytes(data[offset + 4 : start])
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[start:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension_data=ext,
            padding_size=len(data) - end,
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > 15:
            raise ValueError("RTP packet has more than 15 CSRCs")
        if len(self.extension_data) % 4:
            raise ValueError("RTP header extension is not word-aligned")
        if not 0 <= self.padding_size <= 255:
            raise ValueError("RTP padding size is out of range")
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            b0 |= 0x20
        if self.extension_profile is not None:
            b0 |= 0x10
        parts = [
            RTP_HEADER.pack(
                b0,
                (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        parts.extend(struct.pack("!I", c) for c in self.csrc)
        if self.extension_profile is not None:
            parts.append(struct.pack("!HH", self.extension_profile, len(self.extension_data) // 4))
            parts.append(self.extension_data)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


def with_payload_type(data: bytes, payload_type: int) -> bytes:
    """The same datagram with the PT field replaced and the marker bit kept."""
    return b"%c%c" % (data[0], (data[1] & 0x80) | payload_type) + data[2:]


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """RFC 5761 4: a second octet of 192-223 is RTCP when RTP and RTCP share a port."""
    return len(data) >= 2 and 192 <= data[1] <= 223


@dataclass(frozen=True)
class RtcpPacket:
    """One packet of an RTCP compound datagram (RFC 3550 6.4-6.6), body kept raw."""

    packet_type: int
    count: int
    """The five-bit RC/SC/subtype field."""
    body: bytes
    """Everything after the first word, padding removed."""

    def __bytes__(self) -> bytes:
        if len(self.body) % 4:
            raise ValueError("RTCP body is not word-aligned")
        return RTCP_HEADER.pack((RTP_VERSION << 6) | (self.count & 0x1F), self.packet_type, len(self.body) // 4) + self.body

    @property
    def sender_ssrc(self) -> int | None:
        """SSRC of the sender for SR, RR, BYE-with-source, APP and feedback packets."""
        return struct.unpack_from("!I", self.body)[0] if len(self.body) >= 4 else None


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Split and validate a compound RTCP datagram (RFC 3550 A.2 validity checks)."""
    n = len(data)
    if n < 4:
        raise RtcpError("RTCP packet is too short")
    packets = []
    offset = 0
    while offset < n:
        if n - offset < 4:
            raise RtcpError("RTCP packet is truncated")
        b0, pt, words = RTCP_HEADER.unpack_from(data, offset)
        if b0 >> 6 != RTP_VERSION:
            raise RtcpError("RTCP packet has invalid version")
        if not 192 <= pt <= 223:
            raise RtcpError("RTCP packet type is out of range")
        end = offset + 4 * (words + 1)
        if end > n:
            raise RtcpError("RTCP packet is truncated")
        body_end = end
        if b0 & 0x20:
            # RFC 3550 6.4.1 / A.2: only the last packet of a compound may be padded.
            if end != n:
                raise RtcpError("RTCP padding before the last packet")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpError("RTCP packet has invalid padding")
            body_end = end - pad
        packets.append(RtcpPacket(pt, b0 & 0x1F, bytes(data[offset + 4 : body_end])))
        offset = end
    # RFC 3550 A.2: the first packet of a compound is an SR or RR (unencrypted case).
    if packets[0].packet_type not in (200, 201):
        raise RtcpError("RTCP compound does not start with SR or RR")
    return packets


_WORD = struct.Struct("!I")
SR_SENDER_INFO_BYTES = 24
"""SR body before its report blocks: sender SSRC, NTP and RTP timestamps, packet and octet counts."""
REPORT_BLOCK_BYTES = 24


def translate_rtcp(data: bytes, withheld_sent: dict[int, list[int]], withheld_seen: dict[int, list[int]]) -> bytes:
    """A validated compound as the receiver of a renumbered stream must see it (RFC 3550 7.1).

    A translator that withholds packets of a stream renumbers the rest (no gap shows) and so
    must also take them out of the sender's SR packet and octet counts (`withheld_sent`: this
    side's SSRC -> [packets, payload octets] withheld), or the counts tell when and how long
    something was withheld; report blocks about the other side's streams get the withheld
    packets back into their extended highest sequence number (`withheld_seen`), so that side's
    view of its own stream holds. Counts wrap modulo 2^32 as the fields do.
    """
    out = bytearray(data)
    n = len(out)
    offset = 0
    while offset + 4 <= n:
        b0, pt, words = RTCP_HEADER.unpack_from(out, offset)
        end = min(offset + 4 * (words + 1), n)
        if b0 & 0x20 and end == n:
            end -= out[n - 1]  # padding (validated by parse_rtcp)
        blocks = -1
        if pt == 200 and end - offset >= 4 + SR_SENDER_INFO_BYTES:
            counts = withheld_sent.get(_WORD.unpack_from(out, offset + 4)[0])
            if counts is not None:
                at = offset + 4 + 16
                _WORD.pack_into(out, at, (_WORD.unpack_from(out, at)[0] - counts[0]) % TS_MODULO)
                _WORD.pack_into(out, at + 4, (_WORD.unpack_from(out, at + 4)[0] - counts[1]) % TS_MODULO)
            blocks = offset + 4 + SR_SENDER_INFO_BYTES
        elif pt == 201:
            blocks = offset + 8
        if blocks >= 0 and withheld_seen:
            for i in range(b0 & 0x1F):
                at = blocks + i * REPORT_BLOCK_BYTES
                if at + REPORT_BLOCK_BYTES > end:
                    break
                counts = withheld_seen.get(_WORD.unpack_from(out, at)[0])
                if counts is not None:
                    _WORD.pack_into(out, at + 8, (_WORD.unpack_from(out, at + 8)[0] + counts[0]) % TS_MODULO)
        offset += 4 * (words + 1)
    return bytes(out)


def seq_add(seq: int, n: int) -> int:
    """Sequence number `n` steps after `seq`, modulo 2**16."""
    return (seq + n) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance from `b` to `a` in (-32768, 32767]: how far `a` is ahead of `b`."""
    d = (a - b) & 0xFFFF
    return d - SEQ_MODULO if d > 0x8000 else d


def seq_gt(a: int, b: int) -> bool:
    """True when `a` is newer than `b`, allowing for wrap-around (RFC 3550 A.1)."""
    return seq_diff(a, b) > 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance between two RTP timestamps, modulo 2**32."""
    d = (a - b) & 0xFFFFFFFF
    return d - TS_MODULO if d > 0x80000000 else d
