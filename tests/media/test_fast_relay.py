"""The C accelerator (`gateway.media._fastrelay`) changes nothing a peer or the core can see.

One scripted session of packets (plain audio, jitter-pair packets, gaps, late and duplicate
packets, a new SSRC, padding, header extensions, CSRCs, odd sizes, telephone-events with a
PT remap, foreign sources, garbage, in-band DTMF, a law conversion, a feedback tone,
mask = "always", SRTP on one leg) goes through two controllers on real loopback sockets,
one on the pure-Python path and one on the accelerator: both peers must receive the same
bytes in the same order, and the relay's counters, streams and events must agree.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import struct
import time
from typing import Any

import numpy as np
import pytest

from dtmf.detector import DetectorBank, DtmfDetector
from dtmf.g711 import ulaw_decode, ulaw_encode
from dtmf.masker import MaskerBank, MaskMode
from dtmf.tones import dtmf_tone, white_noise
from gateway.media.leg import LegMedia, SrtpParams
from gateway.media.relay import Leg, Relay
from gateway.media.rtp import RtpPacket
from gateway.media.srtp import SrtpLeg
from gateway.transport import rtp as edge
from gateway.transport.rtp import RtpMediaController
from tests.conftest import require

HOST = "127.0.0.1"
SUITE = "AES_CM_128_HMAC_SHA1_80"


def require_accelerator() -> None:
    require(edge.FastRelay is not None, "the C relay accelerator is not built (pip install -e . with a C compiler)")


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.setblocking(False)
    return s


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


async def settle() -> None:
    """Let the loop read what the kernel already holds (loopback sends are synchronous)."""
    for _ in range(6):
        await asyncio.sleep(0)


def rtp(seq: int, payload: bytes, pt: int = 0, ssrc: int = 0xCAFE, ts: int | None = None, marker: bool = False,
        csrcs: tuple[int, ...] = (), extension: bytes | None = None, padding: int = 0) -> bytes:
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension is not None else 0) | len(csrcs)
    head = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       (160 * seq if ts is None else ts) & 0xFFFFFFFF, ssrc)
    head += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        head += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    pad = (bytes(padding - 1) + bytes([padding])) if padding else b""
    return head + payload + pad


def script(seed: int, agent_pt: int = 0) -> list[tuple[str, bytes]]:
    """(sender, datagram) in order; sender is 'caller', 'agent', 'stranger' or an 'srtp-*' form."""
    rnd = random.Random(seed)
    noise = white_noise(8000 * 3, -30.0, np.random.default_rng(seed))
    keyed = noise.copy()
    for start, key in ((4000, "5"), (12000, "#")):
        keyed[start:start + 640] = dtmf_tone(key, 80.0, level_dbm0=-12.0)
    audio = ulaw_encode(keyed).tobytes()
    back = ulaw_encode(noise[::-1].copy()).tobytes()
    steps: list[tuple[str, bytes]] = []
    seq_c, seq_a = 1000, 60000  # the agent's numbers wrap during the session
    for i in range(140):
        frame = audio[160 * i:160 * i + 160]
        steps.append(("caller", rtp(seq_c, frame)))
        seq_c += 1
        steps.append(("agent", rtp(seq_a, back[160 * i:160 * i + 160], pt=agent_pt, ssrc=0xBEEF)))
        seq_a += 1
        r = rnd.random()
        if i == 20:
            seq_c += 3  # a gap
        elif i == 30:
            steps.append(("caller", rtp(seq_c - 2, frame)))  # late
            steps.append(("caller", rtp(seq_c - 1, frame)))  # duplicate
        elif i == 40:
            steps.append(("caller", rtp(seq_c, frame[:100])))  # odd size
            seq_c += 1
        elif i == 45:
            steps.append(("caller", rtp(seq_c, frame, padding=4)))
            steps.append(("agent", rtp(seq_a, frame, pt=agent_pt, ssrc=0xBEEF, extension=b"\x10\x01\x02\x03")))
            steps.append(("caller", rtp(seq_c + 1, frame, csrcs=(7, 8))))
            seq_c += 2
            seq_a += 1
        elif i == 50:
            for k in range(3):
                steps.append(("caller", rtp(seq_c + k, b"\x05\x0a\x00\xa0", pt=101, ts=160 * seq_c)))
            steps.append(("caller", rtp(seq_c + 3, b"\x05\x8a\x01\x40", pt=101, ts=160 * seq_c)))
            seq_c += 4
        elif i == 60:
            steps.append(("stranger", rtp(seq_c, frame)))
            steps.append(("caller", b"\x80\x00"))  # short
            steps.append(("caller", b"\x40" + bytes(171)))  # version 1
            steps.append(("caller", rtp(seq_c, frame, pt=33)))  # not negotiated
        elif i == 70:
            seq_c = 5  # a new SSRC restarts the count
            steps.append(("caller", rtp(seq_c, frame, ssrc=0xD00D)))
            seq_c += 1
        elif i == 80:
            seq_c += 40000  # a jump: counted only when the next packet confirms it
        elif r < 0.05:
            steps.append(("caller", bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 300)))))
        elif r < 0.08:
            steps.append(("agent", bytes([0x80]) + bytes(rnd.getrandbits(8) for _ in range(171))))
    # Every caller packet after a new SSRC switch carries the new one.
    fixed: list[tuple[str, bytes]] = []
    new_ssrc = False
    for who, data in steps:
        if who == "caller" and len(data) >= 12 and data[:2] == b"\x80\x00" and data[8:12] == struct.pack("!I", 0xD00D):
            new_ssrc = True
        if new_ssrc and who == "caller" and len(data) >= 12 and data[0] & 0xC0 == 0x80:
            data = data[:8] + struct.pack("!I", 0xD00D) + data[12:]
        fixed.append((who, data))
    return fixed


class Session:
    """A controller, its one call, and the peers' sockets."""

    def __init__(self, fast: bool, caller_codec: str = "PCMU", agent_codec: str = "PCMU",
                 srtp_caller: bool = False, mask_always: bool = False, port: int = 33000) -> None:
        relay = Relay(detector=DetectorBank(capacity=4), masker=MaskerBank(MaskMode.SILENCE))
        self.ctl = RtpMediaController(HOST, port, port + 99, relay=relay, fast_path=fast)
        assert self.ctl.fast_path is fast
        self.events: list[Any] = []
        self.ctl.on_event = self.events.append
        self.caller, self.agent, self.stranger = udp(), udp(), udp()
        self.call = self.ctl.open_call("c1")
        self.gw_key = base64.b64encode(bytes(range(30))).decode()
        self.peer_key = base64.b64encode(bytes(range(30, 60))).decode()
        params = SrtpParams(SUITE, self.gw_key, self.peer_key) if srtp_caller else None
        self.srtp_peer = SrtpLeg(SrtpParams(SUITE, self.peer_key, self.gw_key)) if srtp_caller else None

        def leg_media(sock: socket.socket, codec: str, te: int, srtp: SrtpParams | None = None) -> LegMedia:
            port = sock.getsockname()[1]
            return LegMedia(remote_rtp=(HOST, port), remote_rtcp=(HOST, port + 1), codec=codec,
                            audio_pt=0 if codec == "PCMU" else 8, telephone_event_pt=te, srtp=srtp)

        self.call.configure(leg_media(self.caller, caller_codec, 101, params), leg_media(self.agent, agent_codec, 96))
        if mask_always:
            self.call.set_mask_always(True)

    def send(self, who: str, data: bytes) -> None:
        if who == "caller" and self.srtp_peer is not None and len(data) >= 12 and data[0] & 0xC0 == 0x80:
            try:
                data = self.srtp_peer.protect(data)
            except Exception:  # noqa: BLE001 - garbage the library refuses to protect goes as is
                pass
        sock = {"caller": self.caller, "agent": self.agent, "stranger": self.stranger}[who]
        port = self.call.agent_port if who == "agent" else self.call.caller_port
        sock.sendto(data, (HOST, port))

    def observed(self) -> dict[str, Any]:
        relay = self.ctl.relay
        call = relay.calls["c1"]
        legs = {name: (leg.rx_next, leg.rx_ssrc, leg.rx_lost, leg.rx_pair_seq, leg.rtp_src is not None, leg.seq_offset,
                       type(leg.last_rx_s).__name__)
                for name, leg in (("caller", call.caller), ("agent", call.agent))}
        # Per kind: when the detector runs (its 10 ms window) against the packets is wall-clock
        # time, so in-band and RFC 4733 events may interleave differently on any two runs.
        events = sorted((type(e).__name__, str(getattr(e, "digit", "")), getattr(e, "start_sample", None) or 0,
                         getattr(e, "rtp_timestamp", None) or 0) for e in self.events)
        return {
            "relayed": list(relay.stats.relayed),
            "relayed_bytes": list(relay.stats.relayed_bytes),
            "drops": relay.stats.drops_total(),
            "lost": relay.stats.packets_lost_total(),
            "captured": relay.stats.captured,
            "detector_rows": relay.stats.detector_rows,
            "legs": legs,
            "events": events,
        }

    def close(self) -> None:
        self.ctl.close()
        for s in (self.caller, self.agent, self.stranger):
            s.close()


