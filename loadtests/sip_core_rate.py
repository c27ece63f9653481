"""SIP core benchmark: full calls through the sans-IO B2BUA, no sockets, fake clock.

    python3 loadtests/sip_core_rate.py [--calls 3000] [--rate 300] [--warmup-s 40] [--repeat 2] [--profile]

Each call is the whole ladder on both legs: INVITE/100/180/200/ACK from the
caller, INVITE/180/200/ACK to the agent, then BYE/200 on both legs, all as real
SIP text. The simulated clock advances 1/rate s per call and the transaction
timers fire as the edge would fire them. A warm-up of --warmup-s simulated
seconds (longer than the 64*T1 = 32 s wait states) brings the live transactions,
timer heaps and garbage-collector load to their steady state before the
measured calls; without it the figures flatter the core. The caller and agent are cheap
byte templates; the CPU spent inside the core (receive, messages_to_send,
next_event, get_timer, handle_timer) is timed separately from the harness.
Prints calls per CPU-second for the core alone and for core plus harness.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.b2bua import B2bua, B2buaConfig, CallAnswered, CallEnded  # noqa: E402
from gateway.sip.transaction import Peer  # noqa: E402

CALLER = Peer("udp", "10.0.0.1", 5060)
AGENT = Peer("udp", "10.0.0.2", 5080)
MAX_CALLS = 200_000

SDP_CALLER = (
    b"v=0\r\no=caller 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
SDP_AGENT = (
    b"v=0\r\no=agent 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
    b"m=audio 50000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


class FakeCallMedia:
    caller_port = 20000
    agent_port = 20002

    def configure(self, caller, agent) -> None:
        pass

    def close(self) -> None:
        pass


class FakeMedia:
    media_address = "10.0.0.9"

    def open_call(self, call_id: str) -> FakeCallMedia:
        return FakeCallMedia()


def caller_request(method: str, n: int, cseq: int, branch: str, to_tag: str | None, body: bytes = b"") -> bytes:
    to = "<sip:1234@gw>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:1234@10.0.0.9 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{branch}{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:alice@10.0.0.1>;tag=c{n}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {n}@10.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@10.0.0.1:5060>\r\n"
        "User-Agent: bench\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_COPY = (b"via:", b"from:", b"to:", b"call-id:", b"cseq:")


def response_to(request: bytes, status: int, reason: str, to_tag: str, body: bytes = b"") -> bytes:
    """A UAS response: the RFC 3261 8.2.6.2 headers copied from `request`, a To tag added."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    lines = [f"SIP/2.0 {status} {reason}".encode()]
    for line in head[1:]:
        low = line[:8].lower()
        if low.startswith(_COPY):
            if low.startswith(b"to:") and b";tag=" not in line:
                line += b";tag=" + to_tag.encode()
            lines.append(line)
    lines.append(b"Contact: <sip:1234@10.0.0.2:5080>")
    if body:
        lines.append(b"Content-Type: application/sdp")
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def to_tag_of(response: bytes) -> str:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:3].lower() == b"to:":
            return line.rsplit(b";tag=", 1)[1].decode()
    raise AssertionError("no To tag")


class Bench:
    def __init__(self, rate: float):
        self.gw = B2bua(B2buaConfig(next_hop="sip:10.0.0.2:5080", local_host="10.0.0.9"), FakeMedia())
        self.now = 0.0
        self.dt = 1.0 / rate
        self.core_s = 0.0
        self.answered = 0
        self.ended = 0

    def feed(self, data: bytes, source: Peer) -> list[tuple[bytes, Peer]]:
        gw = self.gw
        t0 = time.process_time()
        gw.receive(data, source, self.now)
        while (ev := gw.next_event()) is not None:
            if type(ev) is CallAnswered:
                self.answered += 1
            elif type(ev) is CallEnded:
                self.ended += 1
        out = gw.messages_to_send()
        when = gw.get_timer()
        if when is not None and when <= self.now:
            gw.handle_timer(self.now)
            while gw.next_event() is not None:
                pass
            gw.messages_to_send()
        self.core_s += time.process_time() - t0
        return out

    def call(self, n: int) -> None:
        self.now += self.dt
        out = self.feed(caller_request("INVITE", n, 1, "i", None, SDP_CALLER), CALLER)
        invite = next(d for d, p in out if p.host == AGENT.host)
        self.feed(response_to(invite, 180, "Ringing", f"a{n}"), AGENT)
        out = self.feed(response_to(invite, 200, "OK", f"a{n}", SDP_AGENT), AGENT)
        ok = next(d for d, p in out if p == CALLER and d.startswith(b"SIP/2.0 200"))
        tag = to_tag_of(ok)
        self.feed(caller_request("ACK", n, 1, "a", tag), CALLER)
        out = self.feed(caller_request("BYE", n, 2, "b", tag), CALLER)
        bye = next(d for d, p in out if p.host == AGENT.host and d.startswith(b"BYE"))
        self.feed(response_to(bye, 200, "OK", f"a{n}"), AGENT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="measured calls")
    ap.add_argument("--rate", type=float, default=300.0, help="simulated calls per second (clock step)")
    ap.add_argument("--warmup-s", type=float, default=40.0, help="simulated seconds of calls before measuring")
    ap.add_argument("--repeat", type=int, default=2, help="runs; the best is reported (the machine is shared)")
    ap.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = ap.parse_args()
    calls = min(args.calls, MAX_CALLS)
    warmup = min(int(args.warmup_s * args.rate), MAX_CALLS)
    best_core = best_total = float("inf")
    for _ in range(max(1, min(args.repeat, 10))):
        bench = Bench(args.rate)
        for n in range(max(warmup, 200)):
            bench.call(n)
        bench.core_s = 0.0
        prof = cProfile.Profile() if args.profile else None
        t0 = time.process_time()
        if prof:
            prof.enable()
        first = max(warmup, 200)
        live_tx = len(bench.gw._tx)
        for n in range(first, first + calls):
            bench.call(n)
        if prof:
            prof.disable()
        total_s = time.process_time() - t0
        if bench.ended != bench.answered or bench.ended < calls + first:
            raise SystemExit(f"calls did not complete: answered {bench.answered}, ended {bench.ended}")
        best_core, best_total = min(best_core, bench.core_s), min(best_total, total_s)
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            break
    print(f"calls={calls} simulated_rate={args.rate:g}/s warmup={args.warmup_s:g}s "
          f"live_transactions_at_start={live_tx} open_calls={len(bench.gw.calls)} best of {args.repeat}")
    print(f"core:          {calls / best_core:8.0f} calls per CPU-second ({best_core * 1e6 / calls:.0f} us/call)")
    print(f"core+harness:  {calls / best_total:8.0f} calls per CPU-second ({best_total * 1e6 / calls:.0f} us/call)")


if __name__ == "__main__":
    main()
