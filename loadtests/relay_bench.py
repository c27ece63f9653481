"""Relay benchmark: Tonewall (DTMF hook on) vs rtpengine (userspace) vs a bare uvloop relay.

    python3 loadtests/relay_bench.py --streams 100,500,1000 --duration 12 [--capture]
    python3 loadtests/relay_bench.py verify-secure     # rtpengine-secure delays and silences DTMF

Each stream is one call's caller->agent direction (every packet passes the DTMF
hook in Tonewall). With --capture every Tonewall call is put in a secure capture
after setup (masker with one packet of look-ahead on every caller leg): the added
latency then includes the 20 ms hold. For each point and relay: start the relay in its own process,
set up the calls (Tonewall/bare: JSON over stdin; rtpengine: ng offer/answer),
run the load generator (loadtests/rtp_load.py; by default the sendmmsg/recvmmsg one,
`--generator sockets` for the old socket-per-stream one) and read the relay's user and
system CPU time from /proc/<pid>/stat (all threads) over the run. A "direct" row (no relay)
gives the generator+kernel floor for latency. `rtpengine-secure` is rtpengine's leak-free
DTMF configuration (issue 4's comparison): `block DTMF` on the caller with
DTMF-security=silence, in-band DTMF detection and a 40 ms delay buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


RELAY_NICE = 0
RELAY_CPUS: set[int] | None = None
"""With --pin: the relay process (all its threads) runs on these CPUs, the generator on the others."""


def _relay_priority() -> None:
    """Runs in the relay child before exec: every relay gets the same priority and CPUs."""
    if RELAY_NICE:
        try:
            os.nice(RELAY_NICE)
        except OSError:
            pass
    if RELAY_CPUS:
        os.sched_setaffinity(0, RELAY_CPUS)
    if os.sched_getscheduler(0) != os.SCHED_OTHER:  # --gen-rt is for the generator only
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def generator_realtime(priority: int) -> None:
    """Run this process (the generator) SCHED_FIFO at `priority`; relays stay SCHED_OTHER.

    Why: with a relay in the path each datagram wakes the relay, and a woken relay (or any
    other job) on the generator's CPU preempts it inside sendmmsg; under load the generator
    then fell seconds behind (lag_ms) with its own CPU at 20-40 %. A real-time generator keeps
    the schedule; it sleeps every tick (at least `RT_MIN_SLEEP_S` even when behind), and the
    kernel's RT throttling caps it at 95 % of a CPU in any case.
    """
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


RT_MIN_SLEEP_S = 0.0001


def pin_cpus(spec: str) -> tuple[set[int], set[int]]:
    """'auto' or 'GEN:RELAY' (e.g. '0:1') -> (generator CPUs, relay CPUs); pins this process now.

    Why it is an option: a relay woken on the generator's CPU can preempt it inside
    sendmmsg (the kernel yields between messages), so a 50-message call may cost 50
    context switches. Under load from other jobs pinning hurts more than it helps (a
    pinned process cannot move off a busy CPU), so it is off by default; compare
    `gen_send_us_per_msg` in the JSON with and without it on a quiet machine.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if spec == "auto":
        if len(cpus) < 2:
            raise ValueError("--pin needs two CPUs")
        gen, relay = {cpus[0]}, set(cpus[1:])
    else:
        a, b = spec.split(":")
        gen, relay = {int(c) for c in a.split(",")}, {int(c) for c in b.split(",")}
    os.sched_setaffinity(0, gen)
    return gen, relay


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    return sum(cpu_times(pid))


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped (receive buffer full) on the IPv4 UDP sockets bound to `ports`."""
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) in ports:
                total += int(parts[-1])
    return total


# ---- relay servers (run in a child process) -----------------------------------------


def serve(mode: str) -> None:
    import uvloop

    spec = json.loads(sys.stdin.readline())
    callers = [tuple(a) for a in spec["callers"]]
    agents = [tuple(a) for a in spec["agents"]]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        targets = []
        if mode.startswith("tonewall"):
            from dtmf.detector import DetectorBank
            from dtmf.masker import MaskerBank, MaskMode
            from gateway.media.leg import LegMedia
            from gateway.media.relay import Relay
            from gateway.transport.rtp import RtpMediaController

            detector = _Timed(DetectorBank(capacity=len(callers) + 8)) if mode == "tonewall" else None
            masker = _Timed(MaskerBank(MaskMode.FLAT, capacity=len(callers) + 8)) if spec.get("capture") else None
            relay_kw = {k: spec[k] for k in ("detect_window_s", "detect_batch_rows", "mask_window_s",
                                             "mask_batch_rows") if spec.get(k) is not None}
            fast = {"auto": None, "on": True, "off": False}[spec.get("accelerator") or "auto"]
            if spec.get("hold_slack_s") is not None:
                import gateway.media.relay as relay_module
                relay_module.HOLD_SLACK_S = spec["hold_slack_s"]  # read by each deadline computed
            ctl = RtpMediaController(HOST, spec["ports"][0], spec["ports"][1],
                                     relay=Relay(detector=detector, masker=masker, **relay_kw), fast_path=fast)
            for i, (c, a) in enumerate(zip(callers, agents)):
                m = ctl.open_call(f"call-{i}")
                m.configure(LegMedia(c, (c[0], c[1] + 1), "PCMU", 0, 101),
                            LegMedia(a, (a[0], a[1] + 1), "PCMU", 0, 101))
                if masker is not None:
                    m.set_capture(True)
                targets.append((HOST, m.caller_port))
        elif mode == "bare-proto":  # bare relay on datagram protocols instead of add_reader
            class Forward(asyncio.DatagramProtocol):
                def __init__(self, out, dest) -> None:
                    self.out, self.dest = out, dest

                def datagram_received(self, data, addr) -> None:
                    self.out.sendto(data, self.dest)

            for a in agents:
                tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
                rx, _ = await loop.create_datagram_endpoint(lambda tx=tx, a=a: Forward(tx, a),
                                                            local_addr=(HOST, 0))
                targets.append((HOST, rx.get_extra_info("sockname")[1]))
        else:  # bare: recvfrom/sendto, nothing else
            socks = []
            for a in agents:
                rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rx.bind((HOST, 0))
                rx.setblocking(False)
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                tx.bind((HOST, 0))
                tx.setblocking(False)
                socks += [rx, tx]

                def readable(rx=rx, send=tx.sendto, dest=a) -> None:
                    while True:
                        try:
                            data, _ = rx.recvfrom(2048)
                        except BlockingIOError:
                            return
                        send(data, dest)

                loop.add_reader(rx.fileno(), readable)
                targets.append((HOST, rx.getsockname()[1]))
        import gc
        gc.freeze()  # as `tonewall run` does once started (gateway/app.py)
        print(json.dumps({"targets": targets}), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        if mode.startswith("tonewall"):
            print(json.dumps(_relay_report(ctl.relay, detector, masker)), flush=True)

    uvloop.run(main())


def _relay_report(relay, detector, masker) -> dict:
    """The relay's own counters at the end of a run; a counter the relay no longer has is
    reported as missing instead of failing the run (the relay's internals change under it)."""
    out: dict = {}
    stats = relay.stats
    reads = {"relayed": lambda: stats.relayed, "drops": lambda: sum(stats.drops_total().values()),
             "detector_batches": lambda: stats.detector_batches, "hook_s": lambda: round(stats.hook_s, 3),
             "rows_left": lambda: relay.detect_rows_pending,
             "released_at_deadline": lambda: stats.released_at_deadline, "packets_lost": lambda: stats.packets_lost,
             "jitter_p50_ms": lambda: round(stats.jitter.quantile(0.5) * 1e3, 2)}
    for key, read in reads.items():
        try:
            out[key] = read()
        except (AttributeError, TypeError, ValueError):
            out.setdefault("missing", []).append(key)
    for name, timed in (("detector", detector), ("masker", masker)):
        if timed is not None:
            out[f"{name}_calls"] = timed.calls
            out[f"{name}_s"] = round(timed.total_s, 3)
            out[f"{name}_max_ms"] = round(timed.max_s * 1e3, 2)
            out[f"{name}_rows_per_call"] = round(timed.rows / max(1, timed.calls), 1)
    la = getattr(stats, "lookahead_seconds", None)
    if la is not None and la.count:
        out["lookahead_p50_ms_le"] = la.quantile(0.5) * 1e3
        out["lookahead_p99_ms_le"] = la.quantile(0.99) * 1e3
    return out


class _Timed:
    """Wraps the DetectorBank or MaskerBank to report its calls, rows per call, total and longest call."""

    def __init__(self, bank, clock=time.perf_counter) -> None:
        self.bank = bank
        self.clock = clock
        self.max_s = 0.0
        self.total_s = 0.0
        self.rows = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.bank, name)

    def process(self, slots, frames):
        t = self.clock()
        out = self.bank.process(slots, frames)
        el = self.clock() - t
        self.max_s = max(self.max_s, el)
        self.total_s += el
        self.rows += len(slots)
        self.calls += 1
        return out