async def run(session: Session, steps: list[tuple[str, bytes]]) -> tuple[list[bytes], list[bytes], dict[str, Any]]:
    at_agent: list[bytes] = []
    at_caller: list[bytes] = []
    for who, data in steps:
        session.send(who, data)
        await settle()
        at_agent += drain(session.agent)
        at_caller += drain(session.caller)
    await asyncio.sleep(0.05)  # the detector's window timer
    await settle()
    at_agent += drain(session.agent)
    at_caller += drain(session.caller)
    return at_agent, at_caller, session.observed()


CASES = {
    "plain": {},
    "law-conversion": {"agent_codec": "PCMA"},
    "srtp-caller": {"srtp_caller": True},
    "mask-always": {"mask_always": True},
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_accelerator_and_python_path_give_the_same_session(case: str) -> None:
    require_accelerator()
    steps = script(seed=len(case), agent_pt=8 if CASES[case].get("agent_codec") == "PCMA" else 0)
    results = []
    for fast, port in ((False, 33000), (True, 33200)):
        session = Session(fast, port=port, **CASES[case])
        try:
            results.append(await run(session, steps))
        finally:
            session.close()
    (agent_py, caller_py, seen_py), (agent_c, caller_c, seen_c) = results
    assert len(agent_py) > 100 and len(caller_py) > 100
    assert agent_c == agent_py
    assert caller_c == caller_py
    assert seen_c == seen_py
    if case == "plain":
        # The script exercises what it says: digits found, drops of every kind, loss counted.
        assert sorted(e[1] for e in seen_py["events"] if e[0] == "InBandDigitDetected") == ["#", "5"]
        reasons = {r for (_, r) in seen_py["drops"]}
        assert {"short", "version", "payload_type", "unexpected_source"} <= reasons, reasons
        assert seen_py["lost"][("caller_to_agent",)] > 0
        assert any(p[1] == 96 for p in agent_py)  # telephone-event PT remapped 101 -> 96


async def test_accelerator_forwards_the_common_case_itself() -> None:
    """The plain packets do not come back to Python (the point of the accelerator)."""
    require_accelerator()
    session = Session(True, port=33400)
    calls = []
    original = session.ctl.relay.receive_rtp

    def spy(*args: Any) -> Any:
        calls.append(args[1])
        return original(*args)

    session.ctl.relay.receive_rtp = spy  # type: ignore[method-assign]
    try:
        frames = [rtp(100 + i, os.urandom(160)) for i in range(64)]
        for pkt in frames:
            session.send("caller", pkt)
            await settle()
        got = drain(session.agent)
        assert got == frames
        # Only the first packet (it latches the source and starts the stream) takes the long way.
        assert len(calls) == 1
        assert session.ctl.relay.stats.relayed[0] == 64
        assert session.ctl.relay.detect_rows_pending + session.ctl.relay.stats.detector_rows == 64
    finally:
        session.close()


async def test_capture_turns_the_accelerator_off_for_the_caller_leg_at_once() -> None:
    """No packet of a masked leg leaves unmasked: the C path reads the leg's mode per packet."""
    require_accelerator()
    session = Session(True, port=33600)
    tone = ulaw_encode(np.tile(dtmf_tone("7", 20.0, level_dbm0=-6.0), 1)).tobytes()
    try:
        for i in range(20):
            session.send("caller", rtp(i, tone))
            await settle()
        before = drain(session.agent)
        assert [p[12:] for p in before] == [tone] * 20
        session.call.set_capture(True)
        for i in range(20, 60):
            session.send("caller", rtp(i, tone))
            await settle()
        await asyncio.sleep(0.05)
        await settle()
        during = drain(session.agent)
        assert during and all(p[12:] != tone for p in during)
    finally:
        session.close()


def test_accelerator_refuses_what_it_cannot_judge() -> None:
    require_accelerator()
    fr = edge.FastRelay(Leg, 15, 8, 0.125)
    try:
        with pytest.raises(TypeError):
            fr.add(0, object(), 1)
        with pytest.raises(TypeError):
            edge.FastRelay(int, 15, 8, 0.125)
        fr.remove(12345)  # unknown: ignored
        assert fr.registered() == 0
    finally:
        fr.close()
    with pytest.raises(ValueError):
        fr.drain(0.0, [], [])


async def test_controller_without_accelerator_when_asked() -> None:
    ctl = RtpMediaController(HOST, 33800, 33899, relay=Relay(), fast_path=False)
    try:
        assert not ctl.fast_path
    finally:
        ctl.close()


def core_rig(relay: Relay, peer_c: socket.socket, peer_a: socket.socket, agent_te: int,
             socks: list[socket.socket]) -> tuple[Any, socket.socket, socket.socket]:
    """One call in `relay` between the two peers, its legs on two gateway sockets (added to `socks`)."""
    call = relay.add_call("rig")
    gw_c, gw_a = udp(), udp()
    socks += [gw_c, gw_a]
    call.caller.endpoint, call.agent.endpoint = gw_c, gw_a
    pc, pa = peer_c.getsockname()[1], peer_a.getsockname()[1]
    relay.configure("rig", LegMedia((HOST, pc), (HOST, pc + 1), "PCMU", 0, 101),
                    LegMedia((HOST, pa), (HOST, pa + 1), "PCMU", 0, agent_te))
    return call, gw_c, gw_a


def test_accelerator_keeps_the_streams_numbers_exactly_as_the_core() -> None:
    """RFC 3550 A.1 and A.8 state after each packet, same arrival times: equal to the last bit."""
    require_accelerator()
    rnd = random.Random(7)
    relays = [Relay(), Relay()]
    socks: list[socket.socket] = []
    try:
        peer_c, peer_a = udp(), udp()
        socks += [peer_c, peer_a]
        calls = [core_rig(relay, peer_c, peer_a, 101, socks) for relay in relays]
        py_relay, c_relay = relays
        py_call, c_call = calls[0][0], calls[1][0]
        fr = edge.FastRelay(Leg, *c_relay.jitter_sampling)
        fr.add(calls[1][1].fileno(), c_call.caller, calls[1][2].fileno())
        addr = peer_c.getsockname()
        fast = 0
        seq, ts = 65500, 4294960000  # both wrap
        for i in range(400):
            now = 1000.0 + 0.02 * i + rnd.uniform(0.0, 0.004) + (0.05 if i % 97 == 0 else 0.0)
            if i % 50 == 49:
                seq += 2  # a gap: the long way, then the fast path again
            marked = i % 61 == 7  # a talkspurt starts: the long way (the detector gets the pause back)
            pkt = rtp(seq, os.urandom(160), ts=ts, marker=marked)
            seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
            if i == 200:
                # RFC 4733 packets withheld in a capture: the rest of the call is renumbered.
                py_call.caller.seq_offset = c_call.caller.seq_offset = 3
            sent = py_relay.receive_rtp(py_call.caller, pkt, addr, now)
            peer_c.sendto(pkt, calls[1][1].getsockname())
            slow, counts = fr.drain(now, c_relay._det_slots, c_relay._det_payloads)
            fast += counts[0]
            if marked:
                assert counts[0] == 0 and len(slow) == 1, i
            for leg, data, src in slow or ():
                assert src == addr
                out = c_relay.receive_rtp(leg, data, src, now)
                if out is not None:
                    calls[1][2].sendto(out[0], out[1])
            assert sent is not None
            assert peer_a.recv(4096) == sent[0], i
            a, b = py_call.caller, c_call.caller
            assert (b.rx_next, b.rx_lost, b.rx_pair_seq, b.rx_pairs, b.last_rx_s) == \
                (a.rx_next, a.rx_lost, a.rx_pair_seq, a.rx_pairs, a.last_rx_s), i
            assert b.rx_transit == a.rx_transit and b.rx_jitter == a.rx_jitter, i
        assert py_call.caller.rx_jitter > 0
        assert fast >= 383  # all but the first packet, the packets after each gap and the marked ones
        assert int.from_bytes(sent[0][2:4], "big") == (seq - 1 - 3) & 0xFFFF
        fr.close()
    finally:
        for s in socks:
            s.close()


def test_accelerator_setting_is_checked_at_load(tmp_path) -> None:
    from gateway.config import ConfigError, load_config

    path = tmp_path / "tonewall.toml"
    path.write_text('[media]\naddress = "127.0.0.1"\naccelerator = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert ":3" in str(err.value) and "accelerator" in str(err.value)
    path.write_text('[media]\naccelerator = "off"\n')
    assert load_config(path).media.accelerator == "off"
    assert load_config(None).media.accelerator == "auto"


@pytest.mark.parametrize("setting", ["auto", "off", "on"])
async def test_gateway_relays_through_the_accelerator_when_built(setting: str, tmp_path) -> None:
    """`tonewall run`'s media controller: the C path by default, the Python path when turned off."""
    import dataclasses

    from gateway.app import Gateway
    from gateway.config import ApiConfig, Config, HostPort, MediaConfig, MetricsConfig, SipConfig

    if setting != "off":
        require_accelerator()
    anywhere = HostPort(HOST, 0)
    config = dataclasses.replace(Config(), data_dir=str(tmp_path / "data"), sip=SipConfig(listen=anywhere),
                                 api=ApiConfig(listen=anywhere), metrics=MetricsConfig(listen=anywhere),
                                 media=MediaConfig(rtp_ports=(34000, 34099), accelerator=setting))
    gw = Gateway(config)
    try:
        await gw.start()
        assert gw.media.fast_path is (setting != "off")
    finally:
        await gw.stop()


class SimLoop:
    """Just enough of an event loop to drive the edge by hand on a simulated clock."""

    class Handle:
        def __init__(self, loop: "SimLoop", when: float, callback: Any) -> None:
            self.when, self.callback, self.cancelled = when, callback, False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: list[Any] = []
        self.timers: list["SimLoop.Handle"] = []

    def add_reader(self, *args: Any) -> None:
        pass

    def remove_reader(self, *args: Any) -> None:
        pass

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append((callback, args))

    def call_at(self, when: float, callback: Any) -> "SimLoop.Handle":
        handle = SimLoop.Handle(self, when, callback)
        self.timers.append(handle)
        return handle

    def run_soon(self) -> None:
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)

    def advance(self, to: float) -> None:
        """Fire every timer due before `to`, at its own time, then move the clock to `to`."""
        while True:
            due = [h for h in self.timers if not h.cancelled and h.when <= to]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.timers.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()
            self.run_soon()
        self.timers = [h for h in self.timers if not h.cancelled]
        self.now = to


@pytest.mark.parametrize("mask_mode", [MaskMode.SILENCE, MaskMode.FLAT])
def test_capture_through_the_accelerator_leaves_the_same_bytes_at_the_same_times(monkeypatch, mask_mode) -> None:
    """A capture with look-ahead (held packets, deadline releases, RFC 4733 withheld and renumbered),
    driven on a simulated clock through both edges: the agent gets the same bytes at the same moments."""
    require_accelerator()
    rnd = random.Random(3)
    tones = np.concatenate([np.zeros(800), dtmf_tone("3", 90.0, level_dbm0=-8.0), np.zeros(1200),
                            dtmf_tone("9", 120.0, level_dbm0=-20.0), np.zeros(800)])
    noise = white_noise(8000 * 4, -35.0, np.random.default_rng(1))
    voice = noise.copy()
    voice[8000:8000 + len(tones)] += tones
    voice[20000:20000 + len(tones)] += tones
    codes = ulaw_encode(voice).tobytes()
    arrivals = []
    t = 1000.0
    for i in range(190):
        t += 0.020 + rnd.uniform(-0.002, 0.002) + (0.012 if i % 13 == 5 else 0.0)  # some arrive past the hold deadline
        arrivals.append(t)
    outputs = []
    for fast in (False, True):
        loop = SimLoop()
        monkeypatch.setattr(edge, "perf_counter", lambda loop=loop: loop.now)
        relay = Relay(detector=DetectorBank(capacity=4), masker=MaskerBank(mask_mode))
        ctl = RtpMediaController(HOST, 35000 + 200 * fast, 35199 + 200 * fast, relay=relay,
                                 loop=loop, fast_path=fast)  # type: ignore[arg-type]
        caller, agent = udp(), udp()
        got: list[tuple[float, bytes]] = []
        try:
            call = ctl.open_call("cap")
            pc, pa = caller.getsockname()[1], agent.getsockname()[1]
            call.configure(LegMedia((HOST, pc), (HOST, pc + 1), "PCMU", 0, 101),
                           LegMedia((HOST, pa), (HOST, pa + 1), "PCMU", 0, 101))
            leg = relay.calls["cap"].caller
            long_way: list[bytes] = []
            core_receive = relay.receive_rtp

            def counted(leg: Leg, data: bytes, *rest: Any) -> Any:
                long_way.append(data)
                return core_receive(leg, data, *rest)

            relay.receive_rtp = counted  # type: ignore[method-assign]
            seq = 0
            for i, when in enumerate(arrivals):
                loop.advance(when)
                got += [(loop.now, p) for p in drain(agent)]
                if i == 10:
                    ctl.set_capture("cap", True)
                elif i == 170:
                    ctl.set_capture("cap", False)
                if i in (60, 61, 62):  # an RFC 4733 key in the capture: withheld, the rest renumbered
                    caller.sendto(rtp(seq, b"\x07\x0a\x00\xa0" if i < 62 else b"\x07\x8a\x01\xe0", pt=101,
                                      ts=160 * 60), (HOST, call.caller_port))
                else:
                    caller.sendto(rtp(seq, codes[160 * i:160 * i + 160], ts=160 * i), (HOST, call.caller_port))
                seq += 1
                if fast:
                    ctl._drain()
                else:
                    ctl._read_rtp(leg, leg.endpoint.rtp.recvfrom, leg.peer.endpoint.rtp.sendto)
                loop.run_soon()
                got += [(loop.now, p) for p in drain(agent)]
            loop.advance(arrivals[-1] + 0.1)
            got += [(loop.now, p) for p in drain(agent)]
            outputs.append((got, relay.stats.captured, relay.stats.relayed[0], leg.seq_offset,
                            relay.stats.lookahead.counts[:]))
            if fast:  # masked packets too stay in C: only the latching packet and the events do not
                assert len(long_way) == 4, len(long_way)
        finally:
            ctl.close()
            caller.close()
            agent.close()
    (py, *py_counts), (c, *c_counts) = outputs
    assert len(py) >= 185
    assert c == py
    assert c_counts == py_counts
    assert py_counts[2] == 3  # the three event packets were withheld
    # The run proves something: both keys were in the caller's audio, none is in the agent's.
    heard = DtmfDetector()
    keys = [e for e in heard.process(ulaw_decode(b"".join(p[12:] for _, p in py))) + heard.flush()
            if type(e).__name__ == "DigitDetected"]
    assert keys == []
    said = DtmfDetector()
    keys = [e.digit for e in said.process(ulaw_decode(codes)) + said.flush() if type(e).__name__ == "DigitDetected"]
    assert keys == ["3", "9", "3", "9"]


def test_a_successor_waiting_in_its_socket_at_the_deadline_releases_the_held_packet(monkeypatch) -> None:
    """The loop runs timers before it polls: when a held packet's deadline comes due while its
    successor already sits in the socket (a busy loop), the edge reads it first, so the held
    packet leaves with its look-ahead, not as a deadline release (last block silenced)."""
    require_accelerator()
    loop = SimLoop()
    monkeypatch.setattr(edge, "perf_counter", lambda: loop.now)
    relay = Relay(detector=DetectorBank(capacity=4), masker=MaskerBank(MaskMode.FLAT))
    ctl = RtpMediaController(HOST, 35600, 35799, relay=relay, loop=loop, fast_path=True)  # type: ignore[arg-type]
    caller, agent = udp(), udp()
    try:
        call = ctl.open_call("late")
        pc, pa = caller.getsockname()[1], agent.getsockname()[1]
        call.configure(LegMedia((HOST, pc), (HOST, pc + 1), "PCMU", 0, 101),
                       LegMedia((HOST, pa), (HOST, pa + 1), "PCMU", 0, 101))
        loud = ulaw_encode(white_noise(160 * 12, -12.0, np.random.default_rng(5))).tobytes()
        got: list[bytes] = []

        def arrive(i: int, read: bool = True) -> None:
            caller.sendto(rtp(i, loud[160 * (i % 12):160 * (i % 12) + 160]), (HOST, call.caller_port))
            if read:
                ctl._drain()
                loop.run_soon()

        arrive(0)
        loop.advance(loop.now + 0.02)
        arrive(1)
        ctl.set_capture("late", True)
        for i in range(2, 6):
            loop.advance(loop.now + 0.02)
            arrive(i)
        got += drain(agent)
        # Packet 6 reaches the socket in time, but the loop is busy until after packet 5's deadline.
        loop.advance(loop.now + 0.0199)
        arrive(6, read=False)
        loop.advance(loop.now + 0.003)
        got += drain(agent)
        assert relay.stats.released_at_deadline == 0
        assert relay.calls["late"].caller.held is not None  # packet 6, holding in turn
        # Without a successor, the deadline releases packet 6 on its own.
        loop.advance(loop.now + 0.025)
        got += drain(agent)
        assert relay.stats.released_at_deadline == 1
        assert [struct.unpack("!H", p[2:4])[0] for p in got] == list(range(7))  # each packet once, in order
    finally:
        ctl.close()
        caller.close()
        agent.close()


def _read_caller(ctl: RtpMediaController, loop: SimLoop, leg: Leg, fast: bool) -> None:
    """One loop iteration on the simulated loop: the edge reads what waits on the caller leg's socket."""
    if fast:
        ctl._drain()
    else:
        ctl._read_rtp(leg, leg.endpoint.rtp.recvfrom, leg.peer.endpoint.rtp.sendto)
    loop.run_soon()


@pytest.mark.parametrize("fast", [False, True], ids=["python-edge", "c-edge"])
def test_a_deadline_passed_in_a_busy_loop_releases_at_the_iteration_not_the_timer(monkeypatch, fast) -> None:
    """The loop's timer steps in milliseconds and fires late; under load the loop wakes far more
    often. A held packet whose deadline passed by the end of an iteration leaves in that
    iteration, before the loop timer has fired."""
    if fast:
        require_accelerator()
    loop = SimLoop()
    monkeypatch.setattr(edge, "perf_counter", lambda: loop.now)
    relay = Relay(masker=MaskerBank(MaskMode.SILENCE))
    ctl = RtpMediaController(HOST, 35800 + 200 * fast, 35999 + 200 * fast, relay=relay,  # type: ignore[arg-type]
                             loop=loop, fast_path=fast)
    socks = [udp() for _ in range(4)]
    try:
        calls = []
        for name, caller, agent in (("a", socks[0], socks[1]), ("b", socks[2], socks[3])):
            call = ctl.open_call(name)
            pc, pa = caller.getsockname()[1], agent.getsockname()[1]
            call.configure(LegMedia((HOST, pc), (HOST, pc + 1), "PCMU", 0, 101),
                           LegMedia((HOST, pa), (HOST, pa + 1), "PCMU", 0, 101))
            ctl.set_capture(name, True)
            calls.append((call, caller, agent))
        quiet = bytes([0xFF]) * 160

        def arrive(k: int, seq: int) -> None:
            call, caller, _ = calls[k]
            caller.sendto(rtp(seq, quiet), (HOST, call.caller_port))
            _read_caller(ctl, loop, relay.calls[call.call_id].caller, fast)

        arrive(0, 0)  # call a: its packet 0 is held, deadline 20.5 ms on
        held_at = loop.now
        assert relay.calls["a"].caller.held is not None
        armed = [h for h in loop.timers if not h.cancelled]
        assert armed and min(h.when for h in armed) <= held_at + 0.0205 + 1e-9
        loop.now = held_at + 0.0207  # past a's deadline; the loop timer has not run (it fires late)
        arrive(1, 0)  # call b's packet: one loop iteration
        assert relay.stats.released_at_deadline == 1
        assert relay.calls["a"].caller.held is None
        assert [struct.unpack("!H", p[2:4])[0] for p in drain(calls[0][2])] == [0]
        assert drain(calls[1][2]) == []  # b's packet is held in turn
    finally:
        ctl.close()
        for s in socks:
            s.close()


def test_pending_says_whether_a_datagram_is_waiting() -> None:
    """The edge asks it before running a due detector batch (forwarding first)."""
    require_accelerator()
    socks: list[socket.socket] = []
    try:
        peer_c, peer_a = udp(), udp()
        socks += [peer_c, peer_a]
        relay = Relay(detector=DetectorBank(capacity=2))
        call, gw_c, gw_a = core_rig(relay, peer_c, peer_a, 101, socks)
        fr = edge.FastRelay(Leg, *relay.jitter_sampling)
        fr.add(gw_c.fileno(), call.caller, gw_a.fileno())
        assert fr.pending() is False
        peer_c.sendto(rtp(1, bytes(160)), gw_c.getsockname())
        for _ in range(100):
            if fr.pending():
                break
            time.sleep(0.001)
        assert fr.pending() is True
        fr.drain(1.0, relay._det_slots, relay._det_payloads)
        assert fr.pending() is False
        fr.close()
        assert fr.pending() is False
    finally:
        for s in socks:
            s.close()


def test_accelerator_agrees_with_the_core_on_arbitrary_datagrams() -> None:
    """Hypothesis: any datagram, valid or not, from the latched source or not: same bytes out, same state."""
    require_accelerator()
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    socks: list[socket.socket] = []
    peer_c, peer_a, stranger = udp(), udp(), udp()
    socks += [peer_c, peer_a, stranger]
    py_relay, c_relay = Relay(detector=DetectorBank(capacity=2)), Relay(detector=DetectorBank(capacity=2))
    py_call, _, _ = core_rig(py_relay, peer_c, peer_a, 96, socks)
    c_call, c_gw_c, c_gw_a = core_rig(c_relay, peer_c, peer_a, 96, socks)
    fr = edge.FastRelay(Leg, *c_relay.jitter_sampling)
    fr.add(c_gw_c.fileno(), c_call.caller, c_gw_a.fileno())
    clock = [500.0]
    state = {"seq": 0}

    header = st.tuples(st.sampled_from([0x80, 0x80, 0x80, 0x81, 0x90, 0xA0, 0x40, 0x00]),
                       st.sampled_from([0, 0, 0, 101, 8, 13, 0x80, 0xE5]),
                       st.sampled_from(["next", "next", "next", "same", "back", "jump"]),
                       st.sampled_from([160, 160, 160, 0, 1, 20, 2000]),
                       st.booleans())

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(header, st.binary(max_size=40)), min_size=1, max_size=30))
    def run(datagrams: list[Any]) -> None:
        for item in datagrams:
            clock[0] += 0.02
            if isinstance(item, bytes):
                pkt, from_stranger = item, False
            else:
                first, pt, step, size, from_stranger = item
                seq = {"next": state["seq"], "same": state["seq"] - 1, "back": state["seq"] - 5,
                       "jump": state["seq"] + 5000}[step] & 0xFFFF
                if step == "next":
                    state["seq"] += 1
                body = bytes((seq + k) & 0xFF for k in range(size))
                pkt = struct.pack("!BBHII", first, pt, seq, (160 * seq) & 0xFFFFFFFF, 0xFEED) + body
                if first & 0x10:
                    pkt = pkt[:12] + b"\xbe\xde\x00\x01\x11\x22\x33\x44" + pkt[12:]
            src = stranger if from_stranger else peer_c
            out = py_relay.receive_rtp(py_call.caller, pkt, src.getsockname(), clock[0])
            src.sendto(pkt, c_gw_c.getsockname())
            slow, _ = fr.drain(clock[0], c_relay._det_slots, c_relay._det_payloads)
            for leg, data, addr in slow or ():
                assert addr == src.getsockname()
                sent = c_relay.receive_rtp(leg, data, addr, clock[0])
                if sent is not None:
                    c_gw_a.sendto(sent[0], sent[1])
            got = drain(peer_a)
            assert got == ([out[0]] if out is not None else [])
            a, b = py_call.caller, c_call.caller
            for name in ("rx_next", "rx_ssrc", "rx_lost", "rx_pair_seq", "rx_pairs", "rx_transit", "rx_jitter",
                         "last_rx_s", "rtp_src", "seq_offset"):
                assert getattr(a, name) == getattr(b, name), name
            assert py_relay.stats.drops_total() == c_relay.stats.drops_total()
            assert c_relay._det_payloads == py_relay._det_payloads
            assert c_relay._det_slots == py_relay._det_slots

    try:
        run()
        assert py_relay.stats.relayed[0] > 0 and py_relay.detect_rows_pending > 0
    finally:
        fr.close()
        for s in socks:
            s.close()


