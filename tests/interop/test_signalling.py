"""Signalling an outside tester tries first: OPTIONS keep-alives, a REGISTER, ringing and early media."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest

from tests.integration.gateway_proc import GatewayProcess
from tests.peers.ports import free_block, free_port
from tests.peers.rtp_sink import RtpSink
from tests.peers.sipp import SCENARIOS, Sipp, noise_ulaw, rtp_stream, scenario, sdp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

def options_scenario(pings: int, every_ms: int) -> str:
    """uac_options.xml with its ping block repeated `pings` times (SIPp loops are easy to get wrong)."""
    text = (SCENARIOS / "uac_options.xml").read_text()
    head, rest = text.split("<!--ping-->", 1)
    block, tail = rest.split("<!--/ping-->", 1)
    block = block.replace("@@EVERY_MS@@", str(every_ms))
    return head + "".join(block.replace("@@N@@", str(n)) for n in range(1, pings + 1)) + tail


def received(log: Path) -> list[str]:
    """SIP messages SIPp received, in order, from its `-trace_msg` file."""
    text = log.read_text(errors="replace")
    blocks = re.split(r"^-{5,} [^\n]*\n", text, flags=re.M)
    return [block.split("\n", 1)[1].strip() for block in blocks if " message received " in block.split("\n", 1)[0]]


def register(port: int, transport: str) -> str:
    """Send a REGISTER to the gateway; its status line, or "" on silence."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(3.0)
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        message = (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{local};branch={branch};rport\r\n"
                   f"From: <sip:1001@127.0.0.1>;tag={branch[-6:]}\r\nTo: <sip:1001@127.0.0.1>\r\n"
                   f"Call-ID: {branch}\r\nCSeq: 1 REGISTER\r\n"
                   f"Contact: <sip:1001@127.0.0.1:{local};transport={transport}>\r\nExpires: 60\r\n"
                   f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            if transport == "udp":
                sock.sendto(message, ("127.0.0.1", port))
                data = sock.recv(65535)
                while data.startswith(b"SIP/2.0 1"):  # a provisional answer is not the answer
                    data = sock.recv(65535)
            else:
                sock.connect(("127.0.0.1", port))
                sock.sendall(message)
                data = b""
                while not re.search(rb"SIP/2.0 [2-6]\d\d [^\r\n]*\r\n(?:.*\r\n)*?\r\n", data, re.S):
                    chunk = sock.recv(65535)
                    if not chunk:
                        break
                    data += chunk
                data = data[data.find(b"SIP/2.0 ", data.find(b"SIP/2.0 1") + 1 if data.startswith(b"SIP/2.0 1")
                                      else 0):]
        except (socket.timeout, ConnectionError):
            return ""
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_options_keepalive_pings_answered_with_allow(tmp_path, transport):
    with GatewayProcess(tmp_path, next_hop_port=free_port()) as gateway:
        with Sipp(options_scenario(5, 100), local_port=free_port(), transport=transport,
                  workdir=tmp_path, remote=f"127.0.0.1:{gateway.sip_port}", timeout_s=15,
                  extra=["-trace_msg", "-message_file", str(tmp_path / "options.log")]) as pinger:
            result = pinger.wait()
    assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
    answers = received(tmp_path / "options.log")
    assert len(answers) == 5 and all(a.startswith("SIP/2.0 200") for a in answers), answers
    assert gateway.returncode == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_gets_a_final_answer(tmp_path, transport):
    with GatewayProcess(tmp_path, next_hop_port=free_port()) as gateway:
        status = register(gateway.sip_port, transport)
        # The B2BUA is not a registrar; whatever it answers, it must answer (RFC 3261 8.2: a UAS responds).
        assert re.fullmatch(r"SIP/2.0 [2-6]\d\d .*", status), status
    assert gateway.returncode == 0


def sdp_port(message: str) -> int:
    match = re.search(r"^m=audio (\d+) ", message, re.M)
    assert match, message
    return int(match.group(1))


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_ringing_then_early_media_then_answer(tmp_path, transport):
    uas_port = free_port()
    tone = tmp_path / "early.ulaw"
    sent = noise_ulaw(tone, 3, seed=5)
    hop = "tcp" if transport == "t1" else "udp"
    with GatewayProcess(tmp_path, next_hop_port=uas_port, next_hop_transport=hop) as gateway, RtpSink() as ear:
        # The agent plays a ringback-like tone from its 183 on; the caller listens on `ear`.
        rtp = rtp_stream(tone, 800)
        with Sipp(scenario("uas_early", RING_MS=200, RTP=rtp), local_port=uas_port, transport=transport,
                  workdir=tmp_path, media_port=free_block(10), timeout_s=20) as agent:
            with Sipp(scenario("uac_early", SDP=sdp(str(ear.port)), HOLD_MS=200), local_port=free_port(),
                      transport=transport, workdir=tmp_path, remote=f"127.0.0.1:{gateway.sip_port}",
                      timeout_s=20, extra=["-trace_msg", "-message_file", str(tmp_path / "caller.log")]) as caller:
                result = caller.wait()
            agent_result = agent.wait(10)
        early_audio = ear.audio(0)
    assert result.ok, (result.stderr, result.errors, gateway.lines[-5:])
    assert agent_result.ok, (agent_result.stderr, agent_result.errors)
    seen = received(tmp_path / "caller.log")
    statuses = [m.split("\r\n", 1)[0].split("\n", 1)[0] for m in seen if m.startswith("SIP/2.0")]
    codes = [s.split()[1] for s in statuses if s.split()[1] != "100"]
    assert codes[:3] == ["180", "183", "200"], statuses
    early = next(m for m in seen if m.startswith("SIP/2.0 183"))
    final = next(m for m in seen if m.startswith("SIP/2.0 200"))
    # RFC 3261 13.2.1 / RFC 3264: the 183's SDP is the answer; the 200 repeats the same one, on the
    # gateway's own media port (it anchors media).
    assert sdp_port(early) == sdp_port(final)
    assert gateway.rtp_low <= sdp_port(early) <= gateway.rtp_high
    # Early media reaches the caller unchanged (agent -> caller audio is relayed untouched); 500 ms of it
    # cannot all have come in the 200 ms between the 200 OK and the BYE.
    assert len(early_audio) >= 4000, len(early_audio)
    start = sent.find(early_audio[:160])
    assert start >= 0 and early_audio == sent[start: start + len(early_audio)]
