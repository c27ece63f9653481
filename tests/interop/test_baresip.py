"""baresip (Debian 1.0.0) through `tonewall run`, as caller (audio + RFC 4733 `sndcode`) and as agent."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.gateway_proc import GatewayProcess
from tests.peers.audio import AGENT_HZ, CALLER_HZ, level_db, tone_wav
from tests.peers.baresip import Baresip
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DIGITS = "57#"


def test_baresip_caller_audio_and_rfc4733_reach_pjsip_agent(tmp_path):
    agent_port = free_port()
    rtp = free_block(10)
    with GatewayProcess(tmp_path, next_hop_port=agent_port) as gateway:
        with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20), record=tmp_path / "agent.wav",
                       play=tone_wav(tmp_path / "agent-tone.wav", AGENT_HZ, 8), timeout_s=20) as agent:
            # The aufile microphone hangs up at the end of its 3.5 s WAV (PEERS.md).
            with Baresip(tmp_path, user="caller", rtp_ports=(rtp, rtp + 9), lifetime_s=15,
                         source_wav=tone_wav(tmp_path / "caller-tone.wav", CALLER_HZ, 3.5)) as caller:
                assert caller.command("dial", f"sip:agent@127.0.0.1:{gateway.sip_port}")["ok"]
                agent.wait_event("media", 5)
                time.sleep(0.8)
                for digit in DIGITS:
                    assert caller.command("sndcode", digit)["ok"]
                    time.sleep(0.4)
                agent.wait_event("disconnected", 8)
                recordings = caller.recordings()
            agent.wait_exit(5)
    assert gateway.returncode == 0
    media = agent.of("media")
    assert media and {m["codec"] for m in media} <= {"PCMU", "PCMA"}, agent.events
    assert all(gateway.rtp_low <= int(m["remote"].rsplit(":", 1)[1]) <= gateway.rtp_high for m in media)
    received = agent.of("dtmf")
    assert "".join(e["digit"] for e in received) == DIGITS, received
    assert {e["method"] for e in received} == {"rfc4733"}
    assert level_db(tmp_path / "agent.wav", CALLER_HZ, 0.3, 2.5) > -30
    heard = [p for p in recordings if p.name.endswith("-dec.wav")]
    assert heard and level_db(heard[0], AGENT_HZ, 0.5, 2.5) > -30, recordings


def test_pjsip_caller_to_baresip_agent(tmp_path):
    rtp = free_block(10)
    with Baresip(tmp_path, user="agent", rtp_ports=(rtp, rtp + 9), answer=True, lifetime_s=15,
                 source_wav=tone_wav(tmp_path / "agent-tone.wav", AGENT_HZ, 10)) as agent:
        with GatewayProcess(tmp_path, next_hop_port=agent.sip_port) as gateway:
            with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                           target=f"sip:agent@127.0.0.1:{gateway.sip_port}", record=tmp_path / "caller.wav",
                           play=tone_wav(tmp_path / "caller-tone.wav", CALLER_HZ, 8), hold_s=3.0,
                           send_dtmf="19", dtmf_delay_s=1.0, timeout_s=15) as caller:
                caller.wait_event("disconnected", 10)
            time.sleep(0.3)
            recordings = agent.recordings()
            log = agent.log()
    assert gateway.returncode == 0
    assert caller.of("media"), caller.events
    # The agent's tone reached the caller, the caller's tone reached the agent's sndfile recording.
    assert level_db(tmp_path / "caller.wav", AGENT_HZ, 0.5, 2.5) > -30
    heard = [p for p in recordings if p.name.endswith("-dec.wav")]
    assert heard and level_db(heard[0], CALLER_HZ, 0.3, 2.5) > -30, (recordings, log[-1500:])
    # baresip logs each RFC 4733 event it receives ("received event: '1' (end=0)").
    events = re.findall(r"received event: '(.)'", log)
    assert "".join(dict.fromkeys(events)) == "19", log[-1500:]
