"""Loopback tests of the RTP edge: a real relayed call between two UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import numpy as np
import pytest

from dtmf.g711 import ulaw_encode
from gateway.media.leg import LegMedia, SrtpParams
from gateway.media.relay import InBandDigitDetected, Relay
from gateway.media.rtp import RtpPacket
from gateway.media.srtp import SrtpLeg
from gateway.transport.rtp import PortRange, RtpMediaController

HOST = "127.0.0.1"
SUITE = "AES_CM_128_HMAC_SHA1_80"


def udp_pair() -> tuple[socket.socket, socket.socket]:
    """A peer's RTP and RTCP sockets on consecutive ports."""
    for _ in range(50):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((HOST, 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((HOST, port + 1))
            except OSError:
                rtcp.close()
                rtp.close()
                continue
            rtp.setblocking(False)
            rtcp.setblocking(False)
            return rtp, rtcp
        rtp.close()
    raise OSError("no consecutive ports")


def media(sock: socket.socket, pt: int = 0, te: int | None = 101, srtp: SrtpParams | None = None) -> LegMedia:
    port = sock.getsockname()[1]
    return LegMedia(remote_rtp=(HOST, port), remote_rtcp=(HOST, port + 1), codec="PCMU", audio_pt=pt,
                    telephone_event_pt=te, srtp=srtp)


def audio(seq: int, payload: bytes | None = None, ssrc: int = 0xCAFE) -> bytes:
    body = payload if payload is not None else os.urandom(160)
    return bytes(RtpPacket(payload_type=0, sequence_number=seq, timestamp=160 * seq, ssrc=ssrc, payload=body))


async def recv(sock: socket.socket, timeout_s: float = 2.0) -> bytes:
    data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 2048), timeout_s)
    return data


@pytest.fixture
async def controller():
    ctl = RtpMediaController(HOST, 31000, 31099, relay=Relay())
    yield ctl
    ctl.close()


async def test_relayed_call_bit_exact_both_ways_with_garbage(controller: RtpMediaController) -> None:
    caller, caller_rtcp = udp_pair()
    agent, agent_rtcp = udp_pair()
    try:
        call = controller.open_call("call-1")
        assert call.caller_port % 2 == 0 and call.agent_port % 2 == 0
        assert 31000 <= call.caller_port <= 31098 and call.agent_port != call.caller_port
        call.configure(media(caller), media(agent, te=96))
        to_gw_caller = (HOST, call.caller_port)
        to_gw_agent = (HOST, call.agent_port)
        for seq in range(20):
            pkt = audio(seq)
            caller.sendto(pkt, to_gw_caller)
            assert await recv(agent) == pkt
            if seq % 5 == 0:
                caller.sendto(b"\x00garbage", to_gw_caller)
                caller.sendto(b"\x80\x21" + bytes(170), to_gw_caller)  # PT 33, not negotiated
            back = audio(seq, ssrc=0xBEEF)
            agent.sendto(back, to_gw_agent)
            assert await recv(caller) == back
        event = bytes(RtpPacket(payload_type=101, sequence_number=99, timestamp=5, ssrc=0xCAFE,
                                payload=b"\x05\x0a\x01\x40"))
        caller.sendto(event, to_gw_caller)
        got = await recv(agent)
        assert got[1] == 96 and got[2:] == event[2:]
        rr = struct.pack("!BBHI", 0x80, 201, 1, 0xCAFE)
        caller_rtcp.sendto(rr, (HOST, call.caller_port + 1))
        assert await recv(agent_rtcp) == rr
        stats = controller.relay.stats
        assert stats.relayed == [21, 20]
        assert stats.drops[0]["short"] == 4 and stats.drops[0]["payload_type"] == 4
        assert stats.rtcp_relayed == [1, 0]
        assert stats.processing.count >= 41
        assert call.last_packet_s is not None
    finally:
        for s in (caller, caller_rtcp, agent, agent_rtcp):
            s.close()


