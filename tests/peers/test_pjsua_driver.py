"""PJSIP caller -> PJSIP agent directly (no gateway): audio recorded, RFC 4733 both ways, multimon hears tones."""

from __future__ import annotations

import pytest

from tests.peers.audio import read_wav, tones_wav
from tests.peers.multimon import decode_dtmf
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_multimon_decodes_generated_tones(tmp_path):
    tones_wav(tmp_path / "t.wav", "159#")
    assert decode_dtmf(tmp_path / "t.wav") == "159#"


def test_caller_to_agent_audio_and_rfc4733_both_ways(tmp_path):
    tones_wav(tmp_path / "caller.wav", "2580")
    agent_port = free_port()
    with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20), record=tmp_path / "agent.wav",
                   send_dtmf="47", dtmf_delay_s=0.3, timeout_s=20) as agent:
        with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                       target=f"sip:agent@127.0.0.1:{agent_port}", play=tmp_path / "caller.wav",
                       send_dtmf="19", dtmf_delay_s=2.0, hold_s=3.2, timeout_s=20) as caller:
            caller.wait_event("disconnected", 15)
            agent.wait_event("disconnected", 10)
        agent.wait_exit(5)
    assert "".join(e["digit"] for e in agent.of("dtmf")) == "19"
    assert "".join(e["digit"] for e in caller.of("dtmf")) == "47"
    assert all(e["method"] == "rfc4733" for e in agent.of("dtmf"))
    assert read_wav(tmp_path / "agent.wav").size > 8000
    assert "2580" in decode_dtmf(tmp_path / "agent.wav")
