"""Relay benchmark: Tonewall (DTMF hook on) vs rtpengine (userspace) vs a bare uvloop relay.

    python3 loadtests/relay_bench.py --streams 100,500,1000 --duration 12 [--capture]

Each stream is one call's caller->agent direction (every packet passes the DTMF
hook in Tonewall). With --capture every Tonewall call is put in a secure capture
after setup (masker with one packet of look-ahead on every caller leg): the added
latency then includes the 20 ms hold. For each point and relay: start the relay in its own process,
set up the calls (Tonewall/bare: JSON over stdin; rtpengine: ng offer/answer),
run the load generator (loadtests/rtp_load.py) and read the relay's CPU time from
/proc/<pid>/stat (all threads) over the measured window. A "direct" row (no relay)
gives the generator+kernel floor for latency.
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


def _relay_priority() -> None:
    """Runs in the relay child before exec: every relay gets the same scheduling priority."""
    if RELAY_NICE:
        try:
            os.nice(RELAY_NICE)
        except OSError:
            pass


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
            ctl = RtpMediaController(HOST, spec["ports"][0], spec["ports"][1],
                                     relay=Relay(detector=detector, masker=masker, **relay_kw))
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
        print(json.dumps({"targets": targets}), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        if mode.startswith("tonewall"):
            r = ctl.relay.stats
            la = r.lookahead_seconds
            out = {"relayed": r.relayed, "drops": sum(r.drops_total().values()),
                   "detector_batches": r.detector_batches, "hook_s": round(r.hook_s, 3),
                   "rows_left": ctl.relay.detect_rows_pending, "packets_lost": r.packets_lost,
                   "jitter_p50_ms": round(r.jitter.quantile(0.5) * 1e3, 2)}
            for name, timed in (("detector", detector), ("masker", masker)):
                if timed is not None:
                    out[f"{name}_calls"] = timed.calls
                    out[f"{name}_s"] = round(timed.total_s, 3)
                    out[f"{name}_max_ms"] = round(timed.max_s * 1e3, 2)
                    out[f"{name}_rows_per_call"] = round(timed.rows / max(1, timed.calls), 1)
            if la.count:
                out["lookahead_p50_ms_le"] = la.quantile(0.5) * 1e3
                out["lookahead_p99_ms_le"] = la.quantile(0.99) * 1e3
            print(json.dumps(out), flush=True)

    uvloop.run(main())


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
    packets = []
    for seq in range(50):
        hdr = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (160 * seq).to_bytes(4, "big")
        packets.append([hdr + (i + 1).to_bytes(4, "big") + body for i in range(n)])
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


class RtpEngine:
    """An rtpengine daemon in userspace (--table=-1) and an ng client for it."""

    def __init__(self, port_low: int, port_high: int) -> None:
        self.ng_port = 22222 + random.randint(0, 1000)
        self.proc = subprocess.Popen(
            ["rtpengine", "--table=-1", f"--interface={HOST}", f"--listen-ng={HOST}:{self.ng_port}",
             "--foreground", "--delete-delay=0", f"--port-min={port_low}", f"--port-max={port_high}",
             "--log-stderr", "--log-level=3", "--no-fallback"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_relay_priority)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)
        self.pid = self.proc.pid
        for _ in range(50):
            try:
                if self.command({"command": "ping"}).get("result") == b"pong":
                    return
            except (OSError, socket.timeout):
                time.sleep(0.1)
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


# ---- the benchmark ------------------------------------------------------------------


def run_point(relay: str, n: int, duration_s: float, capture: bool = False,
              relay_kw: dict | None = None) -> dict:
    import uvloop

    from rtp_load import LoadGenerator

    gen = LoadGenerator(n)
    callers = [s.getsockname() for s in gen.callers]
    agents = [s.getsockname() for s in gen.agents]
    proc = None
    engine = None
    try:
        if relay == "direct":
            targets, pid = agents, None
        elif relay == "rtpengine":
            engine = RtpEngine(10000, 10000 + 8 * n + 100)  # below the ephemeral range
            targets, pid = engine.open_calls(callers, agents), engine.pid
        else:
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", relay],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                    preexec_fn=_relay_priority)
            proc.stdin.write(json.dumps({"callers": callers, "agents": agents, "capture": capture,
                                         "ports": [20000, 20000 + 4 * n + 100], **(relay_kw or {})}) + "\n")
            proc.stdin.flush()
            targets = [tuple(t) for t in json.loads(proc.stdout.readline())["targets"]]
            pid = proc.pid
        warmup_s = 2.0
        cpu0 = cpu_s(pid) if pid else 0.0
        t0 = time.monotonic()
        result = uvloop.run(gen.run(targets, duration_s, warmup_s=warmup_s))
        # CPU over the whole run (warm-up included) against all packets sent.
        cpu = (cpu_s(pid) - cpu0) if pid else float("nan")
        result.update(relay=relay, wall_s=round(time.monotonic() - t0, 2), cpu_s=round(cpu, 3),
                      cpu_s_per_mpkt=round(cpu / (result["sent"] / 1e6), 2) if pid else float("nan"),
                      cpu_pct=round(100 * cpu / duration_s, 1) if pid else float("nan"))
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
    args = ap.parse_args()
    relay_kw = {"detect_window_s": args.detect_window_ms / 1e3 if args.detect_window_ms is not None else None,
                "detect_batch_rows": args.detect_batch_rows,
                "mask_window_s": args.mask_window_ms / 1e3 if args.mask_window_ms is not None else None,
                "mask_batch_rows": args.mask_batch_rows}
    global RELAY_NICE
    RELAY_NICE = args.relay_nice
    relays = args.relays.split(",")
    if "rtpengine" in relays and shutil.which("rtpengine") is None:
        print("rtpengine not installed: skipping it", file=sys.stderr)
        relays.remove("rtpengine")
    print(f"{'relay':10} {'streams':>7} {'sent':>8} {'loss%':>7} {'p50us':>7} {'p99us':>7} {'p99.9us':>8} "
          f"{'maxus':>8} {'cpu%':>6} {'cpu-s/Mpkt':>10} {'load1':>6}")
    for n in (int(x) for x in args.streams.split(",")):
        for relay in relays:
            load_before = os.getloadavg()[0]
            r = run_point(relay, n, args.duration, capture=args.capture and relay.startswith("tonewall"),
                          relay_kw=relay_kw)
            r["loadavg_1m_before"] = round(load_before, 2)
            print(f"{relay:10} {n:7d} {r['sent']:8d} {r['loss_pct']:7.3f} {r['lat_p50_us']:7.1f} "
                  f"{r['lat_p99_us']:7.1f} {r['lat_p999_us']:8.1f} {r['lat_max_us']:8.1f} "
                  f"{r['cpu_pct']:6} {r['cpu_s_per_mpkt']:10} {load_before:6.2f}", flush=True)
            print("  " + json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
