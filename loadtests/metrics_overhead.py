"""What metrics cost the audio loop: scrapes, and the per-packet stats updates in the relay.

    python3 loadtests/metrics_overhead.py --calls 0,100,1000 --streams 100,1000 --rounds 15

(a) Scrape: a real in-process gateway with every extension (loopback, port 0)
    holds N calls' worth of relay state (calls configured, packets relayed, some
    dropped, histograms filled); `generate_latest` over its registry is timed in
    CPU seconds, and the same through HTTP GET /metrics. A scrape runs on the
    audio loop, so its cost over the scrape interval is the share of the loop it
    takes, and its duration is how long the loop stalls once per interval.
(b) Hot path: the real edge (`RtpMediaController._read_rtp`, `_flush`, `_on_timer`)
    and core (`Relay.receive_rtp`, the batched detector) over synthetic packets, no
    sockets (a fake socket hands out prepared datagrams; a synthetic clock moves
    20 ms per tick and fires only the timers due by then, so the once-a-second
    stream sample runs once per 50 ticks, as on a real loop). Variants are built in
    this process only, all three the same way: the hot functions' source recompiled
    (AST), with the variant's statements removed (none for as-is), so they differ
    in those statements only:
      as-is        the shipped code;
      no-stats     every statement that touches `.stats` removed (counters, the
                   per-packet processing histogram and its second perf_counter);
      no-metrics   also the RFC 3550 loss/jitter bookkeeping per packet, which
                   exists only for tonewall_rtp_* metrics.
    CPU per packet (process_time) with rounds of the variants interleaved; the
    median round counts. Each variant's output packets are checked identical.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gateway.media import relay as relay_module  # noqa: E402
from gateway.media.leg import LegMedia  # noqa: E402
from gateway.media.relay import Relay  # noqa: E402
from gateway.transport import rtp as edge_module  # noqa: E402
from gateway.transport.rtp import RtpMediaController  # noqa: E402

HOST = "127.0.0.1"
PACKET_S = 0.020
STATS_ATTRS = {"stats", "_untimed"}
"""`_untimed`: the edge's countdown to the next timed datagram (1 in 16 is timed)."""
STATS_NAMES = {"stats"}
"""A local alias of `self.stats` in the hot methods."""
RFC3550_ATTRS = {"rx_next", "_jitter_mask", "_jitter_pair", "_sequence_changed"}
RFC3550_NAMES = {"seq"}
HOT_RELAY = ("receive_rtp", "_run_detector", "process_pending", "handle_timer")
HOT_EDGE = ("_read_rtp", "_flush", "_on_timer")


# ---------------------------------------------------------------- variants by AST