# ---- the core alone: CPU per packet without sockets ----------------------------------


def core_bench(n: int, seconds: float, capture: bool, hook: bool, iteration_ms: float,
               relay_kw: dict | None = None, lose_every: int = 0) -> dict:
    """Drive `Relay` with n streams' packets on a simulated clock; CPU-s per million packets.

    Packets arrive at 50/s per stream, phases spread over 20 ms; everything arriving within
    `iteration_ms` forms one event-loop iteration (what uvloop hands the readers in one
    wakeup under load), after which the edge's per-iteration call runs, and the timer when due.
    The loop does what `gateway.transport.rtp` does: it sends (counts) every packet that
    `receive_rtp`, `process_pending` and `handle_timer` return, re-arms the timer from
    `get_timer()` when `timer_changed` (an armed earlier timer is kept), and after the timer
    runs the masker for rows still waiting. "sent" counts all of them; "released_at_deadline"
    those `handle_timer` let go (a held capture packet whose successor came too late);
    `lose_every` K > 0 loses one packet in K of each stream on the way (spread over the
    streams), so captures' held packets meet their deadline; then
    sent + lost + held_at_end + mask_rows_at_end = packets.
    Works against this tree's relay and the older per-iteration `flush(max_detect_rows)` API.
    """
    import numpy as np

    from dtmf.detector import DetectorBank
    from dtmf.masker import MaskerBank, MaskMode
    from gateway.media.leg import LegMedia
    from gateway.media.relay import Relay

    detector = _Timed(DetectorBank(capacity=n + 8), time.process_time) if hook else None
    masker = _Timed(MaskerBank(MaskMode.FLAT, capacity=n + 8), time.process_time) if capture else None
    relay = Relay(detector=detector, masker=masker, **(relay_kw or {}))
    legs = []
    for i in range(n):
        call = relay.add_call(f"c{i}")
        caller, agent = ("10.1.0.1", 10000 + 2 * i), ("10.2.0.1", 10000 + 2 * i)
        relay.configure(f"c{i}", LegMedia(caller, None, "PCMU", 0, 101), LegMedia(agent, None, "PCMU", 0, 101))
        legs.append((call.caller, caller))
    if capture:
        for i in range(n):
            relay.set_capture(f"c{i}", True)
    new_api = hasattr(relay, "process_pending")
    rng = np.random.default_rng(7)
    body = bytes(rng.integers(0xF0, 0x100, 160, dtype=np.uint8))  # quiet noise
    def build(base: int) -> list[list[bytes]]:
        """50 rounds of every stream's packets from round `base`: sequence numbers run on (a
        stream whose numbers wrapped every 50 packets would look restarted half the time)."""
        rounds = []
        for seq in range(base, base + 50):
            hdr = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big") + ((160 * seq) & 0xFFFFFFFF).to_bytes(4, "big")
            rounds.append([hdr + (i + 1).to_bytes(4, "big") + body for i in range(n)])
        return rounds

    packets = build(0)
    total = int(seconds * 50 * n)
    period_s = 0.020
    it_s = iteration_ms / 1e3
    sent = at_once = released = lost = 0
    t_cpu = time.process_time()
    now = 1000.0
    next_iter = now + it_s
    timer = None
    k = 0
    while k < total:
        i = k % n
        seq_round = k // n
        now = 1000.0 + seq_round * period_s + (i * period_s) / n
        if i == 0 and seq_round and seq_round % 50 == 0:
            packets = build(seq_round)
        if now >= next_iter:
            if new_api:
                # End of an iteration (the edge's _flush), then its timer when due (_on_timer).
                relay.wake = False
                sent += len(relay.process_pending(now))
                if relay.timer_changed:
                    relay.timer_changed = False
                    when = relay.get_timer()
                    if when is not None and (timer is None or when < timer):
                        timer = when
                if timer is not None and now >= timer:
                    out = relay.handle_timer(now)
                    released += len(out)
                    sent += len(out)
                    if relay.mask_rows_pending:
                        sent += len(relay.process_pending(now))
                    relay.timer_changed = False
                    timer = relay.get_timer()
            else:
                sent += len(relay.flush(256) or ())
            next_iter = now + it_s
        k += 1
        if lose_every and (seq_round + i) % lose_every == 0:
            lost += 1
            continue
        leg, src = legs[i]
        if relay.receive_rtp(leg, packets[seq_round % 50][i], src, now) is not None:
            at_once += 1
    sent += at_once
    cpu = time.process_time() - t_cpu
    banks_s = sum(b.total_s for b in (detector, masker) if b is not None)
    out = {"streams": n, "packets": total, "lost": lost, "sent": sent, "forwarded_at_once": at_once,
           "released_at_deadline": released, "held_at_end": sum(leg.held is not None for leg, _ in legs),
           "mask_rows_at_end": relay.mask_rows_pending if new_api else 0,
           "capture": capture, "hook": hook,
           "iteration_ms": iteration_ms, "core_cpu_s_per_mpkt": round(cpu / (total / 1e6), 2),
           "relay_only_cpu_s_per_mpkt": round((cpu - banks_s) / (total / 1e6), 2),
           "api": "process_pending+timer" if new_api else "flush per iteration"}
    la = relay.stats.lookahead_seconds
    if la.count:
        out["lookahead_p50_ms_le"] = la.quantile(0.5) * 1e3
        out["lookahead_p99_ms_le"] = la.quantile(0.99) * 1e3
    for name, bank in (("detector", detector), ("masker", masker)):
        if bank is not None:
            out[f"{name}_calls"] = bank.calls
            out[f"{name}_rows_per_call"] = round(bank.rows / max(1, bank.calls), 1)
            out[f"{name}_cpu_s_per_mpkt"] = round(bank.total_s / (total / 1e6), 2)
    return out


