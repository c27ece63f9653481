"""A running `tonewall run` with a real call up, and the health checks run after each fuzz phase.

The gateway is a subprocess (tests/integration/gateway_proc.py). Its next hop is an
agent pool: one UDP SIP socket in front of several demo `Endpoint`s (gateway/demo),
one per incoming Call-ID, so that a second call can be answered while the first is
up. The caller is a demo `Endpoint` too. Both sides send paced PCMU from the demo
voice (room noise: every 20 ms payload is distinct), so "the caller's audio reaches
the agent bit-exact" is checked payload for payload. The endpoints live on an
asyncio loop in a background thread; the fuzzers run in the test's thread.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.demo.endpoint import HOST, Endpoint, _RtpProtocol
from gateway.demo.useragent import CallEnded, CallEstablished, UserAgent
from gateway.demo.voice import CallerVoice
from gateway.sip.message import SipRequest, build_response, parse_message
from gateway.sip.transaction import Peer
from tests.integration.gateway_proc import GatewayProcess, options

AGENTS = 6
"""Agent endpoints behind the pool: the live call, its replacements and the new-call checks."""


class _AgentPool(asyncio.DatagramProtocol):
    """Routes each SIP datagram to the agent endpoint that owns its Call-ID; a new INVITE takes an idle one."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.by_call_id: dict[str, Endpoint] = {}
        self.expecting = 0
        """Calls the harness placed and not yet answered; any other new INVITE gets 486."""
        self.refused = 0
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            msg = parse_message(data)
            call_id = msg.call_id
        except ValueError:
            self.dropped += 1
            return
        ep = self.by_call_id.get(call_id)
        if ep is None:
            if isinstance(msg, SipRequest) and msg.method == "INVITE" and msg.to_tag is None and self.expecting:
                ep = next((e for e in self.endpoints if e.ua is not None and e.ua.phase.value == "idle"
                           and e not in self.by_call_id.values()), None)
            if ep is None:
                if isinstance(msg, SipRequest) and msg.method not in ("ACK", "CANCEL") and self.transport:
                    self.refused += 1  # a call the fuzzer opened: busy, so it ends at once
                    self.transport.sendto(bytes(build_response(msg, 486, to_tag="busy")), addr)
                else:
                    self.dropped += 1
                return
            self.expecting -= 1
            self.by_call_id[call_id] = ep
        assert ep.ua is not None
        ep.ua.receive(data, Peer("udp", addr[0], addr[1]), ep.loop.time())
        ep.pump()


@dataclass
class LiveCall:
    """One established call: the caller endpoint, the agent endpoint that answered, the gateway's media ports."""

    caller: Endpoint
    agent: Endpoint

    @property
    def caller_leg_rtp(self) -> tuple[str, int]:
        """The gateway's RTP address on the caller leg (where the caller sends)."""
        assert self.caller.ua is not None and self.caller.ua.media is not None
        return self.caller.ua.media.remote_rtp

    @property
    def agent_leg_rtp(self) -> tuple[str, int]:
        assert self.agent.ua is not None and self.agent.ua.media is not None
        return self.agent.ua.media.remote_rtp

    @property
    def up(self) -> bool:
        return all(ep.ua is not None and ep.ua.phase.value == "established" for ep in (self.caller, self.agent))

    @property
    def ended_both_sides(self) -> bool:
        return all(ep.ua is not None and ep.ua.phase.value == "ended" for ep in (self.caller, self.agent))


