"""RTP load generator: N PCMU streams at 50 packets/s with send timestamps in the payload.

Each stream sends from its own "caller" socket to a relay target and is received on
its own "agent" socket. Phases are spread evenly over the 20 ms period; a 1 ms tick
sends every packet that is due, stamping `time.time_ns()` into the payload just
before `sendto`. The receiver reads kernel receive timestamps (SO_TIMESTAMPNS, the
same realtime clock), so one-way latency does not include the generator's own delays.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import numpy as np

PAYLOAD_BYTES = 160
PERIOD_NS = 20_000_000
TICK_S = 0.001
_STAMP = struct.Struct("!QI")
_RTP = struct.Struct("!BBHII")
_TSNS = struct.Struct("qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def bind_udp(host: str = "127.0.0.1", rcvbuf: int = 1 << 20) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    s.setblocking(False)
    return s


class LoadGenerator:
    """Sends and receives `n_streams` RTP streams; `run()` returns counts and latencies."""

    def __init__(self, n_streams: int, host: str = "127.0.0.1", sample_every: int = 5) -> None:
        self.n = n_streams
        self.callers = [bind_udp(host) for _ in range(n_streams)]
        self.agents = [bind_udp(host) for _ in range(n_streams)]
        self.sampled = [i % sample_every == 0 for i in range(n_streams)]
        """Streams whose latency is measured; the others are only counted (cheaper receiver)."""
        for s, on in zip(self.agents, self.sampled):
            if on:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.filler = bytes([0xFF]) * (PAYLOAD_BYTES - _STAMP.size)

    def close(self) -> None:
        for s in self.callers + self.agents:
            s.close()

    async def run(self, targets: list[tuple[str, int]], duration_s: float, warmup_s: float = 1.0) -> dict:
        """Send for `duration_s`; stats cover packets sent after `warmup_s`."""
        loop = asyncio.get_running_loop()
        n = self.n
        max_packets = int((duration_s + 1) * 50 * n) + n
        lat_ns = np.zeros(max_packets, dtype=np.int64)
        recv_count = [0]
        seqs = [0] * n
        start_ns = time.time_ns()
        measure_from_ns = start_ns + int(warmup_s * 1e9)
        due = [start_ns + (i * PERIOD_NS) // n for i in range(n)]
        sent = [0, 0]  # all, measured
        end_ns = start_ns + int(duration_s * 1e9)
        done = loop.create_future()
        ptr = [0]
        sends = [s.sendto for s in self.callers]
        headers = [bytearray(PAYLOAD_BYTES + 12) for _ in range(n)]
        for h in headers:
            h[12 + _STAMP.size:] = self.filler

        def tick() -> None:
            now = time.time_ns()
            i = ptr[0]
            budget = n
            while due[i] <= now and budget and due[i] < end_ns:
                seq = seqs[i]
                seqs[i] = (seq + 1) & 0xFFFF
                pkt = headers[i]
                _RTP.pack_into(pkt, 0, 0x80, 0, seq, (seq * 160) & 0xFFFFFFFF, i + 1)
                t = time.time_ns()
                _STAMP.pack_into(pkt, 12, t, i)
                try:
                    sends[i](pkt, targets[i])
                    sent[0] += 1
                    if t >= measure_from_ns:
                        sent[1] += 1
                except OSError:
                    pass
                due[i] += PERIOD_NS
                i = (i + 1) % n
                budget -= 1
            ptr[0] = i
            if now < end_ns:
                loop.call_later(TICK_S, tick)
            elif not done.done():
                loop.call_later(0.3, done.set_result, None)  # let in-flight packets land

        def readable(sock: socket.socket) -> None:
            while True:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(2048, 64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue
                if len(data) < 12 + _STAMP.size:
                    continue
                t_send, _ = _STAMP.unpack_from(data, 12)
                if t_send < measure_from_ns:
                    continue
                k_ns = 0
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = _TSNS.unpack_from(payload)
                        k_ns = sec * 1_000_000_000 + nsec
                c = recv_count[0]
                if c < max_packets:
                    lat_ns[c] = (k_ns or time.time_ns()) - t_send
                recv_count[0] = c + 1

        buf = bytearray(2048)

        def counting(sock: socket.socket) -> None:
            while True:
                try:
                    n_bytes = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue
                if n_bytes >= 12 + _STAMP.size and _STAMP.unpack_from(buf, 12)[0] >= measure_from_ns:
                    counted[0] += 1

        counted = [0]
        for s, on in zip(self.agents, self.sampled):
            loop.add_reader(s.fileno(), readable if on else counting, s)
        loop.call_soon(tick)
        try:
            await done
        finally:
            for s in self.agents:
                loop.remove_reader(s.fileno())
        got = min(recv_count[0], max_packets)
        lat = np.sort(lat_ns[:got]) / 1e3
        q = (lambda p: float(lat[min(len(lat) - 1, int(p * len(lat)))]) if len(lat) else float("nan"))
        received = recv_count[0] + counted[0]
        return {
            "streams": n,
            "sent": sent[0],
            "measured_sent": sent[1],
            "measured_received": received,
            "latency_samples": int(len(lat)),
            "loss_pct": 100.0 * (1 - received / sent[1]) if sent[1] else float("nan"),
            "lat_p50_us": q(0.50),
            "lat_p99_us": q(0.99),
            "lat_p999_us": q(0.999),
            "lat_max_us": float(lat[-1]) if len(lat) else float("nan"),
        }