# ---- rtpengine over the ng protocol ---------------------------------------------------


def bencode(x) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(bencode(i) for i in x) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"
    raise TypeError(type(x))


def bdecode(b: bytes, i: int = 0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c in (b"l", b"d"):
        i += 1
        items = []
        while b[i:i + 1] != b"e":
            v, i = bdecode(b, i)
            items.append(v)
        if c == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


SECURE_DELAY_MS = 40
"""rtpengine's delay buffer in the leak-free configuration (issue 4)."""
SECURE_BLOCK = {"DTMF-security": "silence", "flags": ["detect DTMF"], "delay-buffer": SECURE_DELAY_MS}
"""ng `block DTMF` keys for rtpengine 10.5's leak-free DTMF configuration on the caller's leg.
The command sets the leg's whole block mode: "detect DTMF" must be repeated here (a block
without it turns in-band detection off and tones pass, checked with verify-secure), and the
delay buffer lets the silence cover the tone's onset that was decoded before detection fired."""


class RtpEngine:
    """An rtpengine daemon in userspace (--table=-1) and an ng client for it."""

    def __init__(self, port_low: int, port_high: int, secure: bool = False) -> None:
        self.secure = secure
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a port nobody holds now
            probe.bind((HOST, 0))
            self.ng_port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            ["rtpengine", "--table=-1", f"--interface={HOST}", f"--listen-ng={HOST}:{self.ng_port}",
             "--foreground", "--delete-delay=0", f"--port-min={port_low}", f"--port-max={port_high}",
             "--log-stderr", "--log-level=3", "--no-fallback"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_relay_priority)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)
        self.pid = self.proc.pid
        self.sock.settimeout(0.5)
        for _ in range(40):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {self.proc.returncode}")
            try:
                if self.command({"command": "ping"}).get("result") == b"pong":
                    self.sock.settimeout(2.0)
                    return
            except (OSError, socket.timeout):
                time.sleep(0.1)
        self.close()
        raise RuntimeError("rtpengine did not answer ping")

    def command(self, msg: dict) -> dict:
        cookie = b"%08x" % random.getrandbits(32)
        self.sock.sendto(cookie + b" " + bencode(msg), (HOST, self.ng_port))
        while True:
            data, _ = self.sock.recvfrom(65536)
            if data.startswith(cookie + b" "):
                return bdecode(data[len(cookie) + 1:])[0]

    @staticmethod
    def sdp(addr: tuple[str, int]) -> str:
        return (f"v=0\r\no=- 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
                f"m=audio {addr[1]} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")

    @staticmethod
    def media_port(sdp: bytes) -> int:
        for line in sdp.decode().splitlines():
            if line.startswith("m=audio "):
                return int(line.split()[1])
        raise ValueError("no m=audio in rtpengine answer")

    def open_calls(self, callers, agents) -> list[tuple[str, int]]:
        targets = []
        for i, (c, a) in enumerate(zip(callers, agents)):
            base = {"call-id": f"bench-{i}", "from-tag": "caller", "replace": ["origin", "session-connection"]}
            r = self.command({"command": "offer", "sdp": self.sdp(c), **base})
            if r.get("result") != b"ok":
                raise RuntimeError(f"rtpengine offer failed: {r}")
            r = self.command({"command": "answer", "sdp": self.sdp(a), "to-tag": "agent", **base})
            if r.get("result") != b"ok":
                raise RuntimeError(f"rtpengine answer failed: {r}")
            if self.secure:
                b = self.command({"command": "block DTMF", "call-id": base["call-id"], "from-tag": "caller",
                                  **SECURE_BLOCK})
                if b.get("result") != b"ok":
                    raise RuntimeError(f"rtpengine block DTMF failed: {b}")
            targets.append((HOST, self.media_port(r["sdp"])))  # the caller-facing port
        return targets

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def verify_secure(secure: bool, digit: str = "5", tone_ms: int = 100, packets: int = 150) -> dict:
    """One call through rtpengine (plain or secure): is the output delayed, is the tone gone?

    Sends `packets` PCMU packets at 20 ms: quiet packets carrying the send stamp (the bench
    generator's encoding) and, from packet 50, a `tone_ms` DTMF tone at -10 dBm0. Returns the
    one-way latency of the stamped packets (kernel receive timestamps), the digits the
    project's detector finds in the output audio, and the 5 ms blocks of output that still
    carry both of the digit's frequencies (each within 20 dB of the input tone's level).
    """
    import numpy as np

    from dtmf.detector import DigitDetected, DtmfDetector
    from dtmf.g711 import ulaw_decode, ulaw_encode
    from dtmf.tones import DTMF_FREQS_HZ, dtmf_tone, to_int16
    from mmsg import MmsgReceiver
    from rtp_load import IDX_AT, IDX_NIBBLES, STAMP_AT, STAMP_NIBBLES, decode_nibbles, encode_nibbles

    engine = RtpEngine(30000 + 200 * secure, 30199 + 200 * secure, secure=secure)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind((HOST, 0))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((HOST, 0))
    rx.setblocking(False)
    recv = MmsgReceiver(rx, batch=64, max_bytes=256)
    s0, s1 = STAMP_AT - 12, STAMP_AT - 12 + STAMP_NIBBLES  # payload offsets
    i0, i1 = IDX_AT - 12, IDX_AT - 12 + IDX_NIBBLES
    out_audio: list[bytes] = []
    lat_ns: list[int] = []
    try:
        port = engine.open_calls([tx.getsockname()], [rx.getsockname()])[0][1]
        tone = ulaw_encode(to_int16(dtmf_tone(digit, tone_ms, -10.0))).tobytes()
        tone_at = 50
        tone_packets = -(-len(tone) // 160)
        tone = tone + bytes([0xFF]) * (160 * tone_packets - len(tone))
        t_start = time.monotonic()
        for k in range(packets + 15):  # 15 more packet times drain the delay buffer
            if k < packets:
                if tone_at <= k < tone_at + tone_packets:
                    body = tone[(k - tone_at) * 160:(k - tone_at + 1) * 160]
                else:
                    quiet = bytearray([0xFF]) * 160
                    quiet[i0:i1] = encode_nibbles(np.array([k], dtype=np.uint64), IDX_NIBBLES)[0].tobytes()
                    quiet[s0:s1] = encode_nibbles(np.array([time.time_ns()], dtype=np.uint64), STAMP_NIBBLES)[0].tobytes()
                    body = bytes(quiet)
                hdr = bytes([0x80, 0]) + k.to_bytes(2, "big") + (160 * k).to_bytes(4, "big") + b"\0\0\0\1"
                tx.sendto(hdr + body, (HOST, port))
            time.sleep(max(0.0, t_start + (k + 1) * 0.020 - time.monotonic()))
            data, lens, rx_ns = recv.receive()
            for row, n_bytes, t_rx in zip(data, lens, rx_ns):
                p = row[12:n_bytes]
                out_audio.append(p.tobytes())
                if len(p) >= i1 and (p[s0:i1] >= 0xF0).all() and t_rx:
                    lat = int(t_rx) - int(decode_nibbles(p[None, s0:s1])[0])
                    if 0 <= lat < 10**10:  # not a stamp: a silenced packet (0xFF) decodes to 2**64 - 1
                        lat_ns.append(lat)
    finally:
        engine.close()
        tx.close()
        rx.close()
    pcm = ulaw_decode(np.frombuffer(b"".join(out_audio), np.uint8))
    det = DtmfDetector()
    events = det.process(pcm) + det.flush()
    digits = "".join(e.digit for e in events if isinstance(e, DigitDetected))
    low_hz, high_hz = DTMF_FREQS_HZ[digit]

    def pair_level(x: np.ndarray) -> np.ndarray:
        """Per 5 ms block, the weaker of the digit's two frequency components."""
        blocks = x[:len(x) // 40 * 40].astype(np.float64).reshape(-1, 40)
        t = np.arange(40) / 8000.0
        return np.minimum(*(np.abs(blocks @ np.exp(-2j * np.pi * f * t)) for f in (low_hz, high_hz)))

    threshold = np.median(pair_level(to_int16(dtmf_tone(digit, tone_ms, -10.0)))) / 10.0
    lat = np.sort(np.array(lat_ns, dtype=np.float64)) / 1e6
    return {"relay": "rtpengine-secure" if secure else "rtpengine", "digit_sent": digit, "tone_ms": tone_ms,
            "packets_sent": packets, "packets_received": len(out_audio), "stamped_received": len(lat),
            "latency_ms_p50": round(float(np.median(lat)), 2) if len(lat) else None,
            "latency_ms_min": round(float(lat[0]), 2) if len(lat) else None,
            "latency_ms_max": round(float(lat[-1]), 2) if len(lat) else None,
            "digits_in_output": digits,
            "tone_5ms_blocks_in_output": int(np.count_nonzero(pair_level(pcm) > threshold)),
            "tone_5ms_blocks_in_input": tone_ms // 5}


# ---- the benchmark ------------------------------------------------------------------


def run_point(relay: str, n: int, duration_s: float, capture: bool = False,
              relay_kw: dict | None = None, generator: str = "mmsg", gen_kw: dict | None = None) -> dict:
    import uvloop

    from rtp_load import LoadGenerator, MmsgLoadGenerator

    if generator == "mmsg":
        gen = MmsgLoadGenerator(n)
        callers, agents = gen.callers, gen.agents
        gen_rx_ports = {gen.agent_address[1]}
    else:
        gen = LoadGenerator(n)
        callers = [s.getsockname() for s in gen.callers]
        agents = [s.getsockname() for s in gen.agents]
        gen_rx_ports = {a[1] for a in agents}
    proc = None
    engine = None
    try:
        if relay == "direct":
            targets, pid = agents, None
        elif relay in ("rtpengine", "rtpengine-secure"):
            engine = RtpEngine(10000, 10000 + 8 * n + 100, secure=relay == "rtpengine-secure")
            targets, pid = engine.open_calls(callers, agents), engine.pid
        else:
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", relay],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                    preexec_fn=_relay_priority)
            proc.stdin.write(json.dumps({"callers": callers, "agents": agents, "capture": capture,
                                         # Slack: other engineers' gateways may hold ports here.
                                         "ports": [20000, 20000 + 4 * n + 4000], **(relay_kw or {})}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"relay {relay} did not start (see its traceback above)")
            targets = [tuple(t) for t in json.loads(line)["targets"]]
            pid = proc.pid
        warmup_s = 2.0
        u0, s0 = cpu_times(pid) if pid else (0.0, 0.0)
        t0 = time.monotonic()
        result = gen.run(targets, duration_s, warmup_s=warmup_s, **(gen_kw if generator == "mmsg" and gen_kw else {}))
        if asyncio.iscoroutine(result):
            result = uvloop.run(result)
        # CPU over the whole run (warm-up included) against all packets sent.
        u1, s1 = cpu_times(pid) if pid else (float("nan"), float("nan"))
        ut, st = u1 - u0, s1 - s0
        cpu = ut + st
        mpkt = result["sent"] / 1e6
        result.update(relay=relay, wall_s=round(time.monotonic() - t0, 2), cpu_s=round(cpu, 3),
                      cpu_s_per_mpkt=round(cpu / mpkt, 2) if pid else float("nan"),
                      utime_s_per_mpkt=round(ut / mpkt, 2) if pid else float("nan"),
                      stime_s_per_mpkt=round(st / mpkt, 2) if pid else float("nan"),
                      cpu_pct=round(100 * cpu / duration_s, 1) if pid else float("nan"),
                      # Per packet that came out: an overloaded relay leaves packets unread.
                      cpu_s_per_m_received=(round(cpu / (result["received_total"] / 1e6), 2)
                                            if pid and result.get("received_total") else float("nan")),
                      relay_rx_drops=udp_drops({t[1] for t in targets}) if pid else 0,
                      gen_rx_drops=udp_drops(gen_rx_ports))
        if proc is not None:
            proc.stdin.close()
            extra = proc.stdout.readline()
            if extra.strip():
                result["relay_stats"] = json.loads(extra)
        return result
    finally:
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if engine is not None:
            engine.close()
        gen.close()



def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "verify-secure":
        ap = argparse.ArgumentParser(prog="relay_bench.py verify-secure", description=verify_secure.__doc__)
        ap.add_argument("--digits", default="5,1,#", help="one call per digit, plain and secure")
        ap.add_argument("--tone-ms", type=int, default=100)
        args = ap.parse_args(sys.argv[2:])
        ok = True
        for d in args.digits.split(","):
            for secure in (False, True):
                r = verify_secure(secure, d, args.tone_ms)
                if secure:
                    r["ok"] = (not r["digits_in_output"] and r["tone_5ms_blocks_in_output"] == 0
                               and (r["latency_ms_p50"] or 0) >= SECURE_DELAY_MS - 5)
                    ok &= r["ok"]
                print(json.dumps(r), flush=True)
        sys.exit(0 if ok else 1)
    if len(sys.argv) >= 2 and sys.argv[1] == "core":
        ap = argparse.ArgumentParser(prog="relay_bench.py core", description=core_bench.__doc__)
        ap.add_argument("--streams", default="100,500,1000")
        ap.add_argument("--seconds", type=float, default=4.0, help="simulated seconds of traffic")
        ap.add_argument("--iteration-ms", default="0.2,1", help="simulated loop iteration lengths")
        ap.add_argument("--capture", action="store_true")
        ap.add_argument("--no-hook", action="store_true")
        ap.add_argument("--mask-window-ms", default="0", help="Relay mask_window_s values, in ms")
        ap.add_argument("--lose-every", type=int, default=0,
                        help="lose one packet in K of each stream (held packets then leave at their deadline)")
        args = ap.parse_args(sys.argv[2:])
        for n in (int(x) for x in args.streams.split(",")):
            for it in (float(x) for x in args.iteration_ms.split(",")):
                for w in (float(x) for x in args.mask_window_ms.split(",")):
                    kw = {"mask_window_s": w / 1e3} if w else {}
                    r = core_bench(n, args.seconds, args.capture, not args.no_hook, it, kw, args.lose_every)
                    r["mask_window_ms"] = w
                    print(json.dumps(r), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="100,500,1000")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per point (2 s warm-up)")
    ap.add_argument("--relays", default="direct,tonewall,rtpengine,bare")
    ap.add_argument("--relay-nice", type=int, default=0,
                    help="nice increment for the relay processes (e.g. -10 on a shared machine, as root)")
    ap.add_argument("--capture", action="store_true",
                    help="put every Tonewall call in a secure capture (masker with look-ahead on every caller leg)")
    ap.add_argument("--detect-window-ms", type=float, default=None, help="Relay detect_window_s, in ms")
    ap.add_argument("--detect-batch-rows", type=int, default=None, help="Relay detect_batch_rows")
    ap.add_argument("--mask-window-ms", type=float, default=None, help="Relay mask_window_s, in ms")
    ap.add_argument("--mask-batch-rows", type=int, default=None, help="Relay mask_batch_rows")
    ap.add_argument("--hold-slack-ms", type=float, default=None,
                    help="gateway.media.relay.HOLD_SLACK_S, in ms: a held capture packet's deadline past one packet time")
    ap.add_argument("--accelerator", choices=("auto", "on", "off"), default="auto",
                    help="Tonewall's C relay path (media.accelerator): off = the pure-Python edge")
    ap.add_argument("--pin", default="off",
                    help="'auto' or GEN:RELAY CPU lists (e.g. 0:1): generator and relay on separate CPUs")
    ap.add_argument("--gen-rt", type=int, default=0,
                    help="run the generator SCHED_FIFO at this priority (1-99; as root), relays stay normal")
    ap.add_argument("--generator", choices=("mmsg", "sockets"), default="mmsg",
                    help="mmsg: one sendmmsg socket and one recvmmsg socket (light); "
                         "sockets: the old socket pair per stream (heavy, for comparison)")
    args = ap.parse_args()
    relay_kw = {"detect_window_s": args.detect_window_ms / 1e3 if args.detect_window_ms is not None else None,
                "detect_batch_rows": args.detect_batch_rows,
                "mask_window_s": args.mask_window_ms / 1e3 if args.mask_window_ms is not None else None,
                "mask_batch_rows": args.mask_batch_rows, "accelerator": args.accelerator,
                "hold_slack_s": args.hold_slack_ms / 1e3 if args.hold_slack_ms is not None else None}
    global RELAY_NICE, RELAY_CPUS
    RELAY_NICE = args.relay_nice
    if args.pin != "off":
        _, RELAY_CPUS = pin_cpus(args.pin)
    gen_kw = {}
    if args.gen_rt:
        generator_realtime(args.gen_rt)
        gen_kw["min_sleep_s"] = RT_MIN_SLEEP_S
    relays = args.relays.split(",")
    for name in ("rtpengine", "rtpengine-secure"):
        if name in relays and shutil.which("rtpengine") is None:
            print(f"rtpengine not installed: skipping {name}", file=sys.stderr)
            relays.remove(name)
    print(f"{'relay':16} {'streams':>7} {'sent':>8} {'loss%':>7} {'p50us':>8} {'p99us':>8} {'p99.9us':>9} "
          f"{'maxus':>9} {'cpu%':>6} {'cpu-s/Mpkt':>10} {'usr':>6} {'sys':>6} {'gen%':>5} {'lag_ms':>7} {'load1':>6} "
          f"{'steal%':>6}")
    for n in (int(x) for x in args.streams.split(",")):
        for relay in relays:
            load_before = os.getloadavg()[0]
            cpu_before = _cpu_times()
            capture = args.capture and relay.startswith("tonewall")
            r = run_point(relay, n, args.duration, capture=capture, relay_kw=relay_kw, generator=args.generator,
                          gen_kw=gen_kw)
            r["gen_rt"] = args.gen_rt
            r["loadavg_1m_before"] = round(load_before, 2)
            r["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            r["capture"] = capture
            r["steal_pct"] = _steal_pct(cpu_before, _cpu_times())
            print(f"{relay:16} {n:7d} {r['sent']:8d} {r['loss_pct']:7.3f} {r['lat_p50_us']:8.1f} "
                  f"{r['lat_p99_us']:8.1f} {r['lat_p999_us']:9.1f} {r['lat_max_us']:9.1f} "
                  f"{r['cpu_pct']:6} {r['cpu_s_per_mpkt']:10} {r['utime_s_per_mpkt']:6} {r['stime_s_per_mpkt']:6} "
                  f"{r.get('gen_cpu_pct', float('nan')):5} {r.get('gen_max_behind_ms', float('nan')):7} "
                  f"{load_before:6.2f} {r['steal_pct']:6}", flush=True)
            print("  " + json.dumps(r), file=sys.stderr, flush=True)


def _cpu_times() -> list[int]:
    """The machine's `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _steal_pct(before: list[int], after: list[int]) -> float:
    """Share of all CPU time over the point that the hypervisor gave to other guests (steal): on a
    virtual machine a relay and the generator both stop for it, which no relay can hide in its tail."""
    d = [b - a for a, b in zip(before, after)]
    return round(100.0 * d[7] / max(1, sum(d[:8])), 1) if len(d) > 7 else float("nan")


if __name__ == "__main__":
    main()