def test_send_all_sends_from_each_legs_own_socket_and_hands_back_what_it_cannot() -> None:
    require_accelerator()
    relay = Relay()
    call = relay.add_call("s")
    gw_c, gw_a, peer = udp(), udp(), udp()
    fr = edge.FastRelay(Leg, *relay.jitter_sampling)
    try:
        fr.add(gw_c.fileno(), call.caller, gw_a.fileno())
        fr.add(gw_a.fileno(), call.agent, gw_c.fileno())
        dest = peer.getsockname()
        other = Relay().add_call("x").agent
        sends = [(call.agent, b"to-caller-side", dest), (call.caller, b"from-caller-leg", dest),
                 (other, b"unknown leg", dest), (call.agent, b"named host", ("localhost", dest[1])),
                 (call.agent, b"closed port", (HOST, 9))]
        left, errors = fr.send_all(sends)
        assert left == [sends[2], sends[3]]
        got = []
        while True:
            try:
                data, src = peer.recvfrom(100)
            except BlockingIOError:
                break
            got.append((data, src))
        assert got == [(b"to-caller-side", gw_a.getsockname()), (b"from-caller-leg", gw_c.getsockname())]
        assert errors in ((0, 0), (1, 0))  # a send to a closed port fails only once ICMP came back
        fr.remove(gw_a.fileno())
        left, _ = fr.send_all([(call.agent, b"after remove", dest)])
        assert left is not None and len(left) == 1
    finally:
        fr.close()
        for s in (gw_c, gw_a, peer):
            s.close()


