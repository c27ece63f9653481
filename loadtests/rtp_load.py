"""RTP load generators: N PCMU streams at 50 packets/s with send timestamps in the payload.

The measurement contract, shared by both generators: each stream is one call's
caller->agent direction, 160-byte PCMU every 20 ms, phases spread evenly over the 20 ms
period, per-stream SSRC (stream index + 1), sequence number and RTP timestamp (+160);
the payload starts with the send time (`time.time_ns()`, CLOCK_REALTIME) and the stream
index; one-way latency = kernel receive timestamp (SO_TIMESTAMPNS, the same clock) at the
agent side minus that send time, over packets sent after the warm-up; loss = packets
sent after the warm-up that never arrived.

`MmsgLoadGenerator` (the default in relay_bench.py): ONE caller socket sends every
stream's packets with `sendmmsg` (per-message destinations) and ONE agent socket that
every relay sends to is read with `recvmmsg`; numpy decodes the stamps. It costs a
fraction of a core at 1,000 streams, where `LoadGenerator` (a socket pair per stream,
one `sendto`/`recvmsg` per packet in Python) needed most of one and starved the relays.
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
        cpu0, wall0 = time.process_time(), time.monotonic()
        for s, on in zip(self.agents, self.sampled):
            loop.add_reader(s.fileno(), readable if on else counting, s)
        loop.call_soon(tick)
        try:
            await done
        finally:
            for s in self.agents:
                loop.remove_reader(s.fileno())
        gen_cpu = time.process_time() - cpu0
        wall_s = time.monotonic() - wall0
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
            "generator": "sockets",
            "gen_cpu_pct": round(100 * gen_cpu / wall_s, 1),
            "gen_cpu_s_per_mpkt": round(gen_cpu / max(1, sent[0]) * 1e6, 2),
        }


SEND_CHUNK = 16
"""At most this many messages per sendmmsg call (a tick at 1,000 streams is ~50). The send
time of a message inside a call is interpolated: if the generator is preempted during a
call, its later messages left later than that, and the error is bounded by the call's
length. 16 messages (~80 us unpreempted) bound it; 4 calls per tick cost ~1 % CPU."""
DRAIN_TICKS = 4
"""The mmsg receiver reads every this many ticks (and every tick from the end of sending)."""
STAMP_AT, STAMP_NIBBLES = 12, 16
"""Payload bytes 0-15 (after the 12-byte RTP header): the send stamp in ns, 4 bits per byte."""
IDX_AT, IDX_NIBBLES = 28, 6
"""Payload bytes 16-21: the stream index, 4 bits per byte."""
_NIBBLE = 0xF0
_BYTE_NIBBLES = [bytes([_NIBBLE | b >> 4, _NIBBLE | b & 0x0F]) for b in range(256)]
"""A byte as its two nibble bytes: encodes one stamp in ~2 us, a numpy round trip takes ~15."""


def encode_nibbles(values: np.ndarray, n_nibbles: int) -> np.ndarray:
    """Each value as `n_nibbles` bytes 0xF0 | nibble, most significant first (rows of uint8)."""
    shifts = np.arange(4 * (n_nibbles - 1), -1, -4, dtype=np.uint64)
    return ((values[:, None] >> shifts) & np.uint64(0x0F)).astype(np.uint8) | _NIBBLE


def decode_nibbles(rows: np.ndarray) -> np.ndarray:
    """Inverse of `encode_nibbles` over rows of bytes (uint64 values)."""
    n_nibbles = rows.shape[1]
    shifts = np.arange(4 * (n_nibbles - 1), -1, -4, dtype=np.uint64)
    return np.bitwise_or.reduce((rows & 0x0F).astype(np.uint64) << shifts, axis=1)


class _CallLog:
    """Each sendmmsg call of a run: its stamp, first row, row count, and clock before/after."""

    def __init__(self, capacity: int) -> None:
        self.n = 0
        self.arrays = np.zeros((5, capacity), dtype=np.int64)

    def add(self, stamp_ns: int, row: int, count: int, call_ns: int, done_ns: int) -> None:
        if self.n == self.arrays.shape[1]:
            self.arrays = np.concatenate([self.arrays, np.zeros_like(self.arrays)], axis=1)
        self.arrays[:, self.n] = (stamp_ns, row, count, call_ns, done_ns)
        self.n += 1

    def send_times(self, stamp: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """When each (stamp, stream index) message left: its call's start plus its share of
        the call (message k of m at k/m of the call's duration); -1 when no call matches."""
        stamps, rows, counts, calls, dones = self.arrays[:, :self.n]
        j = np.minimum(np.searchsorted(stamps, stamp), max(self.n - 1, 0))
        if not self.n:
            return np.full(len(stamp), -1, dtype=np.int64)
        k = idx - rows[j]
        ok = (stamps[j] == stamp) & (k >= 0) & (k < counts[j])
        return np.where(ok, calls[j] + k * (dones[j] - calls[j]) // np.maximum(counts[j], 1), -1)

    def ns_per_message(self) -> float:
        stamps, rows, counts, calls, dones = self.arrays[:, :self.n]
        return float((dones - calls).sum() / max(1, counts.sum()))

    def slow_share(self, factor: float = 4.0) -> float:
        """Share of messages sent in calls slower per message than `factor` x the median call:
        calls the generator was preempted in, whose interpolated send times are uncertain."""
        stamps, rows, counts, calls, dones = self.arrays[:, :self.n]
        if not self.n:
            return 0.0
        per_msg = (dones - calls) / np.maximum(counts, 1)
        slow = per_msg > factor * np.median(per_msg)
        return float(counts[slow].sum() / max(1, counts.sum()))


class MmsgLoadGenerator:
    """N streams from one sendmmsg socket to per-stream targets, received on one recvmmsg socket.

    All streams share the caller address (relays latch per leg, so one source is fine
    when each stream goes to its own relay port) and the agent address (the receiver
    tells streams apart by the stream index in the payload). A 1 ms tick sends every due
    packet; due streams form a contiguous range of rows (phases are in row order), so a
    tick is one sendmmsg call (two when the range wraps; more past `SEND_CHUNK`).

    Send time: every message of a call carries the call's stamp (a unique, increasing
    `time.time_ns()` read before the call), and the generator logs each call's clock just
    before and just after the syscall. The kernel sends the messages one after another
    inside the call (~4-5 us each on loopback here), so message k of m left at
    t_call + k/m * (t_done - t_call): the receiver finds the call by the stamp and the
    message by the stream index. One stamp for all would make the 50th message of a tick
    look ~200 us slower than the first.

    The stamp and the stream index are written one 4-bit nibble per payload byte as
    0xF0 | nibble: quiet mu-law codes (|x| <= 30 of 8031) that survive a relay that decodes
    and re-encodes G.711 (rtpengine with DTMF security), where raw bytes would not (0x7F
    comes back as 0xFF, and loud garbage could look like a tone). The receiver is drained
    every `DRAIN_TICKS` ticks (kernel timestamps make the read time irrelevant).
    """

    def __init__(self, n_streams: int, host: str = "127.0.0.1", rcvbuf_bytes: int = 32 << 20) -> None:
        from mmsg import MmsgReceiver, set_buffer

        self.n = n_streams
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_buffer(self.tx, socket.SO_SNDBUF, 4 << 20)
        self.tx.bind((host, 0))
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rcvbuf_bytes = set_buffer(self.rx, socket.SO_RCVBUF, rcvbuf_bytes)
        self.rx.bind((host, 0))
        self.rx.setblocking(False)
        self.receiver = MmsgReceiver(self.rx, batch=256, max_bytes=64)
        self.caller_address: tuple[str, int] = self.tx.getsockname()
        self.agent_address: tuple[str, int] = self.rx.getsockname()

    @property
    def callers(self) -> list[tuple[str, int]]:
        """Each stream's source address (the same for all)."""
        return [self.caller_address] * self.n

    @property
    def agents(self) -> list[tuple[str, int]]:
        """Each stream's destination at the agent side (the same for all)."""
        return [self.agent_address] * self.n

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    def run(self, targets: list[tuple[str, int]], duration_s: float, warmup_s: float = 2.0,
            drain_s: float = 0.3, send_chunk: int = SEND_CHUNK, min_sleep_s: float = 0.0) -> dict:
        """Send for `duration_s` (blocking); stats cover packets sent after `warmup_s`.

        `min_sleep_s` > 0: sleep at least that long every tick, even when behind (a
        real-time generator must not spin).
        """
        from mmsg import MmsgSender

        n = self.n
        size = 12 + PAYLOAD_BYTES
        rows = np.full((n, size), 0xFF, dtype=np.uint8)  # 0xFF: PCMU silence after the stamp
        rows[:, 0] = 0x80  # RFC 3550 5.1: V=2, no padding/extension/CSRC; M=0, PT 0 (PCMU)
        rows[:, 1] = 0
        fields = np.ndarray(n, dtype=np.dtype({"names": ["seq", "ts", "ssrc"], "formats": [">u2", ">u4", ">u4"],
                                              "offsets": [2, 4, 8], "itemsize": size}), buffer=rows)
        fields["ssrc"] = np.arange(1, n + 1)
        rows[:, IDX_AT:IDX_AT + IDX_NIBBLES] = encode_nibbles(np.arange(n, dtype=np.uint64), IDX_NIBBLES)
        seq_col, ts_col = fields["seq"], fields["ts"]
        stamp_cols = rows[:, STAMP_AT:STAMP_AT + STAMP_NIBBLES]
        sender = MmsgSender(self.tx, rows, list(targets))
        recv = self.receiver
        log = _CallLog(int((duration_s + drain_s + 1) / TICK_S) * 2)

        start_ns = time.time_ns() + 5_000_000
        measure_from_ns = start_ns + int(warmup_s * 1e9)
        end_ns = start_ns + int(duration_s * 1e9)
        drain_end_ns = end_ns + int(drain_s * 1e9)
        # Packet g (0, 1, ...) is stream g % n's packet number g // n, due at start + g * 20 ms / n.
        total = -(-(end_ns - start_ns) * n // PERIOD_NS)
        next_g = 0
        measured_sent = 0
        sent_per_stream = np.zeros(n, dtype=np.int64)
        recv_per_stream = np.zeros(n, dtype=np.int64)
        max_lat = int((duration_s + 1) * 50 * n) + n
        lat_ns = np.empty(max_lat, dtype=np.int64)
        n_lat = 0
        received = foreign = no_kernel_ts = received_total = 0
        last_stamp = 0
        max_behind_ns = 0
        ticks = behind_ticks = 0
        cpu0 = time.process_time()
        next_tick = time.perf_counter()
        while True:
            now = time.time_ns()
            if now >= drain_end_ns:
                break
            ticks += 1
            due = min(total, (now - start_ns) * n // PERIOD_NS + 1) if now >= start_ns else 0
            burst = min(due - next_g, n)
            if burst > 0:
                max_behind_ns = max(max_behind_ns, now - (start_ns + next_g * PERIOD_NS // n))
                if due - next_g > n:
                    behind_ticks += 1
                g = next_g
                stop = next_g + burst
                while g < stop:
                    rnd, a = divmod(g, n)
                    b = min(n, a + stop - g)
                    seq_col[a:b] = rnd & 0xFFFF
                    ts_col[a:b] = (rnd * 160) & 0xFFFFFFFF
                    for c in range(a, b, send_chunk):
                        d = min(b, c + send_chunk)
                        stamp = max(time.time_ns(), last_stamp + 1)
                        last_stamp = stamp
                        stamp_cols[c:d] = np.frombuffer(
                            b"".join([_BYTE_NIBBLES[x] for x in stamp.to_bytes(8, "big")]), np.uint8)
                        _ok, t_call, t_done = sender.send_timed(c, d - c)
                        log.add(stamp, c, d - c, t_call, t_done)
                        if stamp >= measure_from_ns:
                            measured_sent += d - c
                            sent_per_stream[c:d] += 1
                    g += b - a
                next_g = stop
            if ticks % DRAIN_TICKS == 0 or now >= end_ns:
                while True:
                    data, lens, rx_ns = recv.receive()
                    k = len(data)
                    if not k:
                        break
                    stamp_rx = decode_nibbles(data[:, STAMP_AT:STAMP_AT + STAMP_NIBBLES]).astype(np.int64)
                    idx = decode_nibbles(data[:, IDX_AT:IDX_AT + IDX_NIBBLES]).astype(np.int64)
                    # A packet a relay rewrote (e.g. DTMF silence: all 0xFF) matches no call.
                    sent_ns = log.send_times(stamp_rx, idx)
                    good = (lens >= IDX_AT + IDX_NIBBLES) & (sent_ns >= 0)
                    n_good = int(np.count_nonzero(good))
                    foreign += k - n_good
                    received_total += n_good
                    keep = good & (stamp_rx >= measure_from_ns)
                    m = int(np.count_nonzero(keep))
                    if m:
                        r = rx_ns[keep]
                        missing = r == 0
                        if missing.any():
                            no_kernel_ts += int(np.count_nonzero(missing))
                            r = np.where(missing, time.time_ns(), r)
                        lat = r - sent_ns[keep]
                        take = min(m, max_lat - n_lat)
                        lat_ns[n_lat:n_lat + take] = lat[:take]
                        n_lat += take
                        received += m
                        recv_per_stream += np.bincount(idx[keep], minlength=n)
                    if k < recv.batch:
                        break
            next_tick += TICK_S
            pause = next_tick - time.perf_counter()
            if pause > 0:
                time.sleep(max(pause, min_sleep_s))
            else:
                if min_sleep_s:
                    time.sleep(min_sleep_s)
                next_tick = time.perf_counter()
        gen_cpu = time.process_time() - cpu0
        wall_s = (time.time_ns() - start_ns) / 1e9
        lat = np.sort(lat_ns[:n_lat]) / 1e3
        q = (lambda p: float(lat[min(len(lat) - 1, int(p * len(lat)))]) if len(lat) else float("nan"))
        return {
            "streams": n,
            "generator": "mmsg",
            "sent": next_g,
            "send_errors": sender.errors,
            "measured_sent": measured_sent,
            "measured_received": received,
            "received_total": received_total,
            "latency_samples": int(len(lat)),
            "loss_pct": 100.0 * (1 - received / measured_sent) if measured_sent else float("nan"),
            "streams_with_loss": int(np.count_nonzero(recv_per_stream < sent_per_stream)),
            "streams_with_extra": int(np.count_nonzero(recv_per_stream > sent_per_stream)),
            "foreign": foreign,
            "no_kernel_ts": no_kernel_ts,
            "lat_p50_us": q(0.50),
            "lat_p99_us": q(0.99),
            "lat_p999_us": q(0.999),
            "lat_max_us": float(lat[-1]) if len(lat) else float("nan"),
            "gen_cpu_pct": round(100 * gen_cpu / wall_s, 1),
            "gen_cpu_s_per_mpkt": round(gen_cpu / max(1, next_g) * 1e6, 2),
            "gen_max_behind_ms": round(max_behind_ns / 1e6, 2),
            "gen_backlog_ticks": behind_ticks,
            "gen_ticks": ticks,
            "gen_send_calls": log.n,
            "gen_send_us_per_msg": round(log.ns_per_message() / 1e3, 2),
            "gen_slow_call_msgs_pct": round(100 * log.slow_share(), 2),
            "rcvbuf_bytes": self.rcvbuf_bytes,
        }
