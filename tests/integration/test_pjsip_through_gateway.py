"""PJSIP caller -> tonewall run -> PJSIP agent: audio, RFC 4733 both ways, SRTP on the caller leg only."""

from __future__ import annotations

import pytest

from tests.integration.gateway_proc import GatewayProcess
from tests.peers.audio import read_wav, tones_wav
from tests.peers.multimon import decode_dtmf
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.mark.parametrize("caller_srtp", ["off", "mandatory"])
def test_audio_and_rfc4733_both_ways(tmp_path, caller_srtp):
    tones_wav(tmp_path / "caller.wav", "2580")
    agent_port = free_port()
    with GatewayProcess(tmp_path, next_hop_port=agent_port) as gateway:
        with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20), record=tmp_path / "agent.wav",
                       send_dtmf="47", dtmf_delay_s=0.3, timeout_s=25) as agent:
            with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                           target=f"sip:agent@127.0.0.1:{gateway.sip_port}", play=tmp_path / "caller.wav",
                           send_dtmf="19", dtmf_delay_s=2.0, hold_s=3.2, srtp=caller_srtp,
                           timeout_s=25) as caller:
                caller.wait_event("disconnected", 20)
                agent.wait_event("disconnected", 10)
            agent.wait_exit(5)
    assert gateway.returncode == 0
    caller_media = caller.of("media")
    agent_media = agent.of("media")
    assert caller_media and agent_media, (caller.events, agent.events)
    assert {m["codec"] for m in agent_media} <= {"PCMU", "PCMA"}
    savp = 49156  # PJMEDIA_TP_PROTO_RTP_SAVP
    assert all((m["proto"] == savp) == (caller_srtp == "mandatory") for m in caller_media)
    assert all(m["proto"] != savp for m in agent_media)  # the agent leg stays plain RTP
    assert all(m["remote"].startswith("127.0.0.1:") for m in caller_media + agent_media)
    # the gateway anchors media: neither peer sends straight to the other
    agent_rtp = {int(m["remote"].rsplit(":", 1)[1]) for m in agent_media}
    assert all(gateway.rtp_low <= port <= gateway.rtp_high for port in agent_rtp)
    assert "".join(e["digit"] for e in agent.of("dtmf")) == "19"
    assert "".join(e["digit"] for e in caller.of("dtmf")) == "47"
    assert read_wav(tmp_path / "agent.wav").size > 8000
    # Repeats collapsed: under load the agent's recorder can drop a 20 ms frame inside a tone,
    # which multimon-ng then reads as the same key twice ("25580"); "2580" has no repeated key.
    heard = decode_dtmf(tmp_path / "agent.wav")
    assert "2580" in "".join(k for i, k in enumerate(heard) if i == 0 or heard[i - 1] != k)
