"""tcpdump on loopback as a witness of what really crossed the wire (RTP to peers that record nothing).

PEERS.md trap handled here: tcpdump drops the last packets when stopped unless it
runs with `-U --immediate-mode`. The pcap is read here (libpcap format, Ethernet or
Linux cooked framing on `lo`) so a test needs neither tshark nor scapy.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_binary
from tests.peers.child import stop_group
from tests.peers.rtp_sink import RtpPacket, parse_rtp

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_RAW = 101


@dataclass(frozen=True)
class Datagram:
    """One captured UDP datagram."""

    time_s: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_pcap(path: Path) -> list[Datagram]:
    """UDP/IPv4 datagrams of a libpcap file, in capture order (other packets skipped)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    offset = 24
    out: list[Datagram] = []
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16: offset + 16 + caplen]
        offset += 16 + caplen
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            ip = frame[16:]
        elif linktype == LINKTYPE_RAW:
            ip = frame
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = 4 * (ip[0] & 0x0F)
        sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
        payload = ip[ihl + 8: ihl + length]
        when = sec + frac / (1e9 if nano else 1e6)
        out.append(Datagram(when, (socket.inet_ntoa(ip[12:16]), sport), (socket.inet_ntoa(ip[16:20]), dport),
                            payload))
    return out


def rtp_to(datagrams: list[Datagram], port: int) -> list[tuple[RtpPacket, Datagram]]:
    """RTP packets sent to `port` (RTCP on the same port is left out by its payload type range)."""
    found = []
    for datagram in datagrams:
        if datagram.dst[1] != port:
            continue
        packet = parse_rtp(datagram.payload)
        # RFC 5761 4: RTCP packet types 200-204 land on payload types 72-76 with the marker set.
        if packet is not None and not 72 <= (datagram.payload[1] & 0x7F) <= 76:
            found.append((packet, datagram))
    return found


class WireCapture:
    """tcpdump on `lo` with a BPF filter; a context manager, always stopped."""

    def __init__(self, path: Path, bpf: str) -> None:
        self.binary = require_binary("tcpdump")
        self.path = path
        # -Z: keep the capturing user, so the file can live in the test's private tmp dir.
        self.args = [self.binary, "-i", "lo", "-n", "-U", "--immediate-mode", "-s", "2048",
                     "-Z", pwd.getpwuid(os.getuid()).pw_name, "-w", str(path), bpf]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 5.0) -> WireCapture:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        # tcpdump writes the pcap file header once the capture is live.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.path.exists() and self.path.stat().st_size >= 24:
                return self
            time.sleep(0.02)
        err = b""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        self.stop()
        raise RuntimeError(f"tcpdump did not start: {err.decode(errors='replace')[-300:]}")

    def stop(self) -> list[Datagram]:
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(0.1)
            stop_group(self.proc, signal.SIGINT)
        return read_pcap(self.path) if self.path.exists() else []

    def __enter__(self) -> WireCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