# ---------------------------------------------------------------- the core's common row step in C


def _captured_calls(names: str) -> tuple[Relay, list[Leg]]:
    relay = Relay(masker=MaskerBank(MaskMode.SILENCE))
    legs = []
    for i, name in enumerate(names):
        relay.add_call(name)
        relay.configure(name, LegMedia((HOST, 40000 + 4 * i), (HOST, 40001 + 4 * i), "PCMU", 0, 101),
                        LegMedia((HOST, 40002 + 4 * i), (HOST, 40003 + 4 * i), "PCMU", 0, 101))
        relay.set_capture(name, True, now=0.0)
        legs.append(relay.calls[name].caller)
    return relay, legs


def _row(leg: Leg, seq: int, rx: float) -> tuple[Leg, bytes, int, float]:
    return (leg, rtp(seq, bytes([seq & 0xFF]) * 160), 12, rx)


def test_release_unchanged_holds_each_row_and_sends_what_its_leg_held() -> None:
    require_accelerator()
    relay, (a, b, c) = _captured_calls("abc")
    fast = edge.FastRelay(Leg, *relay.jitter_sampling)
    try:
        a0, c0 = _row(a, 0, 1.0), _row(c, 0, 1.001)
        a.held, b.held, c.held = a0, None, c0
        rows = [_row(a, 1, 1.02), _row(b, 1, 1.021), _row(c, 1, 1.022)]
        sends: list = []
        since: list = []
        done, relayed, new = fast.release_unchanged(rows, sends, since)
        assert (done, relayed, new) == (3, 2, [b])
        assert sends == [(a.peer, a0[1], a.peer.rtp_dest), (c.peer, c0[1], c.peer.rtp_dest)]
        assert since == [1.0, 1.001]
        assert (a.held, b.held, c.held) == tuple(rows)
    finally:
        fast.close()