class _Strip(ast.NodeTransformer):
    """Drop statements that reference the given attributes or names; emptied blocks become `pass`."""

    def __init__(self, attrs: set[str], names: set[str]) -> None:
        self.attrs, self.names = attrs, names
        self.removed: list[str] = []

    def _refers(self, node: ast.AST) -> bool:
        return any((isinstance(n, ast.Attribute) and n.attr in self.attrs)
                   or (isinstance(n, ast.Name) and n.id in self.names) for n in ast.walk(node))

    def _block(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            if isinstance(stmt, (ast.If, ast.While)) and self._refers(stmt.test):
                self.removed.append(ast.unparse(stmt).splitlines()[0])
                continue
            if isinstance(stmt, (ast.If, ast.For, ast.While, ast.Try, ast.With)):
                self.generic_visit_block(stmt)
                if (isinstance(stmt, ast.If) and not stmt.orelse
                        and all(isinstance(s, ast.Pass) for s in stmt.body)):
                    self.removed.append(ast.unparse(stmt).splitlines()[0])
                    continue
                out.append(stmt)
            elif self._refers(stmt):
                self.removed.append(ast.unparse(stmt))
            else:
                out.append(stmt)
        return out or [ast.Pass()]

    def generic_visit_block(self, stmt: ast.stmt) -> None:
        for fld in ("body", "orelse", "finalbody"):
            if getattr(stmt, fld, None):
                setattr(stmt, fld, self._block(getattr(stmt, fld)))
        for handler in getattr(stmt, "handlers", []):
            handler.body = self._block(handler.body)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.body = self._block(node.body)
        return node


def stripped(fn: Callable[..., Any], module: Any, attrs: set[str], names: set[str]) -> tuple[Callable[..., Any], list[str]]:
    """`fn` recompiled in its module's namespace with the matching statements removed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    strip = _Strip(attrs, names)
    tree = ast.fix_missing_locations(strip.visit(tree))
    namespace: dict[str, Any] = {}
    exec(compile(tree, f"<{fn.__qualname__} variant>", "exec"), module.__dict__, namespace)
    return namespace[fn.__name__], strip.removed


def variant_classes(level: str) -> tuple[type, type, list[str]]:
    """(Relay subclass, controller subclass, removed statements) for 'as-is', 'no-stats', 'no-metrics'."""
    # as-is goes through the same recompile as the others (nothing removed), so the variants
    # differ only in the removed statements, not in how their code was built.
    attrs = set() if level == "as-is" else set(STATS_ATTRS) | (RFC3550_ATTRS if level == "no-metrics" else set())
    names = set() if level == "as-is" else set(STATS_NAMES) | (RFC3550_NAMES if level == "no-metrics" else set())
    removed: list[str] = []
    relay_methods, edge_methods = {}, {}
    for name in HOT_RELAY:
        relay_methods[name], r = stripped(getattr(Relay, name), relay_module, attrs, names)
        removed += [f"Relay.{name}: {s}" for s in r]
    for name in HOT_EDGE:
        edge_methods[name], r = stripped(getattr(RtpMediaController, name), edge_module, attrs, names)
        removed += [f"edge.{name}: {s}" for s in r]
    return (type(f"Relay_{level}", (Relay,), relay_methods),
            type(f"Edge_{level}", (RtpMediaController,), edge_methods), removed)


# ---------------------------------------------------------------- the fake edge


class FakeSocket:
    """recvfrom hands out the next prepared datagram; sendto keeps the last one sent."""

    __slots__ = ("inbox", "addr", "sent", "count")

    def __init__(self, addr: tuple[str, int]) -> None:
        self.inbox: list[bytes] = []
        self.addr = addr
        self.sent = b""
        self.count = 0

    def recvfrom(self, _n: int) -> tuple[bytes, tuple[str, int]]:
        return self.inbox.pop(), self.addr

    def sendto(self, data: bytes, _dest: Any) -> int:
        self.sent = data
        self.count += 1
        return len(data)


class FakeEndpoint:
    __slots__ = ("rtp", "rtcp", "port")

    def __init__(self, rtp: FakeSocket) -> None:
        self.rtp = rtp
        self.rtcp = rtp
        self.port = 0


class _Handle:
    def __init__(self, loop: FakeLoop, entry: list[Any]) -> None:
        self.loop, self.entry = loop, entry

    def cancel(self) -> None:
        if self.entry in self.loop.timers:
            self.loop.timers.remove(self.entry)


class FakeLoop:
    """call_soon runs at the end of the synthetic iteration; call_at once the synthetic clock passes it.

    The clock advances 20 ms per tick (kept at or after perf_counter, the relay's clock), so a
    timer fires at the audio rate it would on a real loop: the detector window (10 ms) every
    tick, the once-a-second stream sample once per 50 ticks. Firing every armed timer every tick
    ran that sample, a pass over every leg, 50 times too often, and only in the variants that
    keep RFC 3550 state (the others have no started stream to sample): it was most of the
    "RFC 3550" cost this harness used to report.
    """

    def __init__(self) -> None:
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.timers: list[list[Any]] = []
        self.clock = time.perf_counter()

    def time(self) -> float:
        return self.clock

    def call_soon(self, cb: Callable[..., Any], *args: Any) -> None:
        self.soon.append((cb, args))

    def call_at(self, when: float, cb: Callable[..., Any], *args: Any) -> _Handle:
        entry = [when, cb, args]
        self.timers.append(entry)
        return _Handle(self, entry)

    def run_ready(self) -> None:
        while self.soon:
            cb, args = self.soon.pop(0)
            cb(*args)

    def sync(self) -> None:
        """Never behind the relay's clock (other variants ran since this one's last round)."""
        self.clock = max(self.clock, time.perf_counter())

    def fire_timers(self) -> None:
        """The 20 ms tick: the clock moves on and every timer due by then fires."""
        self.clock += PACKET_S
        due = [e for e in self.timers if e[0] <= self.clock]
        self.timers = [e for e in self.timers if e[0] > self.clock]
        for _, cb, args in due:
            cb(*args)


def build(level: str, streams: int, detector: bool) -> tuple[Any, Any, list[tuple[Any, FakeSocket]]]:
    relay_cls, edge_cls, removed = variant_classes(level)
    det = None
    if detector:
        from dtmf.detector import DetectorBank

        det = DetectorBank(capacity=streams + 8)
    relay = relay_cls(detector=det)
    loop = FakeLoop()
    edge = edge_cls.__new__(edge_cls)
    edge.media_address, edge.relay, edge.on_event, edge._loop = HOST, relay, None, loop
    edge._calls, edge._flush_scheduled, edge._timer, edge._timer_at = {}, False, None, None
    edge._untimed = 0
    legs = []
    for i in range(streams):
        call = relay.add_call(f"call-{i}")
        caller_addr, agent_addr = (HOST, 40000 + 4 * i), (HOST, 40002 + 4 * i)
        relay.configure(call.call_id, LegMedia(caller_addr, (HOST, caller_addr[1] + 1), "PCMU", 0, 101),
                        LegMedia(agent_addr, (HOST, agent_addr[1] + 1), "PCMU", 0, 101))
        for leg, addr in ((call.caller, caller_addr), (call.agent, agent_addr)):
            sock = FakeSocket(addr)
            leg.endpoint = FakeEndpoint(sock)
            legs.append((leg, sock))
    return edge, loop, legs


def packets(streams: int, ticks: int, seed: int) -> list[list[bytes]]:
    """Per leg, `ticks` PCMU packets of room noise (each leg its own SSRC, sequence, timestamp)."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(2 * streams):
        ssrc, seq0, ts0 = (int(x) for x in rng.integers(0, 2**16, 3))
        body = rng.integers(0xF0, 0x100, (ticks, 160), dtype=np.uint8)  # quiet mu-law codes
        out.append([bytes([0x80, 0]) + ((seq0 + k) & 0xFFFF).to_bytes(2, "big")
                    + ((ts0 + 160 * k) & 0xFFFFFFFF).to_bytes(4, "big") + (ssrc + j).to_bytes(4, "big")
                    + body[k].tobytes() for k in range(ticks)])
    return out


def run_round(edge: Any, loop: FakeLoop, legs: list[tuple[Any, FakeSocket]], pkts: list[list[bytes]],
              ticks: int) -> tuple[float, int, bytes]:
    """`ticks` x 20 ms of every leg's packets through the edge; CPU seconds, packets, last bytes sent."""
    for (leg, sock), mine in zip(legs, pkts):
        sock.inbox = list(reversed(mine[:ticks]))
    read = edge._read_rtp
    # The edge registers each reader with the leg's bound recvfrom and the peer's bound sendto.
    readers = [(leg, leg.endpoint.rtp.recvfrom, leg.peer.endpoint.rtp.sendto) for leg, _sock in legs]
    loop.sync()
    t0 = time.process_time()
    for _ in range(ticks):
        for leg, recv, send in readers:
            read(leg, recv, send)
        loop.run_ready()
        loop.fire_timers()
    cpu = time.process_time() - t0
    return cpu, ticks * len(legs), legs[-1][1].sent


def hot_path(streams: int, rounds: int, ticks: int, detector: bool, stat: str = "median") -> dict[str, float]:
    levels = ("as-is", "no-stats", "no-metrics")
    setups = {lv: build(lv, streams, detector) for lv in levels}
    results: dict[str, list[float]] = {lv: [] for lv in levels}
    sent_check: dict[str, bytes] = {}
    for r in range(rounds + 1):
        pkts = packets(streams, ticks, seed=r)
        for lv in (levels if r % 2 else tuple(reversed(levels))):
            edge, loop, legs = setups[lv]
            cpu, n, last = run_round(edge, loop, legs, pkts, ticks)
            sent_check[lv] = last
            if r:  # round 0 warms caches and latches every leg
                results[lv].append(cpu / n)
        if len(set(sent_check.values())) != 1:
            raise SystemExit("variants relayed different bytes: the stripping changed behaviour")
    pick = min if stat == "min" else statistics.median
    return {lv: pick(v) for lv, v in results.items()}


# ---------------------------------------------------------------- scrapes


async def scrape_cost(calls: int, repeats: int, data_dir: Path) -> dict[str, float]:
    """CPU per generate_latest and wall time per HTTP scrape of a gateway holding `calls` calls."""
    import aiohttp
    from prometheus_client import generate_latest

    from gateway.app import Gateway
    from gateway.config import ApiConfig, Config, HostPort, MediaConfig, MetricsConfig, SipConfig, VaultConfig
    from gateway.demo.process import free_rtp_block
    from gateway.extensions import default_extensions

    l0 = HostPort("127.0.0.1", 0)
    low = free_rtp_block(8)
    config = Config(data_dir=str(data_dir), sip=SipConfig(listen=l0), media=MediaConfig(rtp_ports=(low, low + 7)),
                    api=ApiConfig(listen=l0), metrics=MetricsConfig(listen=l0), vault=VaultConfig(listen=l0))
    extensions = default_extensions(config)
    gateway = Gateway(config, extensions)
    await gateway.start()
    try:
        relay = gateway.media.relay
        pkts = packets(calls, 3, seed=calls) if calls else []
        for i in range(calls):
            call = relay.add_call(f"bench-{i}")
            caller_addr, agent_addr = (HOST, 40000 + 4 * i % 20000), (HOST, 40002 + 4 * i % 20000)
            relay.configure(call.call_id, LegMedia(caller_addr, (HOST, caller_addr[1] + 1), "PCMU", 0, 101),
                            LegMedia(agent_addr, (HOST, agent_addr[1] + 1), "PCMU", 0, 101))
            for j, (leg, addr) in enumerate(((call.caller, caller_addr), (call.agent, agent_addr))):
                for k, data in enumerate(pkts[2 * i + j]):
                    relay.receive_rtp(leg, data, addr, 1.0 + 0.02 * k)
                    relay.stats.record_processing(2e-6 * (1 + k), 1)
                relay.receive_rtp(leg, b"\x40" + bytes(20), ("127.0.0.9", 9), 1.1)  # bad version
            relay.flush()
        if calls:
            relay.handle_timer(10.0)  # the once-a-second stream sample: jitter histogram filled
        metrics = next(x for x in extensions if x.name == "metrics")
        registry, port = metrics.registry, metrics.runner.addresses[0][1]
        size = len(generate_latest(registry))
        cpu = []
        for _ in range(repeats):
            t0 = time.process_time()
            generate_latest(registry)
            cpu.append(time.process_time() - t0)
        wall = []
        async with aiohttp.ClientSession() as session:
            for _ in range(max(5, repeats // 4)):
                t0 = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    await resp.read()
                wall.append(time.perf_counter() - t0)
        for i in range(calls):
            relay.remove_call(f"bench-{i}")
    finally:
        await gateway.stop()
    return {"generate_s": statistics.median(cpu), "generate_max_s": max(cpu), "http_s": statistics.median(wall),
            "bytes": size}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="0,100,1000", help="calls' worth of state for the scrape figures")
    parser.add_argument("--streams", default="100,1000", help="calls (2 legs each) in the hot-path figures")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ticks", type=int, default=50, help="20 ms ticks per round")
    parser.add_argument("--scrapes", type=int, default=40)
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="per variant, the median round or the fastest (least disturbed by other load)")
    parser.add_argument("--show-removed", action="store_true", help="print the statements each variant drops")
    args = parser.parse_args()
    deadline = time.monotonic() + 480
    with open("/proc/loadavg") as f:
        print(f"loadavg at start: {f.read().strip()}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pid {os.getpid()}")

    if args.show_removed:
        for level in ("no-stats", "no-metrics"):
            print(f"\n{level} removes:")
            for line in variant_classes(level)[2]:
                print(f"  {line}")

    print("\n(a) scrape cost: generate_latest over the gateway's registry (CPU, median of "
          f"{args.scrapes}) and HTTP GET /metrics (wall, loopback)")
    print("| calls | exposition bytes | generate_latest ms | max ms | HTTP scrape ms | share of loop @15 s | @1 s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    import tempfile

    for calls in (int(x) for x in args.calls.split(",")):
        if time.monotonic() > deadline:
            break
        with tempfile.TemporaryDirectory(prefix="tonewall-metrics-") as tmp:
            r = asyncio.run(asyncio.wait_for(scrape_cost(calls, args.scrapes, Path(tmp) / "data"), 120))
        print(f"| {calls:,} | {r['bytes']:,} | {r['generate_s'] * 1e3:.2f} | {r['generate_max_s'] * 1e3:.2f} | "
              f"{r['http_s'] * 1e3:.2f} | {r['http_s'] / 15 * 100:.3f} % | {r['http_s'] / 1 * 100:.2f} % |")

    for detector in (True, False):
        label = "relay + batched DTMF detector (the audio loop as shipped)" if detector else "relay only, no detector"
        print(f"\n(b) hot path, {label}: CPU us per packet, {args.stat} of {args.rounds} rounds of {args.ticks} ticks")
        print("| calls | packets/round | as-is | no-stats | no-metrics | stats share | all metrics share |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for streams in (int(x) for x in args.streams.split(",")):
            if time.monotonic() > deadline:
                print("| (time bound reached) |")
                break
            r = hot_path(streams, args.rounds, args.ticks, detector, args.stat)
            base = r["as-is"]
            print(f"| {streams:,} | {2 * streams * args.ticks:,} | {base * 1e6:.2f} | {r['no-stats'] * 1e6:.2f} | "
                  f"{r['no-metrics'] * 1e6:.2f} | {(base - r['no-stats']) / base * 100:.1f} % | "
                  f"{(base - r['no-metrics']) / base * 100:.1f} % |")
    with open("/proc/loadavg") as f:
        print(f"\nloadavg at end: {f.read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
