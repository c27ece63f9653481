"""SIPp caller -> tonewall run -> SIPp callee: UDP and TCP, RTP bit-exact, BYE each side, CANCEL, re-INVITE."""

from __future__ import annotations

import pytest

from tests.integration.gateway_proc import GatewayProcess, options
from tests.peers.ports import free_block, free_port
from tests.peers.rtp_sink import RtpSink
from tests.peers.sipp import Sipp, noise_ulaw, render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def run_pair(tmp_path, gateway: GatewayProcess, uac_xml: str, uas_xml: str, *, uas_port: int,
             transport: str = "u1", timeout_s: float = 20):
    with Sipp(uas_xml, local_port=uas_port, transport=transport, workdir=tmp_path,
              media_port=free_block(100), timeout_s=timeout_s) as callee:
        with Sipp(uac_xml, local_port=free_port(), transport=transport, workdir=tmp_path,
                  remote=f"127.0.0.1:{gateway.sip_port}", media_port=free_block(100),
                  timeout_s=timeout_s) as caller:
            result = caller.wait()
        callee_result = callee.wait(10)
    return result, callee_result


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_call_with_rtp_arrives_bit_exact(tmp_path, transport):
    uas_port = free_port()
    rtp_file = str(tmp_path / "caller.ulaw")
    sent = noise_ulaw(tmp_path / "caller.ulaw", 1.0, seed=7)
    hop = "tcp" if transport == "t1" else "udp"
    with GatewayProcess(tmp_path, next_hop_port=uas_port, next_hop_transport=hop) as gateway, RtpSink() as sink:
        result, callee = run_pair(tmp_path, gateway,
                                  render("uac_bye", rtp_file=rtp_file, rtp_ms=1400, hold_ms=100),
                                  render("uas", sdp_port=str(sink.port)), uas_port=uas_port, transport=transport)
        assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
        assert callee.ok, (callee.stderr, callee.errors)
        received = sink.audio(0)
        sources = {addr for _, addr in sink.packets}
    assert gateway.returncode == 0
    # Outside a capture the caller's audio reaches the agent unchanged (DESIGN.md contract 2).
    assert len(received) >= len(sent) - 320
    assert received == sent[: len(received)]
    assert all(gateway.rtp_low <= port <= gateway.rtp_high for _, port in sources)


@pytest.mark.parametrize("uac, uas", [
    ("uac_wait_bye", "uas_bye"),
    ("uac_cancel", "uas_cancel"),
    ("uac_reinvite", "uas"),
])
def test_call_flows(tmp_path, uac, uas):
    uas_port = free_port()
    with GatewayProcess(tmp_path, next_hop_port=uas_port) as gateway:
        result, callee = run_pair(tmp_path, gateway, render(uac, hold_ms=300), render(uas, hold_ms=300),
                                  uas_port=uas_port)
        assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
        assert callee.ok, (callee.stderr, callee.errors)
        assert options(gateway.sip_port).startswith("SIP/2.0 200")
    assert gateway.returncode == 0
    assert gateway.final_counters()["calls_active"] == 0