@pytest.mark.parametrize("case", ["not capturing", "law conversion", "peer srtp", "no destination", "pt remapped",
                                  "held not a row", "not a leg"])
def test_release_unchanged_stops_at_a_row_off_the_common_case_having_changed_nothing_for_it(case) -> None:
    require_accelerator()
    relay, (a, b) = _captured_calls("ab")
    fast = edge.FastRelay(Leg, *relay.jitter_sampling)
    try:
        a0, b0 = _row(a, 0, 1.0), _row(b, 0, 1.001)
        a.held, b.held = a0, b0
        rows = [_row(a, 1, 1.02), _row(b, 1, 1.021)]
        if case == "not capturing":
            b.capturing = False
        elif case == "law conversion":
            b.xlate = bytes(range(256))
        elif case == "peer srtp":
            b.peer.srtp = object()
        elif case == "no destination":
            b.peer.rtp_dest = None
        elif case == "pt remapped":
            b.pt_map = bytes([8 if i == 0 else i for i in range(128)])
        elif case == "held not a row":
            b.held = ("not", "a", "row")
        else:
            rows[1] = (object(), rows[1][1], 12, 1.021)
        held_before = b.held
        sends: list = []
        since: list = []
        assert fast.release_unchanged(rows, sends, since) == (1, 1, None)
        assert sends == [(a.peer, a0[1], a.peer.rtp_dest)] and since == [1.0]
        assert a.held is rows[0] and b.held is held_before  # the core takes row 1 as it always did
    finally:
        fast.close()


