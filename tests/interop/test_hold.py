"""Peer-driven mid-call changes: PJSIP hold/resume from either side; a SIPp caller moving its RTP port."""

from __future__ import annotations

import pytest

from tests.integration.gateway_proc import GatewayProcess
from tests.peers.audio import AGENT_HZ, CALLER_HZ, level_db, tone_wav
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port
from tests.peers.rtp_sink import RtpSink
from tests.peers.sipp import Sipp, noise_ulaw, rtp_stream, scenario, sdp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize("holder", ["agent", "caller"])
def test_hold_then_resume_keeps_audio_both_ways(tmp_path, holder):
    hold = {"hold_at_s": 1.0, "resume_at_s": 2.0}
    agent_port = free_port()
    with GatewayProcess(tmp_path, next_hop_port=agent_port) as gateway:
        with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20),
                       play=tone_wav(tmp_path / "agent-tone.wav", AGENT_HZ, 8),
                       record=tmp_path / "agent.wav", timeout_s=20,
                       **(hold if holder == "agent" else {})) as agent:
            with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                           target=f"sip:agent@127.0.0.1:{gateway.sip_port}",
                           play=tone_wav(tmp_path / "caller-tone.wav", CALLER_HZ, 8),
                           record=tmp_path / "caller.wav", hold_s=3.6, timeout_s=20,
                           **(hold if holder == "caller" else {})) as caller:
                caller.wait_event("disconnected", 15)
                agent.wait_event("disconnected", 5)
            agent.wait_exit(5)
    held = agent if holder == "agent" else caller
    assert held.of("hold_sent") and held.of("resume_sent"), held.events
    dirs = [e["dir"] for e in held.of("media_dir")]
    # RFC 3264 8.4: hold offers a=sendonly; resume offers a=sendrecv again.
    assert "sendonly" in dirs and dirs[-1] == "sendrecv", dirs
    # After the resume (2.0 s) plus settling, each side hears the other's tone again.
    after = (2.5, 3.3)
    heard_by_agent = level_db(tmp_path / "agent.wav", CALLER_HZ, *after)
    heard_by_caller = level_db(tmp_path / "caller.wav", AGENT_HZ, *after)
    before = (0.3, 0.9)
    assert level_db(tmp_path / "agent.wav", CALLER_HZ, *before) > -30, "no caller audio before hold"
    assert heard_by_agent > -30, f"caller audio lost after resume: {heard_by_agent:.1f} dB"
    assert heard_by_caller > -30, f"agent audio lost after resume: {heard_by_caller:.1f} dB"
    assert gateway.returncode == 0


def test_caller_reinvite_to_new_rtp_port_moves_agent_audio(tmp_path):
    uas_port = free_port()
    tone = tmp_path / "agent.ulaw"
    # Noise, not a tone: every 20 ms payload is then unique and its place in the stream is known.
    sent = noise_ulaw(tone, 4, seed=11)
    with GatewayProcess(tmp_path, next_hop_port=uas_port) as gateway, RtpSink() as old, RtpSink() as new:
        rtp = rtp_stream(tone)
        with Sipp(scenario("uas_reinvite", RTP=rtp), local_port=uas_port, workdir=tmp_path,
                  media_port=free_block(10), timeout_s=20) as agent:
            with Sipp(scenario("uac_newport", SDP=sdp(str(old.port)), SDP_NEW=sdp(str(new.port)),
                               BEFORE_MS=800, AFTER_MS=1200), local_port=free_port(), workdir=tmp_path,
                      remote=f"127.0.0.1:{gateway.sip_port}", timeout_s=20) as caller:
                result = caller.wait()
            agent_result = agent.wait(10)
        at_old, at_new = old.audio(0), new.audio(0)
    assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
    assert agent_result.ok, (agent_result.stderr, agent_result.errors)
    assert len(at_old) >= 3200, len(at_old)
    # RFC 3264 8.3.1: after the new answer the media goes to the new port (and, most of it, not the old one).
    assert len(at_new) >= 4800, (len(at_old), len(at_new))
    start = sent.find(at_new[:160])
    assert start >= len(at_old) - 800 and at_new == sent[start: start + len(at_new)]
    assert gateway.returncode == 0