class LiveGateway:
    """Gateway subprocess + endpoint loop thread; `call()` places a call, the `check_*` methods probe health."""

    def __init__(self, tmp_path: Path, config: str | None = None, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pool = _AgentPool()
        self.pool_port = self._run(self._open_pool())
        self.gateway = GatewayProcess(tmp_path, next_hop_port=self.pool_port, rtp_ports=200, config=config)
        self.gateway.start()
        self.callers: list[Endpoint] = []
        self._answered: set[Endpoint] = set()
        self.options_retries = 0
        self.live: LiveCall | None = None

    # ---- loop thread

    def _run(self, coro: Any, timeout_s: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _open_pool(self) -> int:
        transport, _ = await self.loop.create_datagram_endpoint(lambda: self.pool, local_addr=(HOST, 0))
        self._pool_transport = self.pool.transport = transport
        port = transport.get_extra_info("sockname")[1]
        for _ in range(AGENTS):
            ep = Endpoint("agent", CallerVoice(np.random.default_rng(int(self.rng.integers(1 << 30))), -50.0),
                          self.loop)
            ep._sip = transport
            ep._rtp, _ = await self.loop.create_datagram_endpoint(lambda ep=ep: _RtpProtocol(ep),
                                                                  local_addr=(HOST, 0))
            ep.ua = UserAgent(user="agent", host=HOST, sip_port=port, rtp_port=ep.rtp_port)
            self.pool.endpoints.append(ep)
        return port

    async def _place_call(self, timeout_s: float) -> LiveCall:
        caller = await Endpoint.open("caller", CallerVoice(np.random.default_rng(int(self.rng.integers(1 << 30)))))
        self.callers.append(caller)
        sip = self.gateway.sip_port
        self.pool.expecting = 1
        caller.call(f"sip:agent@127.0.0.1:{sip}", f"sip:127.0.0.1:{sip}")
        event = await caller.wait_event(timeout_s)
        if not isinstance(event, CallEstablished):
            raise AssertionError(f"call failed: {event}")
        deadline = self.loop.time() + timeout_s
        while self.loop.time() < deadline:
            for ep in self.pool.by_call_id.values():
                if ep.ua is not None and ep.ua.phase.value == "established" and ep.ua.dialog is not None \
                        and ep not in self._answered:
                    self._answered.add(ep)
                    return LiveCall(caller, ep)
            await asyncio.sleep(0.02)
        raise AssertionError("no agent endpoint answered")

    def call(self, timeout_s: float = 5.0) -> LiveCall:
        """Place a call through the gateway and wait until both endpoints are established."""
        return self._run(self._place_call(timeout_s), timeout_s + 2)

    def hang_up(self, call: LiveCall, timeout_s: float = 5.0) -> None:
        """The caller sends BYE; both endpoints must see the call end."""
        self.loop.call_soon_threadsafe(call.caller.hang_up)
        self.wait_until(lambda: call.ended_both_sides, timeout_s, "call did not end on both sides")

    def ensure_live(self) -> LiveCall:
        """The live call, or a new one if the last phase ended it (cleanly: checked by the caller)."""
        if self.live is None or not self.live.up:
            self.live = self.call()
            self.wait_until(lambda: len(self.live.agent.received) > 10, 3.0, "no audio on the new live call")
        return self.live

    @staticmethod
    def wait_until(predicate: Any, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(message)
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.gateway.stop()
        finally:
            def shut() -> None:
                for ep in self.callers + self.pool.endpoints:
                    ep.stop_audio()
                    if ep._rtp is not None:
                        ep._rtp.close()
                for ep in self.callers:
                    if ep._sip is not None:
                        ep._sip.close()
                self._pool_transport.close()
                self.loop.stop()
            self.loop.call_soon_threadsafe(shut)
            self.thread.join(5)
            self.loop.close()

    # ---- health checks

    @property
    def pid(self) -> int:
        assert self.gateway.proc is not None
        return self.gateway.proc.pid

    def alive(self) -> bool:
        return self.gateway.proc is not None and self.gateway.proc.poll() is None

    def rss_kib(self) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]

    def metrics(self) -> dict[str, float]:
        """Every `tonewall_*` sample: 'name{labels}' -> value."""
        url = f"http://127.0.0.1:{self.gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("tonewall_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    @staticmethod
    def total(metrics: dict[str, float], family: str, **labels: str) -> float:
        """Sum of a family's samples whose labels include `labels`."""
        want = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(v for k, v in metrics.items()
                   if (k == family or k.startswith(family + "{")) and all(w in k for w in want))

    def log_problems(self) -> list[str]:
        """Log lines that show a crash or an internal error (tracebacks, core errors, 500s from bugs)."""
        bad = ("Traceback", "raised", "internal error", "Error:", "CRITICAL", "ERROR")
        return [line for line in self.gateway.lines if any(b in line for b in bad)]

    def answers_options(self) -> tuple[str, str]:
        """OPTIONS over UDP (retransmitted like RFC 3261 17.1.2.2 would: a datagram may be lost) and TCP."""
        for attempt in range(3):
            try:
                udp = options(self.gateway.sip_port, "udp", timeout_s=1.0 + attempt)
                break
            except TimeoutError:
                self.options_retries += 1
        else:
            udp = "no answer"
        return udp, options(self.gateway.sip_port, "tcp")

    def audio_bit_exact(self, call: LiveCall, window_s: float = 0.6) -> int:
        """Packets of the caller's audio that reached the agent in `window_s`, each equal to one sent, in order.

        Raises AssertionError when a received payload is not the next one the caller sent
        (changed, reordered or injected) or when fewer than half the expected packets came.
        """
        received, sent = call.agent.received.payloads, call.caller.sent.payloads
        start = len(received)
        time.sleep(window_s)
        new = received[start:len(received)]
        expected = int(window_s / 0.02)
        if len(new) < expected // 2:
            raise AssertionError(f"only {len(new)} of ~{expected} packets reached the agent")
        index = {p: i for i, p in enumerate(sent)}
        positions = [index.get(p) for p in new]
        if None in positions:
            raise AssertionError(f"{positions.count(None)} of {len(new)} packets at the agent were not sent by "
                                 f"the caller (changed or injected)")
        if positions != sorted(positions):
            raise AssertionError("caller audio reached the agent out of order")
        return len(new)

    def new_call_works(self) -> None:
        """A fresh call is established, carries audio, and ends on both sides."""
        call = self.call()
        self.wait_until(lambda: len(call.agent.received) > 10, 3.0, "no audio on the new call")
        self.audio_bit_exact(call, 0.3)
        self.hang_up(call)


def sip_socket(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind((host, 0))
    return sock