def test_the_core_with_the_c_row_step_sends_what_it_sends_without() -> None:
    """Two relays fed the same packets at the same times, one taking the C row step: the same
    packets leave in the same order, with calls that stop the C step mid-batch (law conversion,
    mask = "always", capture switched off and on, new holders, a lost packet)."""
    require_accelerator()
    rng = random.Random(7)
    runs = []
    for accelerated in (False, True):
        relay = Relay(masker=MaskerBank(MaskMode.SILENCE))
        fast = edge.FastRelay(Leg, *relay.jitter_sampling)
        if accelerated:
            relay.accelerate(fast.release_unchanged)
        names = "abcde"
        for i, name in enumerate(names):
            relay.add_call(name)
            agent_codec, agent_pt = ("PCMA", 8) if name == "b" else ("PCMU", 0)
            relay.configure(name, LegMedia((HOST, 41000 + 4 * i), (HOST, 41001 + 4 * i), "PCMU", 0, 101),
                            LegMedia((HOST, 41002 + 4 * i), (HOST, 41003 + 4 * i), agent_codec, agent_pt, 101))
            if name == "d":
                relay.set_mask_always(name, True, now=0.0)
            else:
                relay.set_capture(name, True, now=0.0)
        noise = ulaw_encode(white_noise(160 * 40, -30.0, np.random.default_rng(3))).tobytes()
        rng.seed(7)
        out = []
        now = 1.0
        for k in range(40):
            order = list(enumerate(names))
            rng.shuffle(order)
            for i, name in order:
                if name == "c" and k == 17:
                    continue  # lost
                pkt = rtp(k, noise[160 * k:160 * k + 160], ssrc=0x100 + i)
                leg = relay.calls[name].caller
                direct = relay.receive_rtp(leg, pkt, (HOST, 41000 + 4 * i), now)
                if direct is not None:
                    out.append(("direct", direct[0]))  # call e outside its capture
                now += 0.0001
            if k == 20:
                out += [("off", d) for _, d, _ in relay.set_capture("e", False, now=now)]
            if k == 25:
                relay.set_capture("e", True, now=now)
            out += [(leg.name, data) for leg, data, _ in relay.process_pending(now)]
            now += 0.02 - 0.0005
            out += [("timer", data) for leg, data, _ in relay.handle_timer(now)]
        runs.append((out, relay.stats.captured, relay.stats.relayed[0], relay.stats.released_at_deadline))
        fast.close()
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 150


