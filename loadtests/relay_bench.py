"""Relay benchmark: Tonewall (DTMF hook on) vs rtpengine (userspace) vs a bare uvloop relay.

    python3 loadtests/relay_bench.py --streams 100,500,1000 --duration 12

Each stream is one call's caller->agent direction (every packet passes the DTMF
hook in Tonewall). For each point and relay: start the relay in its own process,
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
            from gateway.media.leg import LegMedia
            from gateway.media.relay import Relay
            from gateway.transport.rtp import RtpMediaController

            detector = _TimedDetector(DetectorBank(capacity=len(callers) + 8)) if mode == "tonewall" else None
            ctl = RtpMediaController(HOST, spec["ports"][0], spec["ports"][1], relay=Relay(detector=detector))
            for i, (c, a) in enumerate(zip(callers, agents)):
                m = ctl.open_call(f"call-{i}")
                m.configure(LegMedia(c, (c[0], c[1] + 1), "PCMU", 0, 101),
                            LegMedia(a, (a[0], a[1] + 1), "PCMU", 0, 101))
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
            print(json.dumps({"relayed": r.relayed, "drops": sum(r.drops_total().values()),
                              "detector_batches": r.detector_batches, "hook_s": round(r.hook_s, 3),
                              "rows_left": len(ctl.relay._batch_legs),
                              "detector_max_ms": round(detector.max_s * 1e3, 2) if detector else None,
                              "mean_rows_per_batch": round(detector.rows / max(1, r.detector_batches), 1)
                              if detector else None}), flush=True)

    uvloop.run(main())


class _TimedDetector:
    """Wraps the DetectorBank to report its longest call and rows per call."""

    def __init__(self, bank) -> None:
        self.bank = bank
        self.max_s = 0.0
        self.rows = 0

    def add_stream(self) -> int:
        return self.bank.add_stream()

    def remove_stream(self, slot: int) -> None:
        self.bank.remove_stream(slot)

    def process(self, slots, frames):
        t = time.perf_counter()
        out = self.bank.process(slots, frames)
        self.max_s = max(self.max_s, time.perf_counter() - t)
        self.rows += len(slots)
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


def run_point(relay: str, n: int, duration_s: float) -> dict:
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
            proc.stdin.write(json.dumps({"callers": callers, "agents": agents,
                                         "ports": [20000, 20000 + 4 * n + 100]}) + "\n")
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="100,500,1000")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per point (2 s warm-up)")
    ap.add_argument("--relays", default="direct,tonewall,rtpengine,bare")
    ap.add_argument("--relay-nice", type=int, default=0,
                    help="nice increment for the relay processes (e.g. -10 on a shared machine, as root)")
    args = ap.parse_args()
    global RELAY_NICE
    RELAY_NICE = args.relay_nice
    relays = args.relays.split(",")
    if "rtpengine" in relays and shutil.which("rtpengine") is None:
        print("rtpengine not installed: skipping it", file=sys.stderr)
        relays.remove("rtpengine")
    print(f"{'relay':10} {'streams':>7} {'sent':>8} {'loss%':>7} {'p50us':>7} {'p99us':>7} {'p99.9us':>8} "
          f"{'maxus':>8} {'cpu%':>6} {'cpu-s/Mpkt':>10}")
    for n in (int(x) for x in args.streams.split(",")):
        for relay in relays:
            r = run_point(relay, n, args.duration)
            print(f"{relay:10} {n:7d} {r['sent']:8d} {r['loss_pct']:7.3f} {r['lat_p50_us']:7.1f} "
                  f"{r['lat_p99_us']:7.1f} {r['lat_p999_us']:8.1f} {r['lat_max_us']:8.1f} "
                  f"{r['cpu_pct']:6} {r['cpu_s_per_mpkt']:10}", flush=True)
            print("  " + json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
