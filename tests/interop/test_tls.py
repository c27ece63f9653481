"""SIP over TLS with PJSIP peers: a TLS caller into `[sip] tls_listen`, and a TLS next hop verified
against `[sip] tls_ca_file`.

Debian's SIPp 3.6.1 is built without TLS (`-t l1` is not in its transports), so PJSIP
(which is) plays both TLS roles; certificates come from gateway.pki in the test's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import pki
from tests.integration.gateway_proc import GatewayProcess
from tests.peers.audio import AGENT_HZ, CALLER_HZ, level_db, tone_wav
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def tls_config(tmp_path: Path, *, listen_port: int | None, ca: Path) -> str:
    """A TOML config adding a SIP TLS listener (optional) and the CA outbound TLS trusts."""
    lines = ["[sip]", f'tls_ca_file = "{ca}"']
    if listen_port is not None:
        server = pki.issue_server_cert(tmp_path / "pki", "sip-gateway", hosts=["127.0.0.1"])
        lines += [f'tls_listen = "127.0.0.1:{listen_port}"', f'tls_cert_file = "{server.cert_path}"',
                  f'tls_key_file = "{server.key_path}"']
    return "\n".join(lines) + "\n"


def call(tmp_path: Path, gateway: GatewayProcess, *, agent_port: int, agent_tls: dict, target: str,
         caller_tls: dict) -> tuple[PjsuaPeer, PjsuaPeer]:
    """PJSIP caller -> gateway -> PJSIP agent, each side playing a tone and recording; 2.5 s of talk."""
    with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20),
                   play=tone_wav(tmp_path / "agent-tone.wav", AGENT_HZ, 6), record=tmp_path / "agent.wav",
                   timeout_s=15, **agent_tls) as agent:
        with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20), target=target,
                       play=tone_wav(tmp_path / "caller-tone.wav", CALLER_HZ, 6),
                       record=tmp_path / "caller.wav", hold_s=2.5, timeout_s=15, **caller_tls) as caller:
            caller.wait_event("disconnected", 12)
            if agent.of("incoming"):
                agent.wait_event("disconnected", 5)
        agent.wait_exit(5)
    return caller, agent


def test_tls_caller_into_tls_listener(tmp_path):
    ca = pki.ensure_ca(tmp_path / "pki").cert_path
    tls_port, agent_port = free_port(), free_port()
    with GatewayProcess(tmp_path, next_hop_port=agent_port,
                        config=tls_config(tmp_path, listen_port=tls_port, ca=ca)) as gateway:
        caller, agent = call(tmp_path, gateway, agent_port=agent_port, agent_tls={},
                             target=f"sip:agent@127.0.0.1:{tls_port};transport=tls",
                             caller_tls={"transport": "tls", "tls_port": free_port(), "tls_ca": ca})
    assert caller.of("media") and agent.of("media"), (caller.events[-6:], agent.events[-6:])
    assert level_db(tmp_path / "agent.wav", CALLER_HZ, 0.5, 2.0) > -30
    assert level_db(tmp_path / "caller.wav", AGENT_HZ, 0.5, 2.0) > -30
    assert gateway.returncode == 0


def test_tls_next_hop_verified_with_tls_ca_file(tmp_path):
    ca = pki.ensure_ca(tmp_path / "pki").cert_path
    agent_cert = pki.issue_server_cert(tmp_path / "pki", "agent", hosts=["127.0.0.1"])
    agent_tls_port = free_port()
    with GatewayProcess(tmp_path, next_hop_port=agent_tls_port, next_hop_transport="tls",
                        config=tls_config(tmp_path, listen_port=None, ca=ca)) as gateway:
        caller, agent = call(tmp_path, gateway, agent_port=free_port(),
                             agent_tls={"tls_port": agent_tls_port, "tls_cert": agent_cert.cert_path,
                                        "tls_key": agent_cert.key_path},
                             target=f"sip:agent@127.0.0.1:{gateway.sip_port}", caller_tls={})
    assert agent.of("incoming"), (gateway.lines[-5:], caller.events[-6:])
    assert caller.of("media") and agent.of("media"), (caller.events[-6:], agent.events[-6:])
    assert level_db(tmp_path / "agent.wav", CALLER_HZ, 0.5, 2.0) > -30
    assert level_db(tmp_path / "caller.wav", AGENT_HZ, 0.5, 2.0) > -30
    assert gateway.returncode == 0


@pytest.fixture(scope="module")
def rogue_next_hop(tmp_path_factory):
    """A call towards a TLS next hop whose certificate is not from `tls_ca_file`; the caller waits 5 s."""
    tmp_path = tmp_path_factory.mktemp("rogue")
    trusted_ca = pki.ensure_ca(tmp_path / "trusted").cert_path
    rogue = pki.issue_server_cert(tmp_path / "rogue", "agent", hosts=["127.0.0.1"])
    agent_tls_port = free_port()
    with GatewayProcess(tmp_path, next_hop_port=agent_tls_port, next_hop_transport="tls",
                        config=tls_config(tmp_path, listen_port=None, ca=trusted_ca)) as gateway:
        with PjsuaPeer("agent", sip_port=free_port(), rtp_port=free_block(20), tls_port=agent_tls_port,
                       tls_cert=rogue.cert_path, tls_key=rogue.key_path, timeout_s=15) as agent:
            with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                           target=f"sip:agent@127.0.0.1:{gateway.sip_port}", timeout_s=15) as caller:
                try:
                    caller.wait_event("disconnected", 5)
                except TimeoutError:
                    pass
    return gateway, caller, agent


def test_tls_next_hop_with_an_untrusted_certificate_gets_no_invite(rogue_next_hop):
    gateway, caller, agent = rogue_next_hop
    assert not agent.of("incoming"), agent.events
    assert gateway.final_counters()["sip_drops"].get("connect_failed:SSLCertVerificationError", 0) >= 1
    assert gateway.returncode == 0


def test_tls_next_hop_with_an_untrusted_certificate_fails_the_call_fast(rogue_next_hop):
    gateway, caller, agent = rogue_next_hop
    ended = caller.of("disconnected")
    assert ended and ended[-1]["code"] >= 500, caller.events[-6:]