@pytest.mark.parametrize("fast", [False, True], ids=["python-edge", "c-edge"])
def test_packets_released_in_an_iteration_leave_before_its_detector_call(monkeypatch, fast) -> None:
    """The detector's call (~0.4 ms for a full batch) comes after the masked packets it would
    otherwise delay have been sent."""
    if fast:
        require_accelerator()
    loop = SimLoop()
    monkeypatch.setattr(edge, "perf_counter", lambda: loop.now)
    agent = udp()
    seen_at_detection: list[int] = []

    class Watching(DetectorBank):
        def process(self, slots, frames):  # type: ignore[override]
            seen_at_detection.append(len(drain(agent)))
            return super().process(slots, frames)

    relay = Relay(detector=Watching(capacity=4), masker=MaskerBank(MaskMode.SILENCE), detect_batch_rows=1)
    ctl = RtpMediaController(HOST, 36200 + 200 * fast, 36399 + 200 * fast, relay=relay,  # type: ignore[arg-type]
                             loop=loop, fast_path=fast)
    caller = udp()
    try:
        call = ctl.open_call("a")
        pc, pa = caller.getsockname()[1], agent.getsockname()[1]
        call.configure(LegMedia((HOST, pc), (HOST, pc + 1), "PCMU", 0, 101),
                       LegMedia((HOST, pa), (HOST, pa + 1), "PCMU", 0, 101))
        ctl.set_capture("a", True)
        leg = relay.calls["a"].caller
        for seq in range(3):
            caller.sendto(rtp(seq, bytes([0xFF]) * 160), (HOST, call.caller_port))
            _read_caller(ctl, loop, leg, fast)
            loop.now += 0.02
        # Packets 1 and 2 each released the one before; each was at the agent when the detector ran.
        assert seen_at_detection[1:] == [1, 1]
    finally:
        ctl.close()
        caller.close()
        agent.close()