@pytest.mark.parametrize("srtp_side", ["caller", "agent"])
async def test_srtp_on_one_leg_plain_on_the_other(controller: RtpMediaController, srtp_side: str) -> None:
    caller, caller_rtcp = udp_pair()
    agent, agent_rtcp = udp_pair()
    gw_key = base64.b64encode(os.urandom(30)).decode()
    peer_key = base64.b64encode(os.urandom(30)).decode()
    peer = SrtpLeg(SrtpParams(SUITE, peer_key, gw_key))
    params = SrtpParams(SUITE, gw_key, peer_key)
    try:
        call = controller.open_call("call-s")
        call.configure(media(caller, srtp=params if srtp_side == "caller" else None),
                       media(agent, srtp=params if srtp_side == "agent" else None))
        for seq in range(5):
            pkt = audio(seq)
            caller.sendto(peer.protect(pkt) if srtp_side == "caller" else pkt, (HOST, call.caller_port))
            got = await recv(agent)
            assert (peer.unprotect(got) if srtp_side == "agent" else got) == pkt
            back = audio(seq, ssrc=7)
            agent.sendto(peer.protect(back) if srtp_side == "agent" else back, (HOST, call.agent_port))
            got = await recv(caller)
            assert (peer.unprotect(got) if srtp_side == "caller" else got) == back
        # A packet that fails authentication is dropped and counted.
        src, port = (caller, call.caller_port) if srtp_side == "caller" else (agent, call.agent_port)
        src.sendto(audio(77), (HOST, port))
        nxt = audio(78)
        src.sendto(peer.protect(nxt), (HOST, port))
        dst = agent if srtp_side == "caller" else caller
        assert await recv(dst) == nxt
        assert sum(controller.relay.stats.drops_total().values()) == 1
    finally:
        for s in (caller, caller_rtcp, agent, agent_rtcp):
            s.close()


async def test_ports_come_from_the_range_and_run_out() -> None:
    ctl = RtpMediaController(HOST, 31200, 31207)  # four pairs: two calls
    try:
        a = ctl.open_call("a")
        b = ctl.open_call("b")
        ports = {a.caller_port, a.agent_port, b.caller_port, b.agent_port}
        assert ports == {31200, 31202, 31204, 31206}
        with pytest.raises(OSError):
            ctl.open_call("c")
        a.close()
        c = ctl.open_call("c")
        assert {c.caller_port, c.agent_port} == {31200, 31202}
    finally:
        ctl.close()


def test_port_range_validation() -> None:
    with pytest.raises(ValueError):
        PortRange(HOST, 100, 200)
    with pytest.raises(ValueError):
        PortRange(HOST, 40000, 40000)


async def test_dtmf_hook_sees_in_band_digits_over_loopback() -> None:
    detector_mod = pytest.importorskip("dtmf.detector")
    from dtmf.tones import dtmf_sequence, to_int16

    events = []
    third_digit = asyncio.Event()

    def on_event(ev) -> None:
        events.append(ev)
        if sum(isinstance(e, InBandDigitDetected) for e in events) == 3:
            third_digit.set()

    ctl = RtpMediaController(HOST, 31300, 31399, relay=Relay(detector=detector_mod.DetectorBank(capacity=8)),
                             on_event=on_event)
    caller, caller_rtcp = udp_pair()
    agent, agent_rtcp = udp_pair()
    try:
        call = ctl.open_call("d")
        call.configure(media(caller), media(agent))
        signal, _ = dtmf_sequence("42*", tail_ms=200.0)
        codes = ulaw_encode(to_int16(signal)).tobytes()
        for seq in range(len(codes) // 160):
            pkt = audio(seq, payload=codes[160 * seq:160 * seq + 160])
            caller.sendto(pkt, (HOST, call.caller_port))
            assert await recv(agent) == pkt  # outside a capture: bit-exact
        # Detection is batched: the last rows run from the relay's timer, within its window.
        await asyncio.wait_for(third_digit.wait(), 2.0)
        digits = "".join(e.digit for e in events if isinstance(e, InBandDigitDetected))
        assert digits == "42*"
        assert all(e.call_id == "d" for e in events if isinstance(e, InBandDigitDetected))
    finally:
        ctl.close()
        for s in (caller, caller_rtcp, agent, agent_rtcp):
            s.close()
