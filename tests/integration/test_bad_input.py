"""Bad input while a call is up: the call keeps its audio, the gateway keeps answering, drops are counted.

Also: a wrong config is refused at start with the line at fault, and SIGTERM BYEs active calls.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.integration.gateway_proc import GatewayProcess, options
from tests.peers.child import ROOT
from tests.peers.pjsua import PjsuaPeer
from tests.peers.ports import free_block, free_port
from tests.peers.rtp_sink import RtpSink
from tests.peers.sipp import Sipp, noise_ulaw, render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

VIA = "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbad{n}\r\n"


def bad_sip_messages(port: int) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, answerable): each should get its error response or be a counted drop."""
    head = (f"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:y@127.0.0.1>\r\nCall-ID: bad@x\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n")
    return [
        ("garbage", b"\x00\x01\x02 this is not SIP \xff\xfe", False),
        ("truncated", b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1", False),
        ("bad version", (f"OPTIONS sip:gw@127.0.0.1 SIP/3.0\r\n" + VIA.format(port=port, n=1) + head
                         + "Content-Length: 0\r\n\r\n").encode(), True),
        ("bad content-length", (f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n" + VIA.format(port=port, n=2) + head
                                + "Content-Length: 500\r\n\r\nshort").encode(), True),
        ("oversized", (f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n" + VIA.format(port=port, n=3) + head
                       + "X-Pad: " + "a" * 8000 + "\r\nContent-Length: 0\r\n\r\n").encode(), True),
        ("no cseq", (f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n" + VIA.format(port=port, n=4)
                     + "From: <sip:x@h>;tag=1\r\nTo: <sip:y@h>\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n").encode(),
         False),
    ]


def test_call_survives_bad_sip_and_rtp(tmp_path):
    uas_port = free_port()
    rtp_file = str(tmp_path / "caller.ulaw")
    sent = noise_ulaw(tmp_path / "caller.ulaw", 3.0, seed=7)
    with GatewayProcess(tmp_path, next_hop_port=uas_port, config="[sip]\nmax_message_bytes = 4096\n") as gateway, \
            RtpSink() as sink:
        with Sipp(render("uas", sdp_port=str(sink.port)), local_port=uas_port, workdir=tmp_path,
                  media_port=free_block(100)) as callee:
            with Sipp(render("uac_bye", rtp_file=rtp_file, rtp_ms=3300, hold_ms=100), local_port=free_port(),
                      workdir=tmp_path, remote=f"127.0.0.1:{gateway.sip_port}", media_port=free_block(100),
                      timeout_s=20) as caller:
                assert sink.wait_for(10, 5), "no audio before the bad input"
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", 0))
                    udp.settimeout(2)
                    answers = {}
                    for name, data, answerable in bad_sip_messages(udp.getsockname()[1]):
                        udp.sendto(data, ("127.0.0.1", gateway.sip_port))
                        if answerable:
                            answers[name] = udp.recv(65536).split(b"\r\n", 1)[0]
                    # garbage RTP/RTCP at every port of the gateway's range (the call's legs among them)
                    for port in range(gateway.rtp_low, gateway.rtp_low + 40):
                        udp.sendto(b"\x80\x00garbage", ("127.0.0.1", port))
                        udp.sendto(b"\x00" * 3, ("127.0.0.1", port))
                for name, data, _ in bad_sip_messages(0):
                    with socket.create_connection(("127.0.0.1", gateway.sip_port), timeout=3) as tcp:
                        tcp.sendall(data.replace(b"UDP", b"TCP"))
                        tcp.settimeout(3)
                        try:
                            while tcp.recv(65536):
                                pass
                        except (TimeoutError, ConnectionResetError):
                            pass
                assert options(gateway.sip_port).startswith("SIP/2.0 200")
                assert options(gateway.sip_port, "tcp").startswith("SIP/2.0 200")
                result = caller.wait()
            callee.wait(10)
        received = sink.audio(0)
    assert result.ok, (result.errors, gateway.lines[-5:])
    assert answers["bad version"].startswith(b"SIP/2.0 505")
    assert answers["bad content-length"].startswith(b"SIP/2.0 400")
    assert answers["oversized"].startswith(b"SIP/2.0 513")
    # the call kept its audio, bit-exact, through all of it
    assert len(received) >= len(sent) - 640
    assert received == sent[: len(received)]
    assert gateway.returncode == 0
    counters = gateway.final_counters()
    udp_refused = sum(counters["sip_rejected"].values()) + sum(
        n for reason, n in counters["sip_drops"].items() if reason.startswith("udp"))
    assert udp_refused >= len(bad_sip_messages(0)), counters
    # over TCP, a truncated message or a short body just waits for more bytes; the rest lose framing
    tcp_closed = sum(n for reason, n in counters["sip_drops"].items() if reason.startswith("tcp_framing"))
    assert tcp_closed >= 3, counters
    assert sum(counters["rtp_drops"].values()) >= 2, counters


def test_wrong_config_refused_with_line(tmp_path):
    config = tmp_path / "tonewall.toml"
    config.write_text('[sip]\nlisten = "127.0.0.1:5060"\n\n[media]\nrtp_ports = "30000-29000"\n')
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config),
                           "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"tonewall: {config}:5: media.rtp_ports: range must satisfy 1024 <= LOW < HIGH <= 65535"]
    assert not (tmp_path / "data").exists()


def test_sigterm_byes_active_call_and_writes_only_data_dir(tmp_path):
    agent_port = free_port()
    gateway = GatewayProcess(tmp_path, next_hop_port=agent_port).start()
    try:
        with PjsuaPeer("agent", sip_port=agent_port, rtp_port=free_block(20), timeout_s=25) as agent:
            with PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20),
                           target=f"sip:agent@127.0.0.1:{gateway.sip_port}", timeout_s=25) as caller:
                caller.wait_event("media", 10)
                agent.wait_event("media", 10)
                started = time.monotonic()
                assert gateway.stop() == 0
                assert time.monotonic() - started < 5
                caller.wait_event("disconnected", 5)
                agent.wait_event("disconnected", 5)
    finally:
        gateway.stop()
    assert gateway.final_counters()["calls_ended"] == {"shutdown": 1}
    written = {p.name for p in tmp_path.iterdir()}
    assert written <= {"data", "tonewall.toml"}
