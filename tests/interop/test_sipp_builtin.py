"""SIPp's built-in scenarios through `tonewall run`, unmodified, the way outside testers start them.

    sipp -sn uas -p NEXT_HOP_PORT            (the agent / next hop)
    sipp -sn uac -r 5 -m 20 GATEWAY          (the caller)
    sipp -sn uac_pcap GATEWAY                (plays the shipped g711a.pcap, then dtmf_2833_1.pcap)

SIPp records no media, so the RTP reaching the agent is taken off the wire with
tcpdump and compared with the shipped pcap's payloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtmf.g711 import ALAW_TO_ULAW
from tests.integration.gateway_proc import GatewayProcess
from tests.peers.ports import free_block, free_port
from tests.peers.sipp_builtin import BuiltinSipp, dump, link_shipped_pcaps, shipped_pcap_dir
from tests.peers.sipp import Sipp
from tests.peers.wire import WireCapture, read_pcap, rtp_to

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CALLS = 20


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_builtin_uac_to_builtin_uas(tmp_path, transport):
    uas_port = free_port()
    hop = "tcp" if transport == "t1" else "udp"
    with GatewayProcess(tmp_path, next_hop_port=uas_port, next_hop_transport=hop) as gateway:
        with BuiltinSipp("uas", local_port=uas_port, transport=transport, workdir=tmp_path, calls=CALLS,
                         media_port=free_block(10), timeout_s=20) as callee:
            with BuiltinSipp("uac", local_port=free_port(), transport=transport, workdir=tmp_path,
                             remote=f"127.0.0.1:{gateway.sip_port}", calls=CALLS, rate=5,
                             media_port=free_block(10), timeout_s=20) as caller:
                result = caller.wait()
            callee_result = callee.wait(10)
    assert (result.successful, result.failed) == (CALLS, 0), (result.stderr, result.errors, gateway.lines[-5:])
    assert (callee_result.successful, callee_result.failed) == (CALLS, 0), (callee_result.stderr, callee_result.errors)
    assert gateway.returncode == 0
    counters = gateway.final_counters()
    assert counters["calls_started"] == CALLS
    assert counters["calls_active"] == 0


def pcma_uas() -> str:
    """SIPp's built-in uas with its one SDP line changed to answer what `uac_pcap` offers (PCMA + events)."""
    xml = dump("uas")
    fixed = "m=audio [media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000"
    assert fixed in xml, "SIPp's built-in uas SDP changed"
    return xml.replace(fixed, "m=audio [media_port] RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000\n"
                              "      a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-15")


def shipped_rtp(name: str) -> list:
    """The RTP packets of a shipped pcap, in file order."""
    packets = []
    for datagram in read_pcap(shipped_pcap_dir() / name):
        packets += [p for p, _ in rtp_to([datagram], datagram.dst[1])]
    return packets


def run_uac_pcap(tmp_path: Path, uas_xml: str | None) -> tuple:
    """uac_pcap -> gateway -> uas (built-in unless XML is given); the results and the RTP seen at the agent."""
    link_shipped_pcaps(tmp_path)
    uas_port, uas_media = free_port(), free_block(4)
    with GatewayProcess(tmp_path, next_hop_port=uas_port) as gateway:
        bpf = (f"udp and (dst port {uas_media} or dst port {uas_media + 1} "
               f"or (src portrange {gateway.rtp_low}-{gateway.rtp_high}))")
        with WireCapture(tmp_path / "agent-side.pcap", bpf) as wire:
            options = dict(local_port=uas_port, workdir=tmp_path, media_port=uas_media, timeout_s=25)
            callee = BuiltinSipp("uas", **options) if uas_xml is None else Sipp(uas_xml, **options)
            with callee:
                with BuiltinSipp("uac_pcap", local_port=free_port(), workdir=tmp_path,
                                 remote=f"127.0.0.1:{gateway.sip_port}", media_port=free_block(4),
                                 timeout_s=25) as caller:
                    result = caller.wait()
                callee_result = callee.wait(10)
            datagrams = wire.stop()
    return gateway, result, callee_result, rtp_to(datagrams, uas_media)


def check_audio_at_agent(gateway: GatewayProcess, at_agent: list) -> None:
    sent_audio = [p for p in shipped_rtp("g711a.pcap") if p.payload_type == 8]
    sent_event = [p for p in shipped_rtp("dtmf_2833_1.pcap") if p.payload_type == 101]
    audio = [p for p, _ in at_agent if p.payload_type == 8]
    events = [p for p, _ in at_agent if p.payload_type == 101]
    assert all(gateway.rtp_low <= d.src[1] <= gateway.rtp_high for _, d in at_agent), \
        {d.src for _, d in at_agent}
    # Outside a capture the caller's audio reaches the agent unchanged (DESIGN.md contract 2): every
    # shipped PCMA payload, in order, bit for bit (a start-up packet or two may be lost to latching).
    payloads = [p.payload for p in sorted(audio, key=lambda p: (p.sequence - audio[0].sequence) & 0xFFFF)]
    shipped = [p.payload for p in sent_audio]
    assert len(payloads) >= len(shipped) - 3, (len(payloads), len(shipped))
    start = shipped.index(payloads[0])
    assert payloads == shipped[start: start + len(payloads)]
    # The RFC 4733 event for '1' (event code 1, RFC 4733 3.2) reaches the agent on its answered PT.
    assert events, "no telephone-event reached the agent"
    assert {e.payload[0] for e in events} == {p.payload[0] for p in sent_event} == {1}
    assert any(e.payload[1] & 0x80 for e in events), "no end bit (RFC 4733 2.5.1.3)"


def test_builtin_uac_pcap_to_builtin_uas(tmp_path):
    # The built-in uas answers PCMU (RTP/AVP 0) to the PCMA+101 offer (against RFC 3264 6.1): the
    # gateway keeps the call, answers the caller PCMA and converts A-law to mu-law for the agent.
    gateway, result, callee, at_agent = run_uac_pcap(tmp_path, None)
    assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
    assert callee.ok, (callee.stderr, callee.errors)
    assert gateway.returncode == 0
    assert not [p for p, _ in at_agent if p.payload_type != 0], {p.payload_type for p, _ in at_agent}
    assert all(gateway.rtp_low <= d.src[1] <= gateway.rtp_high for _, d in at_agent)
    # Every shipped PCMA payload, in order, converted code for code by the G.711 A->mu table: the
    # agent hears the caller's audio after one requantisation (no events: the uas negotiated none).
    audio = [p for p, _ in at_agent]
    payloads = [p.payload for p in sorted(audio, key=lambda p: (p.sequence - audio[0].sequence) & 0xFFFF)]
    shipped = [p.payload.translate(ALAW_TO_ULAW) for p in shipped_rtp("g711a.pcap") if p.payload_type == 8]
    assert len(payloads) >= len(shipped) - 3, (len(payloads), len(shipped))
    start = shipped.index(payloads[0])
    assert payloads == shipped[start: start + len(payloads)]
    counters = gateway.final_counters()
    assert counters["calls_started"] == 1 and counters["calls_active"] == 0


def test_builtin_uac_pcap_audio_bit_exact_at_agent(tmp_path):
    gateway, result, callee, at_agent = run_uac_pcap(tmp_path, pcma_uas())
    assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
    assert callee.ok, (callee.stderr, callee.errors)
    assert gateway.returncode == 0
    check_audio_at_agent(gateway, at_agent)
